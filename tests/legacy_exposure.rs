//! What the unauthenticated legacy port must refuse or close: HTTP (a web
//! page can make a browser send it), unframed text over 64 KiB, connections
//! that never send a request; and what it must not cut: a slow but steady
//! reader. Against the real binaries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, eventually, scratch_dir};
use serde_json::Value;

/// Generous: only a hung server or a lost answer should ever hit it.
const READ_LIMIT: Duration = Duration::from_secs(60);

fn legacy_daemon(audit: &Path, extra: &[&str]) -> Daemon {
    let audit = audit.to_str().expect("audit path");
    let mut args = vec![
        "--legacy-listen",
        "127.0.0.1:0",
        "--legacy-allow-anonymous",
        "--audit-log",
        audit,
    ];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

fn addr(daemon: &Daemon) -> String {
    daemon.legacy_addr.clone().expect("legacy address")
}

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(addr(daemon)).expect("connect to the legacy port");
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
}

/// Reads one answer's header; `None` if the server closed the connection instead.
fn read_header(stream: &mut TcpStream) -> Option<Value> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let mut header = vec![0u8; i32::from_le_bytes(prefix) as usize];
    stream.read_exact(&mut header).expect("read header");
    Some(serde_json::from_slice(&header).expect("header is JSON"))
}

/// One whole answer: (header, body).
fn ask(stream: &mut TcpStream, request: &[u8]) -> (Value, Vec<u8>) {
    stream.write_all(request).expect("send request");
    let header = read_header(stream).expect("an answer, not a closed connection");
    let mut body = vec![0u8; header["data_size"].as_u64().expect("data_size") as usize];
    stream.read_exact(&mut body).expect("read body");
    (header, body)
}

