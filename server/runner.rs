//! The process runner: the one place that spawns, reads pipes, kills and reaps.
//! Both listeners consume its stream of events; nothing else touches processes.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, AuditRecord};
use crate::shutdown::Shutdown;

/// Bytes asked of a pipe per read; one chunk on the wire. 64 KiB is the default
/// pipe capacity, so one read empties a full pipe (see BENCHMARKS.md).
const CHUNK_SIZE: usize = 64 * 1024;
/// Chunks buffered between the pipe readers and the consumer. With the pipes
/// themselves this bounds what one exec can hold in server memory.
const EVENT_QUEUE: usize = 16;
/// After the exec's group has been killed past the linger, a process that
/// escaped the group may still hold a pipe: read at most this much more.
const DRAIN_AFTER_STOP: u64 = 1024 * 1024;

/// What to run: a command line for the shell, or an argv run directly.
#[derive(Debug, Clone)]
pub enum Program {
    Shell(String),
    Argv(Vec<String>),
}

/// One validated-on-start request to run something.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Fed to stdin, which is then closed; `None` gives an empty stdin.
    pub stdin: Option<Bytes>,
    /// `None` means the server default.
    pub timeout: Option<Duration>,
}

/// Who asked, for the audit line.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: String,
    pub principal: String,
    pub listener: &'static str,
}

/// One event of a running exec, in order: chunks, then exactly one `Exit`.
#[derive(Debug)]
pub enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitReport),
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone)]
pub struct ExitReport {
    pub termination: Termination,
    pub timed_out: bool,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
}

/// A spawned exec. Dropping `events` cancels it: the group is killed and reaped.
pub struct Execution {
    pub pid: u32,
    pub exec_id: String,
    pub events: mpsc::Receiver<Event>,
}

/// Why an exec could not start; each maps to one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    InvalidArgument(String),
    NotFound(String),
    PermissionDenied(String),
    ResourceExhausted(String),
    Internal(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::InvalidArgument(m)
            | RunError::NotFound(m)
            | RunError::PermissionDenied(m)
            | RunError::ResourceExhausted(m)
            | RunError::Internal(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub shell: PathBuf,
    pub default_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub linger: Duration,
}

pub struct Runner {
    config: RunnerConfig,
    audit: Audit,
    /// Cancelled when shutdown's grace has passed: every exec's group is killed.
    kill_all: CancellationToken,
    supervisors: TaskTracker,
    next_exec: AtomicU64,
    id_prefix: String,
}

impl Runner {
    pub fn new(config: RunnerConfig, audit: Audit, shutdown: &Shutdown) -> Arc<Self> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Arc::new(Runner {
            config,
            audit,
            kill_all: shutdown.kill_all_token(),
            supervisors: shutdown.exec_tracker(),
            next_exec: AtomicU64::new(1),
            id_prefix: format!("{epoch:x}-{:x}", std::process::id()),
        })
    }

    /// Validates `spec`, spawns it in its own process group and starts streaming.
    /// Nothing runs unless this returns `Ok`.
    pub fn start(&self, spec: ExecSpec, caller: Caller) -> Result<Execution, RunError> {
        let (program, args) = self.resolve(&spec)?;
        let mut command = Command::new(&program);
        command
            .args(&args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| spawn_error(&program, e))?;
        let pid = child
            .id()
            .ok_or_else(|| RunError::Internal("child exited before its pid was read".into()))?;
        let exec_id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_exec.fetch_add(1, Ordering::Relaxed)
        );

        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = child.stdin.take();
        let supervisor = Supervisor {
            child,
            pgid: pid as i32,
            tx,
            timeout: spec.timeout.or(self.config.default_timeout),
            kill_grace: self.config.kill_grace,
            linger: self.config.linger,
            kill_all: self.kill_all.clone(),
            audit: self.audit.clone(),
            record: AuditRecord::new(&exec_id, &caller, &spec, pid),
        };
        self.supervisors
            .spawn(supervisor.run(stdout, stderr, stdin.zip(spec.stdin)));
        Ok(Execution {
            pid,
            exec_id,
            events,
        })
    }

    /// Checks the request and turns it into program + arguments.
    fn resolve(&self, spec: &ExecSpec) -> Result<(PathBuf, Vec<String>), RunError> {
        for (name, value) in &spec.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(RunError::InvalidArgument(format!(
                    "invalid environment variable name {name:?}: must be non-empty, without '=' or NUL"
                )));
            }
            if value.contains('\0') {
                return Err(RunError::InvalidArgument(format!(
                    "environment variable {name} contains a NUL byte"
                )));
            }
        }
        if let Some(cwd) = &spec.cwd {
            check_cwd(cwd)?;
        }
        match &spec.program {
            Program::Shell(command) => {
                if command.contains('\0') {
                    return Err(RunError::InvalidArgument(
                        "command contains a NUL byte".into(),
                    ));
                }
                Ok((
                    self.config.shell.clone(),
                    vec!["-c".into(), command.clone()],
                ))
            }
            Program::Argv(argv) => {
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(RunError::InvalidArgument("argv contains a NUL byte".into()));
                }
                let Some((name, rest)) = argv.split_first() else {
                    return Err(RunError::InvalidArgument("argv is empty".into()));
                };
                if name.is_empty() {
                    return Err(RunError::InvalidArgument("argv[0] is empty".into()));
                }
                let path_var = spec
                    .env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| OsString::from(v))
                    .or_else(|| std::env::var_os("PATH"));
                let program = find_program(name, spec.cwd.as_deref(), path_var)
                    .ok_or_else(|| RunError::NotFound(format!("program not found: {name}")))?;
                Ok((program, rest.to_vec()))
            }
        }
    }
}

