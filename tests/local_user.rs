//! The default credential: a default rexecd runs commands only for the user
//! who started it (its local token), refuses other local users before
//! anything runs, and says so in the audit log; explicit insecure choices
//! warn. Tests run as root; another user is `nobody` through `su`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXEC, REXECD, output_within, scratch_dir};
use rexec::client::{Client, ClientOptions, Command as RemoteCommand, Event};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root can run; in CI not being root is a failure.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs the tests to run as root (su nobody)"
    );
    eprintln!("skipped {test}: needs root");
    false
}

/// The CLI with no credentials from the test's environment.
fn rexec(daemon: &Daemon) -> Command {
    let mut command = daemon.rexec();
    command.env_remove("REXEC_TOKEN");
    command
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
        .collect()
}

fn audit_of<'a>(lines: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["audit"] == kind).collect()
}

/// A private directory (0700) for an isolated local token.
fn private_dir(tag: &str) -> PathBuf {
    let dir = scratch_dir(tag);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `COMMAND` run by the shell as user nobody.
fn as_nobody(command: &str) -> std::process::Output {
    output_within(
        Command::new("su").args(["nobody", "-s", "/bin/sh", "-c", command]),
        b"",
        LIMIT,
    )
}

#[test]
fn another_local_user_is_refused_before_anything_runs() {
    if !root_or_skip("another_local_user_is_refused_before_anything_runs") {
        return;
    }
    let dir = scratch_dir("nobody");
    // Anyone may create the marker, so only rexecd's refusal keeps it away.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&["--audit-log", audit.to_str().unwrap()]);
    let marker = dir.join("ran");
    let out = as_nobody(&format!(
        "{REXEC} --addr {} -- 'touch {}; head -2 /etc/shadow'",
        daemon.addr,
        marker.display()
    ));
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(!marker.exists(), "another user's command ran");

    // Handing nobody the token is handing it the right to run commands.
    let token_copy = dir.join("token-for-nobody");
    std::fs::write(&token_copy, common::local_token()).unwrap();
    std::fs::set_permissions(&token_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody(&format!(
        "{REXEC} --addr {} --token-file {} -- 'touch {}'",
        daemon.addr,
        token_copy.display(),
        marker.display()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());

    let lines = audit_lines(&audit);
    let refused = audit_of(&lines, "refused");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert_eq!(refused[0]["status"], "UNAUTHENTICATED");
    assert!(
        refused[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(audit_of(&lines, "exec")[0]["principal"], "local:root");
}

#[test]
fn the_starting_users_cli_needs_no_flags_and_is_audited_as_local() {
    let dir = scratch_dir("local-cli");
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&["--audit-log", audit.to_str().unwrap()]);
    let out = output_within(rexec(&daemon).args(["--", "echo hi; exit 3"]), b"", LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let lines = audit_lines(&audit);
    let principal = audit_of(&lines, "exec")[0]["principal"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(principal.starts_with("local:"), "{principal}");

    let path = rexec::local_token::path().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert!(
        !std::fs::read_to_string(&audit)
            .unwrap()
            .contains(&common::local_token()),
        "the token is in the audit log"
    );
}

#[test]
fn wrong_and_missing_tokens_are_refused_and_audited() {
    let dir = scratch_dir("refusals");
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&["--audit-log", audit.to_str().unwrap()]);
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let wrong = output_within(
        rexec(&daemon)
            .env("REXEC_TOKEN", "not-the-local-token-0123456789")
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(wrong.status.code(), Some(255));
    assert!(
        text(&wrong.stderr).contains("invalid token"),
        "{}",
        text(&wrong.stderr)
    );
    // No file where the client looks: no token at all.
    let missing = output_within(
        rexec(&daemon)
            .env("REXEC_LOCAL_TOKEN_FILE", dir.join("absent"))
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(missing.status.code(), Some(255));
    assert!(
        text(&missing.stderr).contains("missing credentials"),
        "{}",
        text(&missing.stderr)
    );
    assert!(!marker.exists());
    let lines = audit_lines(&audit);
    let refused = audit_of(&lines, "refused");
    assert_eq!(refused.len(), 2, "{lines:?}");
    for line in &refused {
        assert_eq!(line["status"], "UNAUTHENTICATED", "{line}");
        assert_eq!(line["listener"], "grpc");
        assert!(line["peer"].as_str().is_some() && line["reason"].as_str().is_some());
    }
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid token")
    );
    assert!(
        !std::fs::read_to_string(&audit)
            .unwrap()
            .contains("not-the-local-token")
    );
    assert!(audit_of(&lines, "exec").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_and_bad_request_refusals_are_audited() {
    let dir = scratch_dir("refusal-kinds");
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&[
        "--audit-log",
        audit.to_str().unwrap(),
        "--max-concurrent",
        "1",
        "--max-request-size",
        "4KiB",
    ]);
    let mut client = Client::connect(&daemon.addr, &ClientOptions::default())
        .await
        .unwrap();
    let mut running = client.exec(RemoteCommand::shell("sleep 30")).await.unwrap();
    assert!(matches!(
        running.next().await.unwrap(),
        Some(Event::Started { .. })
    ));
    let busy = client
        .output(RemoteCommand::shell("true"))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Some(Code::ResourceExhausted), "{busy}");
    drop(running);
    let invalid = client.output(RemoteCommand::shell("")).await.unwrap_err();
    assert_eq!(invalid.code(), Some(Code::InvalidArgument), "{invalid}");
    let missing = client
        .output(RemoteCommand::argv(["/no/such/program-rexec"]))
        .await;
    // A free slot may take a moment after the cancel: retry past RESOURCE_EXHAUSTED.
    let mut missing = missing.unwrap_err();
    for _ in 0..100 {
        if missing.code() != Some(Code::ResourceExhausted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        missing = client
            .output(RemoteCommand::argv(["/no/such/program-rexec"]))
            .await
            .unwrap_err();
    }
    assert_eq!(missing.code(), Some(Code::NotFound), "{missing}");
    let large = client
        .output(RemoteCommand::shell("cat").stdin(vec![b'x'; 64 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(large.code(), Some(Code::ResourceExhausted), "{large}");

    let lines = audit_lines(&audit);
    let statuses: Vec<&str> = audit_of(&lines, "refused")
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    for wanted in ["INVALID_ARGUMENT", "NOT_FOUND"] {
        assert!(statuses.contains(&wanted), "{wanted} not in {statuses:?}");
    }
    let exhausted = statuses
        .iter()
        .filter(|s| **s == "RESOURCE_EXHAUSTED")
        .count();
    assert!(exhausted >= 2, "{statuses:?}");
    for line in audit_of(&lines, "refused") {
        assert!(
            line["principal"].as_str().unwrap().starts_with("local:"),
            "{line}"
        );
    }
}

#[test]
fn insecure_no_auth_serves_anyone_and_warns_on_every_start() {
    let dir = scratch_dir("insecure");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let audit = dir.join("audit.log");
    let daemon =
        Daemon::start_with(&["--insecure-no-auth", "--audit-log", audit.to_str().unwrap()]);
    assert!(
        daemon
            .log_text()
            .contains("--insecure-no-auth: no authentication"),
        "{}",
        daemon.log_text()
    );
    let lines = audit_lines(&audit);
    let warnings = audit_of(&lines, "warning");
    assert_eq!(warnings.len(), 1, "{lines:?}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("--insecure-no-auth")
    );
    let marker = dir.join("ran");
    let out = output_within(
        rexec(&daemon)
            .env("REXEC_LOCAL_TOKEN_FILE", dir.join("absent"))
            .args(["--", &format!("touch {}", marker.display())]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());
    if is_root() {
        let other = dir.join("ran-by-nobody");
        let out = as_nobody(&format!(
            "{REXEC} --addr {} -- 'touch {}'",
            daemon.addr,
            other.display()
        ));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(other.exists());
    }
}

#[test]
fn several_rexecds_started_at_once_agree_on_one_token() {
    let dir = private_dir("agree");
    let path = dir.join("state/rexec/token");
    let daemons: Vec<Daemon> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    Daemon::start_configured(&[], |command| {
                        command.env("REXEC_LOCAL_TOKEN_FILE", &path);
                    })
                })
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["token"], "temporary files left behind");
    for daemon in &daemons {
        let out = output_within(
            rexec(daemon)
                .env("REXEC_LOCAL_TOKEN_FILE", &path)
                .args(["--", "echo same"]),
            b"",
            LIMIT,
        );
        assert_eq!(text(&out.stdout), "same\n", "{}", text(&out.stderr));
        // The user's usual token is another one: refused.
        let out = output_within(rexec(daemon).args(["--", "true"]), b"", LIMIT);
        assert_eq!(out.status.code(), Some(255));
    }
}

#[test]
fn a_token_file_others_can_read_stops_rexecd() {
    let dir = private_dir("open-token");
    let path = dir.join("token");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = output_within(
        Command::new(REXECD)
            .args(["--listen", "127.0.0.1:0"])
            .env("REXEC_LOCAL_TOKEN_FILE", &path)
            .stdout(Stdio::piped()),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// The local token is authentication too: a default rexecd with a legacy port
/// and no acknowledgement would run commands for every local user.
#[test]
fn legacy_beside_the_local_token_needs_the_anonymous_flag() {
    let args = ["--listen", "127.0.0.1:0", "--legacy-listen", "127.0.0.1:0"];
    let out = output_within(Command::new(REXECD).args(args), b"", LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--legacy-allow-anonymous"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no readiness line");

    // Open gRPC needs no second flag: nothing is protected that legacy bypasses.
    let daemon = Daemon::start_with(&["--insecure-no-auth", "--legacy-listen", "127.0.0.1:0"]);
    assert!(daemon.legacy_addr.is_some());
}

#[test]
fn legacy_beside_tokens_needs_the_anonymous_flag() {
    let dir = scratch_dir("legacy-ack");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "alice alice-0123456789abcdef0123456789\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--legacy-listen",
        "127.0.0.1:0",
    ];
    let out = output_within(Command::new(REXECD).args(args), b"", LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--legacy-allow-anonymous"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    let audit = dir.join("audit.log");
    let mut with_flag: Vec<&str> = args[2..].to_vec();
    with_flag.extend([
        "--legacy-allow-anonymous",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let daemon = Daemon::start_with(&with_flag);
    assert!(daemon.legacy_addr.is_some());
    assert!(
        daemon.log_text().contains("legacy listener"),
        "{}",
        daemon.log_text()
    );
    let lines = audit_lines(&audit);
    assert!(
        audit_of(&lines, "warning")
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("no authentication")),
        "{lines:?}"
    );
}