/// The server closes without answering (EOF or reset; `READ_LIMIT` fails a
/// server that never does).
fn assert_closed_without_answer(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("expected the connection closed without an answer, got bytes"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Audit lines that mention `needle` (an exec that ran).
fn audited(audit: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// In CI a missing tool fails the test; elsewhere the test says so and passes.
fn tool_present(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is needed for this test in CI"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

#[test]
fn http_requests_to_the_legacy_port_run_nothing() {
    let dir = scratch_dir("legacy-http");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &[]);
    let marker = dir.join("pwned");
    let path = marker.display().to_string();
    let requests = [
        format!("GET /$(touch$IFS{path}) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\ntouch {path}",
            path.len() + 6
        ),
        format!("touch {path}\r\nHost: 127.0.0.1\r\n\r\n"),
        format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ntouch {path}"),
    ];
    for request in &requests {
        let mut stream = connect(&daemon);
        stream.write_all(request.as_bytes()).unwrap();
        assert_closed_without_answer(&mut stream);
    }
    // What a browser or a script does with a URL: curl, as the issue tried it.
    if tool_present("curl") {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "30"])
            .arg(format!("http://{}/$(touch$IFS{path})", addr(&daemon)))
            .output()
            .expect("run curl");
        assert!(
            out.stdout.is_empty(),
            "curl got an answer: {:?}",
            out.stdout
        );
    }
    assert!(!marker.exists(), "an HTTP request ran a command");
    assert!(
        audited(&audit, "pwned").is_empty(),
        "{:?}",
        audited(&audit, "pwned")
    );

    // Warned, but not once per request (one line per 10 s at most).
    let log = daemon.log_text();
    let warnings = log.matches("not an HTTP endpoint").count();
    assert!(
        (1..requests.len()).contains(&warnings),
        "{warnings} warnings: {log}"
    );

    // The listener carries on for real clients.
    let mut stream = connect(&daemon);
    assert_eq!(ask(&mut stream, b"echo fine").1, b"fine\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_split_across_reads_runs_nothing() {
    let dir = scratch_dir("legacy-http-split");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &[]);
    let marker = dir.join("pwned");
    let rest = format!(
        "T /$(touch$IFS{}) HTTP/1.1\r\nHost: x\r\n\r\n",
        marker.display()
    );
    // Sooner and later than the short-command grace: either way nothing runs.
    for pause in [Duration::from_millis(5), Duration::from_millis(300)] {
        let mut stream = connect(&daemon);
        stream.write_all(b"GE").unwrap();
        std::thread::sleep(pause);
        // After a long pause the server may have refused "GE" and closed.
        let _ = stream.write_all(rest.as_bytes());
        if let Some(header) = read_header(&mut stream) {
            assert!(header["error"].is_string(), "{header}");
        }
        assert_closed_without_answer(&mut stream);
    }
    // A lone method prefix is refused with an error, never run.
    let mut stream = connect(&daemon);
    stream.write_all(b"P").unwrap();
    let header = read_header(&mut stream).expect("an error answer");
    assert!(
        header["error"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP"),
        "{header}"
    );
    assert!(!marker.exists(), "a split HTTP request ran a command");
    assert!(audited(&audit, "pwned").is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unframed_text_over_64_kib_gets_the_error_and_runs_nothing() {
    let dir = scratch_dir("legacy-long-text");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &[]);
    let marker = dir.join("ran");
    let mut command = format!("touch {}; : ", marker.display()).into_bytes();
    command.resize(70_010, b'x');
    let mut stream = connect(&daemon);
    stream.write_all(&command).unwrap();
    let header = read_header(&mut stream).expect("an error answer");
    let error = header["error"].as_str().unwrap_or_default();
    assert!(error.contains("framed"), "{header}");
    assert_eq!(header["data_size"], 0);
    assert!(!marker.exists(), "part of the long text ran");
    assert!(audited(&audit, r#""audit":"exec""#).is_empty());

    // Long text under the cap, in one write, runs whole as one command.
    let mut long = b"printf %s ".to_vec();
    long.resize(5000, b'y');
    let mut stream = connect(&daemon);
    let (header, body) = ask(&mut stream, &long);
    assert_eq!(header["exit_code"], 0, "{header}");
    assert_eq!(body.len(), 5000 - 10);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn silent_connection_is_closed_after_the_first_request_timeout() {
    let dir = scratch_dir("legacy-silent");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &["--legacy-first-request-timeout", "500ms"]);
    // The idle timeout is 5 minutes: only the first-request timeout closes it
    // within READ_LIMIT.
    let mut silent = connect(&daemon);
    assert_closed_without_answer(&mut silent);

    // A connection that asked in time is not held to it afterwards.
    let mut talking = connect(&daemon);
    assert_eq!(ask(&mut talking, b"echo one").1, b"one\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(&mut talking, b"echo two").1, b"two\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// `rexec --legacy` opens its connection before its stdin has arrived; one
/// the server closed meanwhile is opened again, with nothing run twice.
#[test]
fn rexec_legacy_reconnects_when_the_server_closed_its_idle_connection() {
    let dir = scratch_dir("legacy-reconnect");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &["--legacy-first-request-timeout", "200ms"]);
    let script = format!(
        "(sleep 1.5; echo late) | {} --legacy --addr {} -- cat",
        common::REXEC,
        addr(&daemon)
    );
    let out = common::output_within(Command::new("sh").args(["-c", &script]), b"", READ_LIMIT);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"late\n"[..]),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(audited(&audit, r#""audit":"exec""#).len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn slow_steady_reader_is_not_cut_by_the_idle_timeout_and_a_stalled_one_is() {
    const ANSWER: usize = 32 << 20;
    let dir = scratch_dir("legacy-slow-reader");
    let audit = dir.join("audit.log");
    let daemon = legacy_daemon(&audit, &["--legacy-idle-timeout", "3s"]);
    let request = format!("head -c {ANSWER} /dev/zero");

    // About 3 MB/s: the answer takes over three idle timeouts to read, but
    // the reader never stops for one.
    let mut stream = connect(&daemon);
    stream.write_all(request.as_bytes()).unwrap();
    let header = read_header(&mut stream).expect("an answer");
    assert_eq!(header["data_size"], ANSWER, "{header}");
    let mut received = 0;
    let mut chunk = vec![0u8; 128 * 1024];
    while received < ANSWER {
        let n = stream.read(&mut chunk).expect("read the answer");
        assert!(n > 0, "cut after {received} of {ANSWER} bytes");
        received += n;
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(received, ANSWER);

    // A reader that stops altogether is given up on.
    let mut stalled = connect(&daemon);
    stalled.write_all(request.as_bytes()).unwrap();
    assert!(
        eventually(READ_LIMIT, || daemon
            .log_text()
            .contains("cannot send the answer")),
        "a stalled reader was never closed"
    );
    let mut total = 0;
    loop {
        match stalled.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < ANSWER, "the stalled reader got all {total} bytes");
    let _ = std::fs::remove_dir_all(dir);
}