fn check_cwd(cwd: &Path) -> Result<(), RunError> {
    if cwd.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(RunError::InvalidArgument("cwd contains a NUL byte".into()));
    }
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(RunError::InvalidArgument(format!(
            "cwd is not a directory: {}",
            cwd.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(
            RunError::PermissionDenied(format!("cwd not accessible: {}", cwd.display())),
        ),
        Err(_) => Err(RunError::NotFound(format!(
            "cwd not found: {}",
            cwd.display()
        ))),
    }
}

/// Looks `name` up as execvp would: a name with a slash is a path (relative to
/// the exec's cwd), anything else is searched in PATH.
fn find_program(name: &str, cwd: Option<&Path>, path_var: Option<OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = match cwd {
            Some(dir) if !name.starts_with('/') => dir.join(name),
            _ => PathBuf::from(name),
        };
        // Existence decides NOT_FOUND; a present but unrunnable file fails at spawn.
        return path.exists().then_some(PathBuf::from(name));
    }
    let path_var = path_var.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn spawn_error(program: &Path, e: std::io::Error) -> RunError {
    let what = format!("cannot run {}: {e}", program.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => RunError::NotFound(what),
        std::io::ErrorKind::PermissionDenied => RunError::PermissionDenied(what),
        _ if matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
        ) =>
        {
            RunError::ResourceExhausted(what)
        }
        _ => RunError::Internal(what),
    }
}

/// Why the supervisor stopped waiting for the main process on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    TimedOut,
    ClientGone,
    Shutdown,
}

/// Owns one child from spawn to reap.
struct Supervisor {
    child: Child,
    pgid: i32,
    tx: mpsc::Sender<Event>,
    timeout: Option<Duration>,
    kill_grace: Duration,
    linger: Duration,
    kill_all: CancellationToken,
    audit: Audit,
    record: AuditRecord,
}

