//! SIGHUP: the tokens file is read again (added tokens work, removed ones
//! are refused for new calls, running execs go on, a broken file keeps the
//! old set) and the audit log is reopened at its path (logrotate's `create`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Daemon, eventually, output_within, scratch_dir, unique_marker};

const LIMIT: Duration = Duration::from_secs(20);
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_tokens(path: &Path, contents: &str) {
    // Written beside and renamed, as editors and config managers do, so
    // rexecd never reads half a file.
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).expect("write tokens");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&staged, path).expect("rename tokens");
}

fn tokens_daemon(contents: &str) -> (Daemon, PathBuf) {
    let path = scratch_dir("reload").join("tokens");
    write_tokens(&path, contents);
    let daemon = Daemon::start_with(&["--tokens-file", path.to_str().expect("utf-8 path")]);
    (daemon, path)
}

fn run_with_token(daemon: &Daemon, token: &str, command: &str) -> Output {
    output_within(
        daemon
            .rexec()
            .env("REXEC_TOKEN", token)
            .args(["--", command]),
        b"",
        LIMIT,
    )
}

/// Sends SIGHUP and waits for the `n`th reload line in the log; returns it.
fn hangup(daemon: &Daemon, n: usize) -> String {
    daemon.signal(libc::SIGHUP);
    let mut line = String::new();
    let seen = eventually(LIMIT, || {
        let log = daemon.log_text();
        match log.lines().filter(|l| l.contains("SIGHUP:")).nth(n - 1) {
            Some(found) => {
                line = found.to_string();
                true
            }
            None => false,
        }
    });
    assert!(
        seen,
        "no reload line {n} in the log:\n{}",
        daemon.log_text()
    );
    line
}

#[test]
fn sighup_adds_and_revokes_tokens_while_running_execs_go_on() {
    let (daemon, path) = tokens_daemon(&format!("alice {ALICE}\n"));
    let out = run_with_token(&daemon, BOB, "echo before");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("invalid token"),
        "{}",
        text(&out.stderr)
    );

    // alice's exec runs across the reload: it waits on its stdin.
    let mut running = daemon
        .rexec()
        .env("REXEC_TOKEN", ALICE)
        .args(["--", "echo started; read line; echo got $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rexec");
    let mut running_out = BufReader::new(running.stdout.take().expect("stdout"));
    let mut first = String::new();
    running_out.read_line(&mut first).expect("read");
    assert_eq!(first, "started\n");

    write_tokens(&path, &format!("bob {BOB}\n"));
    let line = hangup(&daemon, 1);
    assert!(
        line.contains("added bob") && line.contains("removed alice") && line.contains("1 names"),
        "{line}"
    );
    assert!(
        !line.contains(BOB) && !line.contains(ALICE),
        "a token in the log: {line}"
    );

    let out = run_with_token(&daemon, BOB, "echo bob-works");
    assert_eq!(text(&out.stdout), "bob-works\n", "{}", text(&out.stderr));
    let out = run_with_token(&daemon, ALICE, "echo alice-works");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("invalid token"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");

    let mut stdin = running.stdin.take().expect("stdin");
    stdin.write_all(b"more\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut running_out, &mut rest).expect("read");
    let status = running.wait().expect("wait rexec");
    assert_eq!(rest, "got more\n");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_with_a_broken_tokens_file_keeps_the_old_set_and_says_why() {
    let (daemon, path) = tokens_daemon(&format!("alice {ALICE}\nbob {BOB}\n"));
    write_tokens(&path, "alice short\n");
    let line = hangup(&daemon, 1);
    assert!(
        line.contains("not reloaded")
            && line.contains("previous 2 names stay")
            && line.contains("line 1"),
        "{line}"
    );
    assert!(line.contains("WARN"), "{line}");
    for token in [ALICE, BOB] {
        let out = run_with_token(&daemon, token, "echo still");
        assert_eq!(text(&out.stdout), "still\n", "{}", text(&out.stderr));
    }

    // A group-readable file is refused like at start, and also keeps the set.
    write_tokens(&path, &format!("carol {BOB}x\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let line = hangup(&daemon, 2);
    assert!(line.contains("chmod 600"), "{line}");
    let out = run_with_token(&daemon, ALICE, "echo still");
    assert_eq!(text(&out.stdout), "still\n");
}

#[test]
fn sighup_reopens_the_audit_log_after_it_was_moved() {
    let dir = scratch_dir("reload-audit");
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&["--audit-log", audit.to_str().expect("utf-8 path")]);
    let before = unique_marker("before");
    let out = output_within(daemon.rexec().args(["--", "echo", &before]), b"", LIMIT);
    assert_eq!(out.status.code(), Some(0));

    // logrotate's `create`: move the file, make a new one, signal.
    let rotated = dir.join("audit.log.1");
    std::fs::rename(&audit, &rotated).expect("rotate");
    let line = hangup(&daemon, 1);
    assert!(line.contains("audit log reopened at"), "{line}");
    assert!(!line.contains("tokens"), "{line}");

    let after = unique_marker("after");
    let out = output_within(daemon.rexec().args(["--", "echo", &after]), b"", LIMIT);
    assert_eq!(out.status.code(), Some(0));
    let old = std::fs::read_to_string(&rotated).expect("read rotated log");
    let new = std::fs::read_to_string(&audit).expect("read new log");
    assert!(
        old.contains(&before) && !old.contains(&after),
        "rotated: {old}"
    );
    assert!(new.contains(&after) && !new.contains(&before), "new: {new}");
    let mode = std::fs::metadata(&audit)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn sighup_with_nothing_to_reload_keeps_serving() {
    let daemon = Daemon::start();
    let line = hangup(&daemon, 1);
    assert!(line.contains("nothing to reload"), "{line}");
    let out = output_within(daemon.rexec().args(["--", "echo", "alive"]), b"", LIMIT);
    assert_eq!(text(&out.stdout), "alive\n");
}
