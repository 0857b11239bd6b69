//! The Rust library example builds and runs against a real rexecd.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

/// `cargo test` builds examples beside the test binaries' `deps/` directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} was not built: run `cargo build --release --examples` (scripts/test-all does)",
        path.display()
    );
    path
}

#[test]
fn library_example_streams_output_and_exits_with_the_remote_code() {
    let daemon = Daemon::start();
    let out = Command::new(example("library"))
        .args([daemon.addr.as_str(), "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[started pid "), "{stderr}");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(stderr.contains("[sorted] a\nb\n"), "{stderr}");
}

#[test]
fn library_example_reports_connect_failures() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(example("library"))
        .args([format!("127.0.0.1:{port}").as_str(), "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection refused"));
}
