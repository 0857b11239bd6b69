//! `rexec bench` against the real rexecd: counts, the JSON report's shape,
//! errors, legacy mode, and the hidden `--hold` mode bench/compare.sh uses.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, REXEC, eventually, processes_matching, unique_marker};
use serde_json::Value;

fn bench(daemon_addr: &str, args: &[&str]) -> Output {
    std::process::Command::new(REXEC)
        .args(["bench", "--addr", daemon_addr])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rexec bench")
}

fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {report}"))
}

/// An address where nothing listens: a port bound, then released.
fn unused_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

#[test]
fn every_call_is_counted_with_its_output_bytes() {
    let daemon = Daemon::start();
    let output = bench(
        &daemon.addr,
        &["-c", "4", "-n", "37", "--json", "--", "printf", "abc"],
    );
    assert!(output.status.success(), "{output:?}");
    let report = report(&output);
    assert_eq!(count(&report, "execs"), 37);
    assert_eq!(count(&report, "errors"), 0);
    assert_eq!(count(&report, "bytes"), 37 * 3);
    let latency = &report["latency_ms"];
    let ms = |k: &str| latency[k].as_f64().unwrap_or(-1.0);
    assert!(ms("p50") > 0.0, "{report}");
    assert!(ms("p50") <= ms("p90") && ms("p90") <= ms("p99") && ms("p99") <= ms("max"));
    assert!(report["execs_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    // 37 audit lines: every call really ran on the server.
    let audited = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("printf abc"))
        .count();
    assert_eq!(audited, 37);
}

#[test]
fn json_report_has_exactly_the_documented_fields_in_order() {
    let daemon = Daemon::start();
    let output = bench(&daemon.addr, &["-n", "3", "--json", "--", "true"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let report = report(&output);
    let keys: Vec<&str> = report
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "execs",
        "errors",
        "execs_per_sec",
        "bytes",
        "mb_per_sec",
        "latency_ms",
    ];
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    let latency_keys: Vec<&str> = report["latency_ms"]
        .as_object()
        .expect("latency object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(latency_keys.len(), 4);
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].is_f64(), "{key} in {report}");
    }
    // The documented order, as a person reading the line sees it.
    let order: Vec<usize> = [
        "\"execs\"",
        "\"errors\"",
        "\"execs_per_sec\"",
        "\"bytes\"",
        "\"mb_per_sec\"",
        "\"latency_ms\"",
    ]
    .iter()
    .map(|k| stdout.find(k).unwrap_or(usize::MAX))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stdout}");
}