impl Supervisor {
    async fn run(
        mut self,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
        stdin: Option<(tokio::process::ChildStdin, Bytes)>,
    ) {
        let started = Instant::now();
        // Readers stop at EOF, or once `stop_reading` fires and their pipe is empty.
        let stop_reading = CancellationToken::new();
        let stdout_reader = tokio::spawn(pump(
            stdout,
            self.tx.clone(),
            Event::Stdout,
            stop_reading.clone(),
        ));
        let stderr_reader = tokio::spawn(pump(
            stderr,
            self.tx.clone(),
            Event::Stderr,
            stop_reading.clone(),
        ));
        if let Some((mut pipe, bytes)) = stdin {
            // A child that exits without reading gives EPIPE here: nothing to report.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
            });
        }

        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let interruption = tokio::select! {
            status = self.child.wait() => Err(status),
            () = deadline => Ok(Interruption::TimedOut),
            () = self.tx.closed() => Ok(Interruption::ClientGone),
            () = self.kill_all.cancelled() => Ok(Interruption::Shutdown),
        };
        let (status, interruption) = match interruption {
            Err(status) => (status, None),
            Ok(why) => {
                tracing::debug!(pgid = self.pgid, ?why, "killing process group");
                (self.terminate_group().await, Some(why))
            }
        };

        // The main process is gone; a background process may still hold the
        // pipes. Give it the linger, then the group is killed like any other.
        let readers = async {
            (
                stdout_reader.await.unwrap_or(0),
                stderr_reader.await.unwrap_or(0),
            )
        };
        tokio::pin!(readers);
        let (stdout_bytes, stderr_bytes) = tokio::select! {
            counts = &mut readers => counts,
            () = tokio::time::sleep(self.linger) => {
                self.terminate_leftovers().await;
                stop_reading.cancel();
                readers.await
            }
        };
        self.terminate_leftovers().await;

        let termination = match &status {
            Ok(status) => termination_of(*status),
            Err(e) => {
                tracing::error!(pgid = self.pgid, "waiting for child failed: {e}");
                Termination::Signal(libc::SIGKILL)
            }
        };
        let report = ExitReport {
            termination,
            timed_out: interruption == Some(Interruption::TimedOut),
            duration: started.elapsed(),
            stdout_bytes,
            stderr_bytes,
            truncated: false,
        };
        self.audit.exec_finished(
            &self.record,
            &report,
            interruption == Some(Interruption::ClientGone),
        );
        let _ = self.tx.send(Event::Exit(report)).await;
    }

    /// SIGTERM to the group, SIGKILL after the kill grace; returns the reaped status.
    async fn terminate_group(&mut self) -> std::io::Result<ExitStatus> {
        signal_group(self.pgid, libc::SIGTERM);
        tokio::select! {
            status = self.child.wait() => {
                // The leader died; members that ignore SIGTERM get SIGKILL later.
                self.schedule_kill();
                status
            }
            () = tokio::time::sleep(self.kill_grace) => {
                signal_group(self.pgid, libc::SIGKILL);
                self.child.wait().await
            }
        }
    }

    /// Kills what is left of the group once the main process has exited.
    async fn terminate_leftovers(&self) {
        if group_alive(self.pgid) {
            tracing::debug!(pgid = self.pgid, "terminating leftover group members");
            signal_group(self.pgid, libc::SIGTERM);
            self.schedule_kill();
        }
    }

    fn schedule_kill(&self) {
        let (pgid, grace) = (self.pgid, self.kill_grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if group_alive(pgid) {
                signal_group(pgid, libc::SIGKILL);
            }
        });
    }
}

/// Forwards one pipe as chunks until EOF; a full channel stops reading, so the
/// child's pipe fills and the child waits (backpressure).
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    tx: mpsc::Sender<Event>,
    wrap: fn(Bytes) -> Event,
    stop: CancellationToken,
) -> u64 {
    let Some(mut pipe) = pipe else { return 0 };
    let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
    let mut total = 0u64;
    let mut after_stop = 0u64;
    loop {
        buf.reserve(CHUNK_SIZE);
        // Data already in the pipe wins over `stop`, so nothing written before
        // the group was killed is lost.
        let read = tokio::select! {
            biased;
            read = pipe.read_buf(&mut buf) => read,
            () = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if stop.is_cancelled() {
                    after_stop += n as u64;
                }
                if tx.send(wrap(buf.split().freeze())).await.is_err()
                    || after_stop > DRAIN_AFTER_STOP
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading child output failed: {e}");
                break;
            }
        }
    }
    total
}

fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Code(code),
        (None, Some(signal)) => Termination::Signal(signal),
        (None, None) => Termination::Signal(libc::SIGKILL),
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory effects; a vanished group gives ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::killpg(pgid, 0) == 0 }
}
