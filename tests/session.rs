//! Interactive sessions: streamed stdin with EOF, signals, and remote PTYs,
//! through the real CLI and through the API.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::terminal::Terminal;
use common::{
    Daemon, eventually, output_within, processes_matching, rss_kib, scratch_dir, sha256_file,
    unique_sleep,
};
use rexec::client::{Client, ClientOptions, Command, Event};

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
    assert_eq!(out.status.code(), Some(130), "as a shell reports SIGINT");
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
    terminal.resize(40, 120);
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
    terminal
        .type_text("echo shell=$0 in=$(pwd)=; exit 5\r")
        .await;
    terminal.expect("shell=-").await;
    // In the user's home, as `ssh host` starts, not in rexecd's cwd.
    let home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .dir;
    terminal.expect(&format!("in={}=", home.display())).await;
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

#[test]
fn a_sigint_that_arrives_while_output_is_written_is_not_lost() {
    let daemon = Daemon::start();
    let marker = common::unique_marker("flood");
    // The remote side ignores INT and floods; nobody reads our stdout at
    // first, so rexec sits in a blocked write when the first SIGINT comes.
    let mut child = daemon
        .rexec()
        .args([
            "--",
            &format!("trap '' INT; while :; do echo {marker}; done"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || !processes_matching(
        &marker
    )
    .is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    let interrupt = |pid: u32| unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    };
    interrupt(child.id());
    std::thread::sleep(Duration::from_millis(200));
    let mut stdout = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    std::thread::sleep(Duration::from_millis(300));
    // The second press within 2 s of the first cancels: only if the first counted.
    interrupt(child.id());
    let exited = eventually(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let _ = drain.join();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        exited,
        "the first SIGINT was lost: rexec ignored the second"
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted; remote command cancelled"),
        "{stderr}"
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&marker)
            .is_empty()),
        "the server killed the cancelled command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_cancels_its_command_on_a_live_connection() {
    let daemon = Daemon::start();
    let mut client = connect(&daemon).await;
    for stdin_closed in [false, true] {
        let (sleep, needle) = unique_sleep(40 + stdin_closed as u32);
        let (input, events) = client.session(Command::shell(sleep)).await.unwrap();
        if stdin_closed {
            input.close_stdin().await.unwrap();
        }
        let found = needle.clone();
        assert!(
            tokio::task::spawn_blocking(move || eventually(Duration::from_secs(10), || {
                !processes_matching(&found).is_empty()
            }))
            .await
            .unwrap()
        );
        drop((input, events));
        let gone = tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(10), || {
                processes_matching(&needle).is_empty()
            })
        });
        assert!(gone.await.unwrap(), "stdin closed first: {stdin_closed}");
    }
    // The connection still serves.
    let out = client.output(Command::shell("echo alive")).await.unwrap();
    assert_eq!(out.stdout, b"alive\n");
}
