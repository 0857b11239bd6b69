//! What an unauthenticated gRPC connection may cost: silent sockets are
//! closed after the preface timeout, the oldest unauthenticated ones make room
//! for new ones, so 1,100 of them never lock a real client out, and refusals
//! past --max-connections are logged once per interval.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, output_within};
use rexec::client::{Client, ClientOptions, Command as RemoteCommand, Event};

const SILENT: usize = 1100;

/// Lets this test process hold `wanted` sockets.
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        assert!(
            limit.rlim_cur >= wanted,
            "the hard limit on open files ({}) is below {wanted}",
            limit.rlim_max
        );
    }
}

/// Reads until the server closes the connection; how long that took, or
/// `None` if it was still open after `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 1024];
    while start.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_real_call_gets_through_1100_silent_connections() {
    raise_open_files(SILENT as u64 + 512);
    let daemon = Daemon::start_configured(&[], |command| {
        // rexecd raises its own soft limit to the hard one; make sure the
        // hard one has room.
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 4096,
                    rlim_max: 4096,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(&daemon.addr).expect("open a silent connection"))
        .collect();
    let started = Instant::now();
    let out = output_within(
        daemon.rexec().args(["--", "echo through"]),
        b"",
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    eprintln!("a real call under {SILENT} silent connections took {took:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(silent);
    assert!(
        daemon
            .log_text()
            .contains("closed the oldest unauthenticated connection"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn silent_and_preface_only_connections_are_closed() {
    let daemon = Daemon::start();
    let mut silent = TcpStream::connect(&daemon.addr).unwrap();
    let mut preface_only = TcpStream::connect(&daemon.addr).unwrap();
    std::io::Write::write_all(&mut preface_only, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let limit = Duration::from_secs(30);
    let took = closed_within(&mut silent, limit).expect("a silent connection stayed open");
    eprintln!("silent connection closed after {took:?}");
    closed_within(&mut preface_only, limit).expect("a preface-only connection stayed open");
    // An authenticated client that has finished its calls keeps its connection.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&daemon.addr, &ClientOptions::default())
            .await
            .unwrap();
        client.output(RemoteCommand::shell("true")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let output = client
            .output(RemoteCommand::shell("echo again"))
            .await
            .unwrap();
        assert_eq!(output.stdout, b"again\n");
    });
}

#[test]
fn an_idle_authenticated_connection_is_closed_after_the_idle_timeout() {
    let daemon = Daemon::start_with(&["--idle-timeout", "1s"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&daemon.addr, &ClientOptions::default())
            .await
            .unwrap();
        // A silent command is a stream in progress, not idleness.
        let output = client
            .output(RemoteCommand::shell("sleep 3; echo late"))
            .await
            .unwrap();
        assert_eq!(output.stdout, b"late\n");
    });
    let closed = common::eventually(Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("no call for 1s (rexecd --idle-timeout)")
    });
    assert!(closed, "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_past_max_connections_are_logged_once_per_interval() {
    let daemon = Daemon::start_with(&["--max-connections", "1"]);
    let mut client = Client::connect(&daemon.addr, &ClientOptions::default())
        .await
        .unwrap();
    let mut running = client.exec(RemoteCommand::shell("sleep 30")).await.unwrap();
    assert!(matches!(
        running.next().await.unwrap(),
        Some(Event::Started { .. })
    ));
    for _ in 0..30 {
        let mut refused = TcpStream::connect(&daemon.addr).unwrap();
        assert!(closed_within(&mut refused, Duration::from_secs(10)).is_some());
    }
    let log = daemon.log_text();
    let lines = log.matches("(rexecd --max-connections)").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} refusal lines for 30 refusals:\n{log}"
    );
    drop(running);
}
