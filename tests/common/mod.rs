//! Shared test harness: starts the real `rexecd` on 127.0.0.1:0, reads its
//! readiness line, runs the real `rexec`, and cleans up every process.

#![allow(dead_code)]

pub mod broker;
pub mod files;
pub mod terminal;
pub mod wine;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const REXECD: &str = env!("CARGO_BIN_EXE_rexecd");
pub const REXEC: &str = env!("CARGO_BIN_EXE_rexec");

/// A running rexecd; dropping it stops it (SIGTERM, then SIGKILL) and reaps it.
pub struct Daemon {
    child: Child,
    /// gRPC address, e.g. `127.0.0.1:41234`.
    pub addr: String,
    /// Legacy listener address when started with `--legacy-listen`.
    pub legacy_addr: Option<String>,
    /// `--legacy-compat` listeners as the readiness line names them, in its
    /// order: (`raw`, `127.0.0.1:41235`).
    pub compat: Vec<(String, String)>,
    /// `--metrics-listen`'s address.
    pub metrics_addr: Option<String>,
    /// The NATS agent name when started with `--nats`.
    pub nats_name: Option<String>,
    /// rexecd's stderr (logs and audit lines).
    pub log: PathBuf,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts rexecd with extra flags; `--listen 127.0.0.1:0` unless given.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::start_configured(args, |_| {})
    }

    /// Like `start_with`, letting the test adjust the command (limits, env).
    pub fn start_configured(args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let dir = scratch_dir("daemon");
        let log = dir.join("rexecd.log");
        let mut command = Command::new(REXECD);
        configure(&mut command);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .env("REXEC_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn rexecd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read readiness line");
        let Some(rest) = line.trim_end().strip_prefix("listening ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no readiness line (got {line:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let mut addr = None;
        let mut legacy_addr = None;
        let mut compat = Vec::new();
        let mut metrics_addr = None;
        let mut nats_name = None;
        for part in rest.split(' ') {
            match part.split_once('=') {
                Some(("grpc", a)) => addr = Some(a.to_string()),
                Some(("legacy", a)) => legacy_addr = Some(a.to_string()),
                Some(("metrics", a)) => metrics_addr = Some(a.to_string()),
                Some(("nats", name)) => nats_name = Some(name.to_string()),
                Some((name, a)) if name.starts_with("legacy-") => {
                    compat.push((name["legacy-".len()..].to_string(), a.to_string()));
                }
                _ => panic!("unexpected readiness line {line:?}"),
            }
        }
        Daemon {
            child,
            addr: addr.expect("grpc address in readiness line"),
            legacy_addr,
            compat,
            metrics_addr,
            nats_name,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CLI pointed at this daemon, with stdin closed unless the test sets it.
    pub fn rexec(&self) -> Command {
        let mut command = Command::new(REXEC);
        command.args(["--addr", &self.addr]).stdin(Stdio::null());
        // A REPL run by a test keeps its history in scratch, not the real file.
        command.env("REXEC_HISTORY", scratch_dir("history").join("history"));
        command
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for rexecd to exit on its own; `None` if it did not within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Two signals: stop draining at once, so running execs are killed too.
        self.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(20));
        self.signal(libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This user's local token, which a default rexecd requires (the CLI and
/// the Python example read it by themselves; grpcurl is handed it).
pub fn local_token() -> String {
    let path = rexec::local_token::path().expect("HOME or REXEC_LOCAL_TOKEN_FILE is set");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read the local token {}: {e}", path.display()))
        .trim()
        .to_string()
}

pub type AddToken = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// A generated client whose every call carries the local token.
pub type RawClient = rexec::RemoteExecClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddToken>,
>;

fn add_local_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {}", local_token());
    request
        .metadata_mut()
        .insert("authorization", value.parse().expect("token is ASCII"));
    Ok(request)
}

/// The generated client (no `rexec::client`), authorized as the CLI would be.
pub async fn raw_client(addr: &str) -> RawClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    rexec::RemoteExecClient::with_interceptor(channel, add_local_token as AddToken)
}

/// A fresh empty directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rexec-test-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A marker unique to this test run, to find the processes a test started.
pub fn unique_marker(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && !is_zombie(&entry.path()) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls `check` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// sha256 of a file, by the system's sha256sum.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A `sleep` whose remote command line is unique to this test; returns the
/// shell text to send and the needle that finds only the remote process (the
/// shell arithmetic keeps the CLI's own command line from matching).
pub fn unique_sleep(seconds: u32) -> (String, String) {
    let marker = unique_marker("").replace('x', "");
    (
        format!("sleep $(({seconds}+0)).{marker}"),
        format!("sleep {seconds}.{marker}"),
    )
}

/// Runs `command` to the end with `stdin` as its input and collects its output;
/// kills it and fails the test if it runs past `limit`.
pub fn output_within(command: &mut Command, stdin: &[u8], limit: Duration) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut child_stdin = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = child_stdin.write_all(&stdin);
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        // SAFETY: killing our own child, which the waiter has not reaped yet.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let _ = waiter.join();
        panic!("{command:?} did not finish within {limit:?}");
    }
    let _ = writer.join();
    waiter.join().expect("waiter").expect("wait for child")
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A file of `bytes` random bytes at `dir/name`.
pub fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&path).expect("create random file"))
        .status()
        .expect("run head");
    assert!(status.success(), "head -c {bytes} /dev/urandom failed");
    path
}
