//! End-to-end behaviour of rexecd's legacy raw-TCP listener (the classic
//! 4-byte-prefix protocol) and of `rexec --legacy`, against the real binaries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Daemon, REXEC, eventually, output_within, processes_matching, scratch_dir, unique_sleep,
};
use serde_json::{Value, json};

/// Generous: only a hung server or a lost answer should ever hit it.
const READ_LIMIT: Duration = Duration::from_secs(60);

fn legacy_daemon(extra: &[&str]) -> Daemon {
    let mut args = vec!["--legacy-listen", "127.0.0.1:0", "--legacy-allow-anonymous"];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

fn legacy_addr(daemon: &Daemon) -> String {
    daemon
        .legacy_addr
        .clone()
        .expect("readiness line names the legacy address")
}

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(legacy_addr(daemon)).expect("connect to the legacy port");
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
}

fn framed(header: &Value, stdin: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).unwrap();
    let mut frame = (header.len() as i32).to_le_bytes().to_vec();
    frame.extend_from_slice(&header);
    frame.extend_from_slice(stdin);
    frame
}

/// One answer as a user of the protocol sees it.
#[derive(Debug)]
struct Answer {
    header: Value,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Reads one answer; `None` if the server closed the connection instead.
fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut prefix = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut prefix) {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        return None;
    }
    let header_len = i32::from_le_bytes(prefix);
    assert!(
        (0..8192).contains(&header_len),
        "header length {header_len}"
    );
    let mut header = vec![0u8; header_len as usize];
    stream.read_exact(&mut header).expect("read header");
    let header: Value = serde_json::from_slice(&header).expect("header is JSON");
    let data_size = header["data_size"].as_u64().expect("data_size") as usize;
    let mut body = vec![0u8; data_size];
    stream.read_exact(&mut body).expect("read body");
    let stdout_size = header["stdout_size"].as_u64().unwrap_or(0) as usize;
    let stderr = body.split_off(stdout_size.min(body.len()));
    Some(Answer {
        header,
        stdout: body,
        stderr,
    })
}

fn ask(stream: &mut TcpStream, request: &[u8]) -> Answer {
    stream.write_all(request).expect("send request");
    read_answer(stream).expect("an answer, not a closed connection")
}

fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("expected the server to close the connection, got more data"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run rexec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rexec_legacy(daemon: &Daemon) -> Command {
    let mut command = Command::new(REXEC);
    command
        .args(["--legacy", "--addr", &legacy_addr(daemon)])
        .stdin(Stdio::null());
    command
}

/// Runs tests/legacy_classic_client.py: one connection, these commands in
/// turn; returns (header, body) per answer.
fn classic_python_client(daemon: &Daemon, commands: &[&str]) -> Vec<(Value, Vec<u8>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy_classic_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(legacy_addr(daemon))
        .args(commands)
        .stdin(Stdio::null())
        .output()
        .expect("python3 is needed for the classic-client test (scripts/test-all installs it)");
    assert!(
        out.status.success(),
        "classic client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("JSON lines")
        .lines()
        .map(|line| {
            let mut answer: Value = serde_json::from_str(line).expect("JSON line");
            let body = answer["body"]
                .as_str()
                .expect("body")
                .chars()
                .map(|c| c as u32 as u8)
                .collect();
            (answer["header"].take(), body)
        })
        .collect()
}

#[test]
fn classic_python_client_gets_each_answer_whole_with_no_sticky_packet() {
    let daemon = legacy_daemon(&[]);
    let dir = scratch_dir("legacy-classic");
    let five_mb: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = dir.join("five-mb");
    std::fs::write(&file, &five_mb).unwrap();
    let cat_file = format!("cat {}", file.display());
    let commands = [
        "seq 1 30000",
        "echo MARK; df -h",
        &cat_file,
        "ls / /nonexistent",
        "echo done",
    ];
    let answers = classic_python_client(&daemon, &commands);
    assert_eq!(answers.len(), commands.len());

    let seq: String = (1..=30000).map(|n| format!("{n}\n")).collect();
    let (header, body) = &answers[0];
    assert!(body.len() > 100 * 1024);
    assert_eq!(body, seq.as_bytes());
    assert_eq!(header["data_size"], body.len());
    assert_eq!(header["exit_code"], 0);

    // The sticky-packet bug shows here: the rest of seq's output read as df's.
    let (header, body) = &answers[1];
    let text = String::from_utf8_lossy(body);
    assert!(
        text.starts_with("MARK\n"),
        "second answer is df's: {text:?}"
    );
    assert!(text.contains("Filesystem"), "{text}");
    assert!(!text.contains("29999"), "{text}");
    assert!(header["stdout_size"].as_u64().unwrap() > 5);

    let (header, body) = &answers[2];
    assert_eq!(header["data_size"], 5_000_000);
    assert!(body == &five_mb, "5 MB arrive exactly");

    let (header, body) = &answers[3];
    let stdout_size = header["stdout_size"].as_u64().unwrap() as usize;
    let (out, err) = body.split_at(stdout_size);
    assert!(String::from_utf8_lossy(out).contains("bin"), "{header}");
    assert!(
        String::from_utf8_lossy(err).contains("nonexistent"),
        "{header}"
    );
    assert_eq!(header["stderr_size"], err.len());
    assert_ne!(header["exit_code"], 0);

    assert_eq!(answers[4].1, b"done\n");
}

#[test]
fn readiness_line_names_both_ports() {
    let daemon = legacy_daemon(&[]);
    let legacy = legacy_addr(&daemon);
    assert!(legacy.starts_with("127.0.0.1:"), "{legacy}");
    assert_ne!(legacy, daemon.addr);
    assert!(Daemon::start().legacy_addr.is_none(), "off by default");
}

#[test]
fn framed_request_feeds_stdin_and_splits_the_streams() {
    let daemon = legacy_daemon(&[]);
    let mut stream = connect(&daemon);
    let request = framed(
        &json!({"cmd": "tr a-z A-Z; echo err >&2; exit 3", "stdin_size": 5}),
        b"hello",
    );
    let answer = ask(&mut stream, &request);
    assert_eq!(answer.stdout, b"HELLO");
    assert_eq!(answer.stderr, b"err\n");
    assert_eq!(answer.header["exit_code"], 3);
    assert_eq!(answer.header["data_size"], 9);
    assert_eq!(answer.header["truncated"], false);

    // The same request split across writes: prefix, then the rest a moment later.
    stream.write_all(&request[..4]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let answer = ask(&mut stream, &request[4..]);
    assert_eq!(answer.stdout, b"HELLO");

    // Framed and unframed requests mix on one connection.
    let answer = ask(&mut stream, b"echo text");
    assert_eq!(answer.stdout, b"text\n");
}

#[test]
fn short_and_empty_commands_are_answered() {
    let daemon = legacy_daemon(&[]);
    let mut stream = connect(&daemon);
    // One byte could begin a length prefix: it runs once no more bytes come.
    let answer = ask(&mut stream, b":");
    assert_eq!(answer.header["exit_code"], 0);
    assert_eq!(answer.header["data_size"], 0);
    let answer = ask(&mut stream, b"\r\n");
    assert_eq!(answer.header["data_size"], 0);
    assert!(answer.header.get("error").is_none(), "{}", answer.header);
    let answer = ask(&mut stream, b"id -u\n");
    assert!(!answer.stdout.is_empty());
}

#[test]
fn bad_requests_get_an_error_header_and_close_and_others_carry_on() {
    let daemon = legacy_daemon(&[]);
    let mut bystander = connect(&daemon);
    assert_eq!(ask(&mut bystander, b"echo before").stdout, b"before\n");

    let not_json = [&5i32.to_le_bytes()[..], b"hello"].concat();
    let over_cap = [&9000i32.to_le_bytes()[..], b"{}"].concat();
    let cases: [(&str, Vec<u8>); 6] = [
        ("negative header length", (-1i32).to_le_bytes().to_vec()),
        ("header length over the cap", over_cap),
        ("2 GiB header length", i32::MAX.to_le_bytes().to_vec()),
        ("2 GiB as unsigned", 0x8000_0000u32.to_le_bytes().to_vec()),
        ("header not JSON", not_json),
        ("command not UTF-8", b"ls \xff\xfe".to_vec()),
    ];
    for (what, request) in cases {
        let mut stream = connect(&daemon);
        let answer = ask(&mut stream, &request);
        let error = answer.header["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{what}: {}", answer.header);
        assert_eq!(answer.header["data_size"], 0, "{what}");
        assert_closed(&mut stream);
    }

    assert_eq!(ask(&mut bystander, b"echo after").stdout, b"after\n");
    let mut fresh = connect(&daemon);
    assert_eq!(ask(&mut fresh, b"echo fresh").stdout, b"fresh\n");
}

/// A large answer leaves as the header and then the output's chunks as they
/// were read (bulk reads on an enlarged pipe): every byte in order, stdout
/// before stderr, and the sizes in the header match the body.
#[test]
fn forty_mib_answer_arrives_intact_with_its_stderr_after() {
    let daemon = legacy_daemon(&[]);
    let dir = scratch_dir("legacy-big");
    let source = common::random_file(&dir, "source.bin", 40 << 20);
    let expected = std::fs::read(&source).unwrap();
    let mut stream = connect(&daemon);
    let command = format!("cat '{}'; echo done >&2", source.display());
    for _ in 0..2 {
        let answer = ask(&mut stream, command.as_bytes());
        assert_eq!(answer.header["stdout_size"], 40 << 20);
        assert_eq!(answer.header["stderr_size"], 5);
        assert_eq!(answer.header["truncated"], false);
        assert!(answer.stdout == expected, "stdout differs from the file");
        assert_eq!(answer.stderr, b"done\n");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn output_past_the_limit_is_cut_and_marked_truncated() {
    let daemon = legacy_daemon(&["--legacy-max-output", "1000"]);
    let mut stream = connect(&daemon);
    let answer = ask(&mut stream, b"head -c 1500 /dev/zero; echo err >&2");
    assert_eq!(answer.header["data_size"], 1000);
    assert_eq!(answer.stdout.len() + answer.stderr.len(), 1000);
    assert_eq!(answer.header["truncated"], true);
    assert_eq!(
        answer.header["exit_code"], 0,
        "a command that ends on its own keeps its status"
    );

    // A command that never stops writing is stopped; the connection goes on.
    let answer = ask(&mut stream, b"yes");
    assert_eq!(answer.header["truncated"], true);
    assert_eq!(answer.header["data_size"], 1000);
    assert_eq!(answer.header["signal"], "TERM");
    assert!(
        daemon
            .log_text()
            .contains("\"stopped_by\":\"output_limit\""),
        "the audit line says why it was stopped"
    );
    assert_eq!(ask(&mut stream, b"echo next").stdout, b"next\n");

    let answer = ask(&mut stream, b"head -c 1000 /dev/zero");
    assert_eq!(
        answer.header["truncated"], false,
        "exactly the limit is whole"
    );
}

#[test]
fn idle_connection_is_closed() {
    let daemon = legacy_daemon(&["--legacy-idle-timeout", "300ms"]);
    let mut stream = connect(&daemon);
    assert_eq!(ask(&mut stream, b"echo hi").stdout, b"hi\n");
    // Nothing sent: the server closes (READ_LIMIT fails the test if it never does).
    assert_closed(&mut stream);
}

#[test]
fn framed_timeout_kills_the_command() {
    let daemon = legacy_daemon(&[]);
    let mut stream = connect(&daemon);
    let (sleep, needle) = unique_sleep(30);
    let answer = ask(
        &mut stream,
        &framed(
            &json!({"cmd": format!("echo started; {sleep}"), "timeout_ms": 300}),
            b"",
        ),
    );
    assert_eq!(answer.header["timed_out"], true);
    assert_eq!(answer.header["signal"], "TERM");
    assert!(answer.header.get("exit_code").is_none());
    assert_eq!(answer.stdout, b"started\n");
    assert!(processes_matching(&needle).is_empty());
}

#[test]
fn client_that_leaves_cancels_its_command_and_the_server_carries_on() {
    let daemon = legacy_daemon(&[]);

    // Leaves while the command runs: its process group is killed.
    let (sleep, needle) = unique_sleep(300);
    let mut stream = connect(&daemon);
    stream.write_all(sleep.as_bytes()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "the command started"
    );
    drop(stream);
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "the command is killed when its client leaves"
    );

    // Leaves in the middle of a 20 MB answer.
    let mut stream = connect(&daemon);
    stream.write_all(b"head -c 20000000 /dev/zero").unwrap();
    let mut start = [0u8; 4096];
    stream.read_exact(&mut start).unwrap();
    drop(stream);

    let mut stream = connect(&daemon);
    assert_eq!(ask(&mut stream, b"echo still here").stdout, b"still here\n");
    assert!(daemon.log_text().contains("\"listener\":\"legacy\""));
}

#[test]
fn two_hundred_concurrent_connections_are_served() {
    let daemon = legacy_daemon(&[]);
    let addr = legacy_addr(&daemon);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let workers: Vec<_> = (0..200)
        .map(|i| {
            let addr = addr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect");
                stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
                barrier.wait();
                let answer = ask(&mut stream, format!("echo conn{i}").as_bytes());
                String::from_utf8(answer.stdout).unwrap()
            })
        })
        .collect();
    for (i, worker) in workers.into_iter().enumerate() {
        assert_eq!(worker.join().expect("worker"), format!("conn{i}\n"));
    }
}

#[test]
fn connections_over_the_limit_are_refused_with_an_error() {
    let daemon = legacy_daemon(&["--legacy-max-connections", "2"]);
    let mut first = connect(&daemon);
    let mut second = connect(&daemon);
    assert_eq!(ask(&mut first, b"echo 1").stdout, b"1\n");
    assert_eq!(ask(&mut second, b"echo 2").stdout, b"2\n");

    let mut third = connect(&daemon);
    let answer = read_answer(&mut third).expect("an error answer");
    let error = answer.header["error"].as_str().unwrap_or_default();
    assert!(error.contains("too many"), "{}", answer.header);
    assert_closed(&mut third);

    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut stream = connect(&daemon);
            stream.write_all(b"echo again").is_ok()
                && read_answer(&mut stream).is_some_and(|a| a.stdout == b"again\n")
        }),
        "a closed connection frees its slot"
    );
}