#[test]
fn human_summary_names_rates_and_percentiles() {
    let daemon = Daemon::start();
    let output = bench(&daemon.addr, &["-c", "2", "-n", "10", "--", "echo", "hi"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in ["execs/s", "MB/s", "p50", "p99", "10 in", "0 errors"] {
        assert!(text.contains(needle), "{needle:?} missing in {text}");
    }
}

#[test]
fn commands_that_fail_to_start_or_exit_nonzero_are_errors() {
    let daemon = Daemon::start();
    for words in [&["no-such-command-rexec-bench"][..], &["exit", "3"]] {
        let mut args = vec!["-c", "2", "-n", "6", "--json", "--"];
        args.extend_from_slice(words);
        let output = bench(&daemon.addr, &args);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let report = report(&output);
        assert_eq!(count(&report, "execs"), 6, "{report}");
        assert_eq!(count(&report, "errors"), 6, "{report}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("6 of 6 calls failed"), "{stderr}");
    }
}

#[test]
fn unreachable_server_counts_every_call_as_an_error() {
    let addr = unused_addr();
    for mode in [&[][..], &["--legacy"][..]] {
        let mut args = vec!["-n", "4", "--json"];
        args.extend_from_slice(mode);
        args.extend_from_slice(&["--", "true"]);
        let output = bench(&addr, &args);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let report = report(&output);
        assert_eq!(count(&report, "execs"), 4, "{report}");
        assert_eq!(count(&report, "errors"), 4, "{report}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("connection refused"), "{stderr}");
    }
}

#[test]
fn legacy_mode_runs_over_the_raw_tcp_listener() {
    let daemon =
        Daemon::start_with(&["--legacy-listen", "127.0.0.1:0", "--legacy-allow-anonymous"]);
    let legacy = daemon.legacy_addr.clone().expect("legacy address");
    let output = bench(
        &legacy,
        &[
            "--legacy", "-c", "3", "-n", "30", "--json", "--", "echo", "hi",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let report = report(&output);
    assert_eq!(count(&report, "execs"), 30);
    assert_eq!(count(&report, "errors"), 0);
    assert_eq!(count(&report, "bytes"), 30 * 3);
    // Pointing --legacy at the gRPC port is an error per call, not a hang.
    let output = bench(
        &daemon.addr,
        &[
            "--legacy",
            "-n",
            "2",
            "--json",
            "--connect-timeout",
            "2s",
            "--",
            "true",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn duration_mode_stops_on_time() {
    let daemon = Daemon::start();
    let started = Instant::now();
    let output = bench(
        &daemon.addr,
        &["--duration", "400ms", "--json", "--", "true"],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let report = report(&output);
    assert!(count(&report, "execs") > 0, "{report}");
    assert_eq!(count(&report, "errors"), 0);
}

#[test]
fn total_and_duration_conflict() {
    let output = bench(
        "127.0.0.1:1",
        &["-n", "3", "--duration", "1s", "--", "true"],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn hold_keeps_sessions_open_until_terminated() {
    let daemon = Daemon::start();
    let marker = unique_marker("benchhold");
    let command = format!("sleep 60; : {marker}");
    let mut holder = std::process::Command::new(REXEC)
        .args([
            "bench",
            "--addr",
            &daemon.addr,
            "--hold",
            "5",
            "--",
            &command,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn rexec bench --hold");
    let mut line = String::new();
    let read = holder
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut line));
    assert!(matches!(read, Some(Ok(_))), "{read:?}");
    assert_eq!(line.trim(), "holding 5");
    let holder_pid = holder.id();
    let shells = || {
        processes_matching(&marker)
            .into_iter()
            .filter(|&pid| pid != holder_pid)
            .count()
    };
    // /proc is read while shells fork `sleep`: look again before concluding.
    eventually(Duration::from_secs(5), || shells() >= 5);
    let running = shells();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(holder_pid as i32, libc::SIGTERM);
    }
    let status = holder.wait().expect("wait holder");
    // At least one shell per session (a shell forking `sleep` is briefly two).
    assert!(running >= 5, "{running} of 5 sessions' shells running");
    assert!(status.success(), "{status:?}");
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&marker)
            .into_iter()
            .all(|pid| pid == holder_pid)),
        "sessions' commands still running after the holder left"
    );
}

#[test]
fn no_rates_when_no_call_succeeded() {
    let addr = unused_addr();
    let output = bench(&addr, &["-n", "3", "--", "true"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("none: no call succeeded"), "{text}");
    assert!(!text.contains("p50"), "no latency of failures: {text}");
    let report = report(&bench(&addr, &["-n", "3", "--json", "--", "true"]));
    assert!(report["execs_per_sec"].is_null(), "{report}");
    assert!(report["latency_ms"].is_null(), "{report}");
}

#[test]
fn bench_flags_are_checked_and_shared_with_rexec() {
    let dir = common::scratch_dir("bench-token");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "alice s3cret-bench-token\n").unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let daemon = Daemon::start_with(&["--tokens-file", tokens.to_str().unwrap()]);
    let marker = unique_marker("bench-flag");
    // A mistyped flag is refused locally: nothing runs.
    let output = bench(
        &daemon.addr,
        &["--token-fil", "x", "-n", "3", "--", "echo", &marker],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("'--token-file'"));
    assert!(!daemon.log_text().contains(&marker));
    // REXEC_TOKEN and --token-file both reach the server.
    let output = std::process::Command::new(REXEC)
        .args([
            "bench",
            "--addr",
            &daemon.addr,
            "-n",
            "3",
            "--json",
            "--",
            "echo",
            &marker,
        ])
        .env("REXEC_TOKEN", "s3cret-bench-token")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(count(&report(&output), "errors"), 0);
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-bench-token\n").unwrap();
    let output = bench(
        &daemon.addr,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "-n",
            "2",
            "--json",
            "--",
            "true",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let output = bench(&daemon.addr, &["-n", "2", "--json", "--", "true"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "no token: every call refused"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unauthenticated"),
        "{output:?}"
    );
}
