//! The REPL (`rexec` with no words) as a person uses it: lines piped in, and
//! on a pseudo-terminal with Ctrl-C typed as a key.

mod common;

use std::time::Duration;

use common::terminal::Terminal;
use common::{Daemon, eventually, output_within, processes_matching, scratch_dir, unique_sleep};

const LIMIT: Duration = Duration::from_secs(60);

/// Whether a process with `needle` in its command line shows up within 10 s.
fn started(needle: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        !processes_matching(needle).is_empty()
    })
}

/// Whether every process with `needle` in its command line is gone within 10 s.
fn gone(needle: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        processes_matching(needle).is_empty()
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn repl_runs_lines_keeps_cd_and_shows_failures() {
    let daemon = Daemon::start();
    let dir = scratch_dir("repl");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let script = format!(
        "echo one\ncd {}\ncd sub\npwd\ncd /no/such/dir\npwd\nexit 3\necho after\nquit\necho never\n",
        dir.display()
    );
    let out = output_within(&mut daemon.rexec(), script.as_bytes(), LIMIT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let sub = dir.join("sub");
    assert_eq!(
        stdout,
        format!("one\n{}\n{}\nafter\n", sub.display(), sub.display()),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("[exit 3]"), "{stderr}");
    assert!(
        stderr.contains("/no/such/dir"),
        "a failed cd says why: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn only_a_lone_cd_sticks_and_compound_lines_run_as_typed() {
    let daemon = Daemon::start();
    let dir = scratch_dir("repl-cd");
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/listed-file"), "").unwrap();
    let script = format!(
        "cd {}\ncd sub && ls\npwd\ncd sub; pwd\npwd\n",
        dir.display()
    );
    let out = output_within(&mut daemon.rexec(), script.as_bytes(), LIMIT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let (top, sub) = (dir.display(), dir.join("sub"));
    assert_eq!(
        stdout,
        format!("listed-file\n{top}\n{}\n{top}\n", sub.display()),
        "the listing is shown and the cwd stays: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_failed_line_is_reported_and_a_vanished_cwd_falls_back() {
    let daemon = Daemon::start();
    let dir = scratch_dir("repl-gone");
    std::fs::create_dir(dir.join("gone")).unwrap();
    let gone = dir.join("gone");
    let script = format!(
        "cd {}\nrmdir {}\npwd\npwd\necho still-here\n",
        gone.display(),
        gone.display()
    );
    let out = output_within(&mut daemon.rexec(), script.as_bytes(), LIMIT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("cwd not found"),
        "the failure is shown: {stderr}"
    );
    assert!(
        stderr.contains("is gone"),
        "the fallback is noted: {stderr}"
    );
    let server_dir = std::env::current_dir().unwrap();
    assert_eq!(
        stdout,
        format!("{}\nstill-here\n", server_dir.display()),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_restarted_server_does_not_end_the_repl() {
    let daemon = Daemon::start();
    let addr = daemon.addr.clone();
    let mut child = daemon
        .rexec()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "echo first").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(daemon);
    writeln!(stdin, "echo lost").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    writeln!(stdin, "echo lost again").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(stdout, "first\n", "{stderr}");
    assert_eq!(
        stderr.matches("rexec: ").count(),
        2,
        "each failed line says why, and the REPL goes on: {stderr} ({addr})"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn history_goes_to_rexec_history() {
    let daemon = Daemon::start();
    let history = scratch_dir("history-file").join("deep/er/history");
    let out = output_within(
        daemon.rexec().env("REXEC_HISTORY", &history),
        b"echo remembered-line\n",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    let saved = std::fs::read_to_string(&history).expect("history written");
    assert!(saved.contains("echo remembered-line"), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_command_and_the_repl_goes_on() {
    let daemon = Daemon::start();
    let (sleep, needle) = unique_sleep(30);
    let mut terminal = Terminal::spawn(&daemon, &[], 24, 80);
    terminal.expect("rexec> ").await;
    terminal.type_text(&format!("{sleep}\r")).await;
    assert!(started(&needle));
    terminal.type_text("\x03").await;
    terminal.expect("[killed by signal INT]").await;
    terminal.expect("rexec> ").await;
    assert!(gone(&needle));
    terminal.type_text("echo still-$((20+22))\r").await;
    terminal.expect("still-42").await;
    // At the prompt, Ctrl-C drops the line typed so far, as shells do.
    terminal.expect("rexec> ").await;
    terminal.type_text("echo dropped-line\x03").await;
    terminal.expect("rexec> ").await;
    terminal.type_text("exit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
    let history = std::fs::read_to_string(&terminal.history).unwrap_or_default();
    assert!(history.contains("still-$((20+22))"), "{history:?}");
    assert!(!history.contains("dropped-line"), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_cancels_a_command_that_ignores_int() {
    let daemon = Daemon::start();
    let (sleep, needle) = unique_sleep(31);
    let mut terminal = Terminal::spawn(&daemon, &[], 24, 80);
    terminal.expect("rexec> ").await;
    terminal.type_text(&format!("trap '' INT; {sleep}\r")).await;
    assert!(started(&needle));
    terminal.type_text("\x03").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!processes_matching(&needle).is_empty(), "INT is ignored");
    terminal.type_text("\x03").await;
    terminal
        .expect("interrupted; remote command cancelled")
        .await;
    terminal.expect("rexec> ").await;
    assert!(
        gone(&needle),
        "the server killed the cancelled command: {}",
        daemon.log_text()
    );
    terminal.type_text("exit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_legacy_repl_cancels_the_line() {
    let daemon =
        Daemon::start_with(&["--legacy-listen", "127.0.0.1:0", "--legacy-allow-anonymous"]);
    let legacy = daemon.legacy_addr.clone().expect("legacy address");
    let (sleep, needle) = unique_sleep(32);
    let mut terminal = Terminal::spawn_at(&legacy, &["--legacy"], 24, 80);
    terminal.expect("rexec> ").await;
    terminal.type_text(&format!("{sleep}\r")).await;
    assert!(started(&needle));
    terminal.type_text("\x03").await;
    terminal
        .expect("interrupted; remote command cancelled")
        .await;
    terminal.expect("rexec> ").await;
    assert!(gone(&needle));
    // The next line goes over a new connection.
    terminal.type_text("echo legacy-$((1+1))\r").await;
    terminal.expect("legacy-2").await;
    terminal.type_text("exit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}
