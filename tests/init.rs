//! `rexecd init DIR`: certificates rustls accepts, a token, a config that
//! uses them, and a printed rexec command line that works as printed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, REXEC, REXECD, output_within, scratch_dir};

const LIMIT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn init(dir: &Path, extra: &[&str]) -> Output {
    output_within(
        Command::new(REXECD).arg("init").arg(dir).args(extra),
        b"",
        LIMIT,
    )
}

/// A fresh DIR made by init for 127.0.0.1 and localhost, and init's stdout.
fn initialised(tag: &str) -> (PathBuf, String) {
    let dir = scratch_dir(tag).join("setup");
    let out = init(&dir, &["--name", "127.0.0.1", "--name", "localhost"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    (dir, text(&out.stdout))
}

/// The printed `rexec ...` line, pointed at `port` and at this build's rexec.
fn printed_command(stdout: &str, port: &str) -> String {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("rexec "))
        .unwrap_or_else(|| panic!("no rexec command line in:\n{stdout}"));
    assert!(line.contains("--addr https://127.0.0.1:50051 "), "{line}");
    let line = line.replacen(":50051 ", &format!(":{port} "), 1);
    format!("'{REXEC}' {}", &line["rexec ".len()..])
}

fn port_of(daemon: &Daemon) -> String {
    daemon.addr.rsplit_once(':').expect("port").1.to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_printed_command_line_runs_against_its_config() {
    let (dir, stdout) = initialised("init-run");
    // The config listens on 0.0.0.0:50051; the harness's --listen 127.0.0.1:0 wins.
    let config = dir.join("rexecd.toml");
    let daemon = Daemon::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    let command = printed_command(&stdout, &port_of(&daemon));
    let out = output_within(
        Command::new("sh")
            .args(["-c", &command])
            .env_remove("REXEC_TOKEN"),
        b"",
        LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{command}: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("load average"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        daemon.log_text().contains(r#""principal":"admin""#),
        "{}",
        daemon.log_text()
    );

    // The config really asks for the token and the client certificate.
    let token = std::fs::read_to_string(dir.join("client/token")).expect("token");
    let no_token = command.replace(
        &format!(" --token-file {}", dir.join("client/token").display()),
        "",
    );
    assert_ne!(no_token, command, "no --token-file in {command}");
    let out = output_within(
        Command::new("sh")
            .args(["-c", &no_token])
            .env_remove("REXEC_TOKEN"),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(255), "{no_token}");
    // rexec sends this user's local token to a loopback address: not the one.
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let no_cert = command.replace(
        &format!(
            " --cert {} --key {}",
            dir.join("client/client.pem").display(),
            dir.join("client/client-key.pem").display()
        ),
        "",
    );
    assert_ne!(no_cert, command, "no --cert/--key in {command}");
    let out = output_within(
        Command::new("sh")
            .args(["-c", &no_cert])
            .env("REXEC_TOKEN", token.trim()),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(255), "{no_cert}");
    assert!(
        text(&out.stderr).contains("client certificate"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn init_into_an_existing_dir_fails_and_changes_nothing() {
    let (dir, _) = initialised("init-twice");
    let before = std::fs::read(dir.join("ca.pem")).expect("ca");
    let out = init(&dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains(&dir.display().to_string()),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).expect("ca"), before);

    // An empty directory counts too: init never writes into one it did not make.
    let empty = scratch_dir("init-empty");
    let out = init(&empty, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0);
}

#[test]
fn init_keys_and_tokens_are_private() {
    let (dir, _) = initialised("init-modes");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("client")), 0o700);
    for secret in [
        "ca-key.pem",
        "server-key.pem",
        "tokens",
        "client/client-key.pem",
        "client/token",
    ] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }
    for public in ["ca.pem", "server.pem", "client/ca.pem", "client/client.pem"] {
        assert_eq!(mode(&dir.join(public)), 0o644, "{public}");
    }
}

#[test]
fn init_certificates_are_v3_with_ca_usage_eku_and_names() {
    let (dir, _) = initialised("init-certs");
    let show = |name: &str| {
        let out = output_within(
            Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(dir.join(name)),
            b"",
            LIMIT,
        );
        assert!(out.status.success(), "openssl: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let ca = show("ca.pem");
    assert!(ca.contains("Version: 3") && ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Certificate Sign"), "{ca}");
    let server = show("server.pem");
    for needed in [
        "Version: 3",
        "CA:FALSE",
        "TLS Web Server Authentication",
        "IP Address:127.0.0.1",
        "DNS:localhost",
        "Subject: CN = 127.0.0.1",
    ] {
        assert!(server.contains(needed), "{needed} missing from\n{server}");
    }
    assert!(!server.contains("Client Authentication"), "{server}");
    let client = show("client/client.pem");
    for needed in ["Version: 3", "CA:FALSE", "TLS Web Client Authentication"] {
        assert!(client.contains(needed), "{needed} missing from\n{client}");
    }
    let verify = output_within(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join("ca.pem"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("client/client.pem")),
        b"",
        LIMIT,
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn init_without_names_covers_this_host_and_loopback() {
    let dir = scratch_dir("init-default").join("setup");
    let out = init(&dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cert = output_within(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(dir.join("server.pem")),
        b"",
        LIMIT,
    );
    let names = text(&cert.stdout);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    for needed in [
        format!("DNS:{}", host.trim()),
        "DNS:localhost".into(),
        "IP Address:127.0.0.1".into(),
        "IP Address:0:0:0:0:0:0:0:1".into(),
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names}");
    }
    // The printed address is the first name: this host's.
    assert!(
        text(&out.stdout).contains(&format!("--addr https://{}:50051 ", host.trim())),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn init_with_a_bad_name_is_exit_2_and_makes_no_dir() {
    let dir = scratch_dir("init-bad").join("setup");
    let out = init(&dir, &["--name", "not a host!"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("'not a host!'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.exists());
}