#[test]
fn non_loopback_legacy_address_needs_the_explicit_flag() {
    let out = Command::new(common::REXECD)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no readiness line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--legacy-allow-remote"), "{stderr}");
}

#[test]
fn draining_answers_the_running_request_then_closes() {
    let mut daemon = legacy_daemon(&[]);
    let mut stream = connect(&daemon);
    stream.write_all(b"sleep 0.5; echo finished").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    daemon.signal(libc::SIGTERM);
    let answer = read_answer(&mut stream).expect("the running request is answered");
    assert_eq!(answer.stdout, b"finished\n");
    assert_closed(&mut stream);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn rexec_legacy_splits_streams_and_returns_the_exit_code() {
    let daemon = legacy_daemon(&[]);
    let (code, out, err) =
        run(rexec_legacy(&daemon).args(["--", "echo out; echo err >&2; echo out2; exit 3"]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out\nout2\n", "err\n")
    );

    let (code, _, _) = run(rexec_legacy(&daemon).args(["--", "kill -TERM $$"]));
    assert_eq!(code, 143);
    let (code, _, _) = run(rexec_legacy(&daemon).args(["--", "kill -9 $$"]));
    assert_eq!(code, 137);

    let (code, out, err) =
        run(rexec_legacy(&daemon).args(["--timeout", "300ms", "--", "sleep 30"]));
    assert_eq!(code, 143, "{out}{err}");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn rexec_legacy_sends_stdin_cwd_env_and_argv() {
    let daemon = legacy_daemon(&[]);
    let out = output_within(
        rexec_legacy(&daemon).args(["--", "tr", "a-z", "A-Z"]),
        b"piped in",
        READ_LIMIT,
    );
    assert_eq!(out.stdout, b"PIPED IN");
    assert_eq!(out.status.code(), Some(0));

    let dir = scratch_dir("legacy cwd");
    let (code, out, _) = run(rexec_legacy(&daemon).args([
        "--cwd",
        dir.to_str().unwrap(),
        "-e",
        "GREETING=it's here",
        "--",
        "pwd; echo \"$GREETING\"",
    ]));
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}\nit's here\n", dir.display()));

    let (code, out, _) =
        run(rexec_legacy(&daemon).args(["--no-shell", "--", "printf", "[%s]\\n", "a b", "$HOME"]));
    assert_eq!((code, out.as_str()), (0, "[a b]\n[$HOME]\n"));

    let (code, _, err) = run(rexec_legacy(&daemon).args(["--cwd", "/no/such/dir", "--", "true"]));
    assert_ne!(code, 0);
    assert!(err.contains("/no/such/dir"), "{err}");
}

#[test]
fn rexec_legacy_fails_with_255_when_it_cannot_talk() {
    let daemon = legacy_daemon(&[]);
    // The gRPC port does not speak the legacy protocol.
    let (code, _, err) = run(Command::new(REXEC)
        .args([
            "--legacy",
            "--addr",
            &daemon.addr,
            "--connect-timeout",
            "5s",
            "--",
            "true",
        ])
        .stdin(Stdio::null()));
    assert_eq!(code, 255, "{err}");
    assert!(err.starts_with("rexec: "), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, _, err) = run(Command::new(REXEC)
        .args(["--legacy", "--addr", &addr, "--", "true"])
        .stdin(Stdio::null()));
    assert_eq!(code, 255);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn rexec_legacy_repl_runs_piped_lines_and_keeps_cd() {
    let daemon = legacy_daemon(&[]);
    let dir = scratch_dir("legacy-repl");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let script = format!(
        "echo one\ncd {}\ncd sub\npwd\nls /nonexistent\nexit 3\necho after\nquit\necho never\n",
        dir.display()
    );
    let out = output_within(&mut rexec_legacy(&daemon), script.as_bytes(), READ_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sub = dir.join("sub");
    assert_eq!(
        stdout,
        format!("one\n{}\nafter\n", sub.display()),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("nonexistent"), "{stderr}");
    assert!(stderr.contains("[exit 3]"), "{stderr}");
    assert_eq!(out.status.code(), Some(0));
}
