//! Interactive sessions: streamed stdin with EOF, signals, and remote PTYs,
//! through the real CLI and through the API.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Daemon, eventually, output_within, processes_matching, rss_kib, scratch_dir, sha256_file,
    unique_sleep,
};
use rexec::client::{Client, ClientOptions, Command, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn interactive_cat_echoes_each_line_while_stdin_is_open() {
    let daemon = Daemon::start();
    let mut child = daemon
        .rexec()
        .args(["-i", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for word in ["one", "two", "three"] {
        writeln!(stdin, "{word}").unwrap();
        stdin.flush().unwrap();
        // Read back before writing more: proves streaming, not buffering until EOF.
        assert_eq!(lines.next().unwrap().unwrap(), word);
        assert!(child.try_wait().unwrap().is_none());
    }
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn piped_stdin_ends_at_eof() {
    let daemon = Daemon::start();
    let started = Instant::now();
    let out = output_within(
        daemon.rexec().args(["--", "cat"]),
        b"hello\n",
        Duration::from_secs(10),
    );
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn hundred_mib_of_stdin_through_sha256sum_with_bounded_server_memory() {
    let daemon = Daemon::start();
    let dir = scratch_dir("stdin");
    let source = common::random_file(&dir, "source.bin", 104857600);
    let baseline = rss_kib(daemon.pid());
    let out = daemon
        .rexec()
        .args(["--", "sha256sum"])
        .stdin(std::fs::File::open(&source).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = daemon.pid();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        for _ in 0..600 {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    });
    let out = out.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let remote = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        remote.split_whitespace().next().unwrap(),
        sha256_file(&source)
    );
    let peak = sampler.join().unwrap();
    assert!(
        peak < baseline + 64 * 1024,
        "rexecd RSS grew from {baseline} KiB to {peak} KiB"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigint_reaches_the_remote_command() {
    let daemon = Daemon::start();
    let mut child = daemon
        .rexec()
        .args([
            "--",
            "trap 'echo caught; exit 7' INT; echo ready; sleep 30 & wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "caught\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

#[test]
fn second_ctrl_c_cancels_and_the_remote_group_dies() {
    let daemon = Daemon::start();
    let (sleep, needle) = unique_sleep(302);
    let child = daemon
        .rexec()
        .args(["--", &format!("trap '' INT; {sleep}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || !processes_matching(
        &needle
    )
    .is_empty()));
    for _ in 0..2 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "remote sleep survived the cancel"
    );
}

#[test]
fn child_that_ignores_stdin_does_not_hang_the_client() {
    let daemon = Daemon::start();
    let mut child = daemon
        .rexec()
        .args(["--", "echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // An endless writer, like `yes | rexec -- echo done`.
    std::thread::spawn(move || {
        let block = vec![b'y'; 65536];
        while stdin.write_all(&block).is_ok() {}
    });
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"done\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// The CLI on a local pty of our own, as a user's terminal.
struct Terminal {
    pty: pty_process::Pty,
    child: tokio::process::Child,
    seen: Vec<u8>,
}

impl Terminal {
    fn spawn(daemon: &Daemon, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let (pty, pts) = pty_process::open().unwrap();
        pty.resize(pty_process::Size::new(rows, cols)).unwrap();
        let child = pty_process::Command::new(common::REXEC)
            .args(["--addr", &daemon.addr])
            .args(args)
            .env("TERM", "xterm-test")
            .kill_on_drop(true)
            .spawn(pts)
            .unwrap();
        Terminal {
            pty,
            child,
            seen: Vec::new(),
        }
    }

    /// Reads until `needle` shows up; panics with what was seen after 15 s.
    async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(at) = text.find(needle) {
                let upto = at + needle.len();
                self.seen.drain(..upto);
                return text[..upto].to_string();
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.pty.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                other => panic!("waiting for {needle:?}: {other:?}; seen {text:?}"),
            }
        }
    }

    /// Waits for an interactive shell's prompt (`$ ` or, for root, `# `).
    async fn expect_prompt(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if text.trim_end_matches(' ').len() < text.len()
                && (text.ends_with("$ ") || text.ends_with("# "))
            {
                self.seen.clear();
                return;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.pty.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                other => panic!("waiting for a prompt: {other:?}; seen {text:?}"),
            }
        }
    }

    async fn type_text(&mut self, text: &str) {
        self.pty.write_all(text.as_bytes()).await.unwrap();
    }

    async fn exit_code(&mut self) -> Option<i32> {
        // Keep draining so the CLI never blocks on a full terminal.
        let mut buf = [0u8; 4096];
        let wait = async {
            loop {
                tokio::select! {
                    status = self.child.wait() => return status.unwrap().code(),
                    _ = self.pty.read(&mut buf) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .expect("CLI exits")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_gives_the_command_a_pts() {
    let daemon = Daemon::start();
    let mut terminal = Terminal::spawn(&daemon, &["-t", "--", "tty; echo TERM=$TERM"], 24, 80);
    let seen = terminal.expect("TERM=xterm-test").await;
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert_eq!(terminal.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_changes_what_stty_size_reports() {
    let daemon = Daemon::start();
    let mut terminal = Terminal::spawn(
        &daemon,
        &["-t", "--", "stty size; echo go; read x; stty size"],
        30,
        100,
    );
    terminal.expect("30 100").await;
    terminal.expect("go").await;
    terminal
        .pty
        .resize(pty_process::Size::new(40, 120))
        .unwrap();
    // SIGWINCH reached the CLI's foreground group; give the resize a moment to travel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminal.type_text("\r").await;
    terminal.expect("40 120").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_without_words_opens_a_login_shell() {
    let daemon = Daemon::start();
    let mut terminal = Terminal::spawn(&daemon, &["-t"], 24, 80);
    // Type only once the shell prompts: readline discards earlier typeahead.
    terminal.expect_prompt().await;
    terminal.type_text("echo shell=$0; exit 5\r").await;
    let seen = terminal.expect("shell=-").await;
    assert!(!seen.is_empty());
    assert_eq!(terminal.exit_code().await, Some(5));
}

async fn connect(daemon: &Daemon) -> Client {
    Client::connect(&daemon.addr, &ClientOptions::default())
        .await
        .unwrap()
}

async fn drain(events: &mut rexec::client::Events) -> (Vec<u8>, rexec::client::ExitStatus) {
    let mut stdout = Vec::new();
    loop {
        match events.next().await.unwrap() {
            Some(Event::Stdout(bytes)) => stdout.extend_from_slice(&bytes),
            Some(Event::Exit(status)) => return (stdout, status),
            Some(_) => {}
            None => panic!("no exit"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_stdin_eof_and_half_close_both_end_stdin() {
    let daemon = Daemon::start();
    let mut client = connect(&daemon).await;
    let (input, mut events) = client
        .session(Command::shell("cat; echo after-eof"))
        .await
        .unwrap();
    input.stdin("abc").await.unwrap();
    input.close_stdin().await.unwrap();
    let (stdout, status) = drain(&mut events).await;
    assert_eq!(stdout, b"abcafter-eof\n");
    assert!(status.success());

    let (input, mut events) = client.session(Command::shell("wc -c")).await.unwrap();
    input.stdin("12345").await.unwrap();
    drop(input); // half-close
    let (stdout, _) = drain(&mut events).await;
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_signals_by_name_reach_the_group() {
    let daemon = Daemon::start();
    let mut client = connect(&daemon).await;
    let (input, mut events) = client
        .session(Command::shell(
            "trap 'echo usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"ready\n") {
        match events.next().await.unwrap() {
            Some(Event::Stdout(bytes)) => seen.extend_from_slice(&bytes),
            Some(_) => {}
            None => panic!("ended early"),
        }
    }
    input.signal("USR1").await.unwrap();
    let (stdout, status) = drain(&mut events).await;
    assert_eq!(stdout, b"usr1\n");
    assert_eq!(status.code, Some(3));

    let (input, mut events) = client.session(Command::shell("sleep 30")).await.unwrap();
    input.signal("TERM").await.unwrap();
    let (_, status) = drain(&mut events).await;
    assert_eq!(status.signal.as_deref(), Some("TERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_protocol_errors_are_invalid_argument() {
    let daemon = Daemon::start();
    let mut client = connect(&daemon).await;
    let (input, mut events) = client.session(Command::shell("sleep 30")).await.unwrap();
    input.signal("NOSUCHSIG").await.unwrap();
    let error = loop {
        match events.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(error.code(), Some(tonic::Code::InvalidArgument), "{error}");

    // The first message must be `start`: speak the raw API for that.
    let mut raw = common::raw_client(&daemon.addr).await;
    let first = rexec::SessionRequest {
        event: Some(rexec::session_request::Event::Stdin(
            bytes::Bytes::from_static(b"x"),
        )),
    };
    let status = raw
        .session(tokio_stream::iter(vec![first]))
        .await
        .expect_err("not start");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = raw
        .session(tokio_stream::iter(Vec::new()))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
