//! Authentication, TLS and mTLS, secure defaults, limits, the audit log and
//! --run-as, against the real binaries. Certificates are made here with rcgen.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, REXECD, output_within, scratch_dir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rexec::client::{Client, ClientOptions, Event};
use tonic::Code;

const ALICE_TOKEN: &str = "alice-0123456789abcdef0123456789";
const BOB_TOKEN: &str = "bob-fedcba9876543210fedcba987654";
const LIMIT: Duration = Duration::from_secs(20);

/// A tokens file with `mode`, holding alice's and bob's tokens.
fn tokens_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# who may run commands\n\nalice {ALICE_TOKEN}\nbob   {BOB_TOKEN}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A client token file (just the token).
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("token-{}", &token[..token.len().min(8)]));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// The CLI against `daemon`, with no token from the test's environment.
fn rexec(daemon: &Daemon) -> Command {
    let mut command = rexec_at(&daemon.addr);
    command.stdin(Stdio::null());
    command
}

/// The CLI against `addr` (e.g. an https:// one), with no credentials from
/// the test's environment.
fn rexec_at(addr: &str) -> Command {
    let mut command = Command::new(common::REXEC);
    command
        .args(["--addr", addr])
        .env_remove("REXEC_TOKEN")
        .env_remove("REXEC_CA")
        .env_remove("REXEC_CERT")
        .env_remove("REXEC_KEY");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// rexecd run to its end (for flags it must refuse).
fn rexecd_refuses(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(REXECD);
    command.args(args);
    output_within(&mut command, b"", LIMIT)
}

/// One audit line per exec, parsed.
fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
        .collect()
}

/// A test CA, a server certificate for localhost/127.0.0.1, and client
/// certificates, as PEM files in one directory.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let (ca_pem, issuer) = certificate_authority("rexec test CA");
        let ca_cert = write(dir, "ca.pem", &ca_pem);
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            issuer,
            ca_cert,
            server_cert: write(dir, "server.pem", &cert.pem()),
            server_key: write(dir, "server-key.pem", &key.serialize_pem()),
        }
    }

    /// A client certificate with subject CN `name`, signed by this CA (or,
    /// with `own_ca`, by a CA the server does not know); (cert, key) paths.
    fn client(&self, name: &str, own_ca: bool) -> (PathBuf, PathBuf) {
        let stranger = certificate_authority("stranger CA").1;
        let issuer = if own_ca { &stranger } else { &self.issuer };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let tag = if own_ca { "stranger" } else { "client" };
        (
            write(&self.dir, &format!("{tag}-{name}.pem"), &cert.pem()),
            write(
                &self.dir,
                &format!("{tag}-{name}-key.pem"),
                &key.serialize_pem(),
            ),
        )
    }

    fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--tls-cert",
            self.server_cert.to_str().unwrap(),
            "--tls-key",
            self.server_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::start_with(&args)
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn only_a_right_token_runs_the_command() {
    let dir = scratch_dir("tokens");
    let daemon = Daemon::start_with(&["--tokens-file", tokens_file(&dir, 0o600).to_str().unwrap()]);
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());

    let no_token = output_within(rexec(&daemon).args(["--", &touch]), b"", LIMIT);
    assert_eq!(no_token.status.code(), Some(255));
    assert!(
        text(&no_token.stderr).contains("unauthenticated"),
        "{}",
        text(&no_token.stderr)
    );
    assert!(!marker.exists(), "ran without a token");

    let wrong = output_within(
        rexec(&daemon)
            .env("REXEC_TOKEN", "alice-0123456789abcdef0123456780")
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
    assert!(!marker.exists(), "ran with a wrong token");

    let right = output_within(
        rexec(&daemon)
            .arg("--token-file")
            .arg(token_file(&dir, BOB_TOKEN))
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(right.status.code(), Some(0), "{}", text(&right.stderr));
    assert!(marker.exists(), "a right token did not run the command");

    let by_env = output_within(
        rexec(&daemon)
            .env("REXEC_TOKEN", ALICE_TOKEN)
            .args(["--", "echo hi"]),
        b"",
        LIMIT,
    );
    assert_eq!(text(&by_env.stdout), "hi\n");
    let log = daemon.log_text();
    assert!(log.contains(r#""principal":"bob""#), "{log}");
    assert!(log.contains(r#""principal":"alice""#), "{log}");
    assert!(!log.contains(ALICE_TOKEN) && !log.contains(BOB_TOKEN));
}

#[test]
fn tokens_file_readable_by_others_is_refused() {
    let dir = scratch_dir("tokens-mode");
    let path = tokens_file(&dir, 0o644);
    let out = rexecd_refuses(&[
        "--listen",
        "127.0.0.1:0",
        "--tokens-file",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("group or others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no readiness line");
}

#[test]
fn bad_tokens_file_line_is_a_clear_error() {
    let dir = scratch_dir("tokens-bad");
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("alice {ALICE_TOKEN}\nbob {BOB_TOKEN} extra-word\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = rexecd_refuses(&["--tokens-file", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("NAME TOKEN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(BOB_TOKEN),
        "the error shows a token: {stderr}"
    );
}

#[test]
fn non_loopback_needs_authentication() {
    let out = rexecd_refuses(&["--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--tokens-file") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let dir = scratch_dir("remote");
    let tokens = tokens_file(&dir, 0o600);
    let daemon = Daemon::start_with(&[
        "--listen",
        "0.0.0.0:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    assert!(daemon.addr.starts_with("0.0.0.0:"), "{}", daemon.addr);
}

#[test]
fn tls_needs_the_ca_and_serves_with_it() {
    let dir = scratch_dir("tls");
    let pki = Pki::new(&dir);
    let daemon = pki.daemon(&[]);
    let https = format!("https://{}", daemon.addr);
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());

    let without_ca = output_within(rexec_at(&https).args(["--", &touch]), b"", LIMIT);
    assert_eq!(without_ca.status.code(), Some(255));
    assert!(!marker.exists(), "ran over an unverified server");

    let plaintext = output_within(rexec(&daemon).args(["--", &touch]), b"", LIMIT);
    assert_eq!(plaintext.status.code(), Some(255));
    assert!(!marker.exists());

    let with_ca = output_within(
        rexec_at(&https)
            .arg("--ca")
            .arg(&pki.ca_cert)
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(with_ca.status.code(), Some(0), "{}", text(&with_ca.stderr));
    assert!(marker.exists());

    // A bare host:port with --ca means TLS; the server name can be overridden.
    let named = output_within(
        rexec(&daemon).arg("--ca").arg(&pki.ca_cert).args([
            "--tls-server-name",
            "localhost",
            "--",
            "echo named",
        ]),
        b"",
        LIMIT,
    );
    assert_eq!(text(&named.stdout), "named\n", "{}", text(&named.stderr));
    let wrong_name = output_within(
        rexec(&daemon).arg("--ca").arg(&pki.ca_cert).args([
            "--tls-server-name",
            "elsewhere.example",
            "--",
            "true",
        ]),
        b"",
        LIMIT,
    );
    assert_eq!(wrong_name.status.code(), Some(255));
}

#[test]
fn mtls_requires_a_known_client_certificate_and_audits_its_name() {
    let dir = scratch_dir("mtls");
    let pki = Pki::new(&dir);
    let audit = dir.join("audit.log");
    let daemon = pki.daemon(&[
        "--tls-client-ca",
        pki.ca_cert.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let https = format!("https://{}", daemon.addr);
    let base = |command: &mut Command| {
        command.arg("--ca").arg(&pki.ca_cert);
    };

    let mut no_cert = rexec_at(&https);
    base(&mut no_cert);
    let out = output_within(no_cert.args(["--", &touch]), b"", LIMIT);
    assert_eq!(out.status.code(), Some(255));
    assert!(!marker.exists(), "ran without a client certificate");

    let (stranger_cert, stranger_key) = pki.client("mallory", true);
    let mut stranger = rexec_at(&https);
    base(&mut stranger);
    let out = output_within(
        stranger
            .arg("--cert")
            .arg(&stranger_cert)
            .arg("--key")
            .arg(&stranger_key)
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        !marker.exists(),
        "ran with a certificate from an unknown CA"
    );

    let (cert, key) = pki.client("alice", false);
    let mut alice = rexec_at(&https);
    base(&mut alice);
    let out = output_within(
        alice
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--", &touch]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["principal"], "alice");
    assert_eq!(lines[0]["command"], touch.as_str());
}

#[test]
fn audit_line_has_every_field_and_no_secret() {
    let dir = scratch_dir("audit");
    let audit = dir.join("audit.log");
    let daemon = Daemon::start_with(&[
        "--tokens-file",
        tokens_file(&dir, 0o600).to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let out = output_within(
        rexec(&daemon).env("REXEC_TOKEN", ALICE_TOKEN).args([
            "--cwd",
            "/tmp",
            "--",
            "cat; echo err >&2; exit 3",
        ]),
        b"STDIN-SECRET-42",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let argv = output_within(
        rexec(&daemon).env("REXEC_TOKEN", ALICE_TOKEN).args([
            "-n",
            "--no-shell",
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ]),
        b"",
        LIMIT,
    );
    assert_eq!(argv.status.code(), Some(128 + 15));

    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = &lines[0];
    for field in [
        "time",
        "exec_id",
        "peer",
        "principal",
        "listener",
        "command",
        "cwd",
        "pid",
        "exit_code",
        "timed_out",
        "stdout_bytes",
        "stderr_bytes",
        "duration_ms",
    ] {
        assert!(line.get(field).is_some(), "no {field} in {line}");
    }
    assert_eq!(line["principal"], "alice");
    assert_eq!(line["listener"], "grpc");
    assert_eq!(line["cwd"], "/tmp");
    assert_eq!(line["exit_code"], 3);
    assert_eq!(line["timed_out"], false);
    assert_eq!(line["stdout_bytes"], 15);
    assert_eq!(line["stderr_bytes"], 4);
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["pid"].as_u64().unwrap() > 0);
    assert!(line["time"].as_f64().unwrap() > 1.6e9);
    assert_eq!(
        lines[1]["argv"],
        serde_json::json!(["sh", "-c", "kill -TERM $$"])
    );
    assert_eq!(lines[1]["signal"], "TERM");

    let raw = std::fs::read_to_string(&audit).unwrap();
    assert!(!raw.contains(ALICE_TOKEN), "token in the audit log");
    assert!(!raw.contains("STDIN-SECRET"), "stdin in the audit log");
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !daemon.log_text().contains(r#""audit":"exec""#),
        "audit went to stderr too"
    );
}

async fn connect(daemon: &Daemon) -> Client {
    Client::connect(&daemon.addr, &ClientOptions::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_resource_exhausted_at_once() {
    let daemon = Daemon::start_with(&["--max-concurrent", "1"]);
    let mut client = connect(&daemon).await;
    let mut running = client
        .exec(rexec::client::Command::shell("sleep 30"))
        .await
        .unwrap();
    assert!(matches!(
        running.next().await.unwrap(),
        Some(Event::Started { .. })
    ));

    let asked = Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        client.output(rexec::client::Command::shell("true")),
    )
    .await
    .expect("the second exec was queued instead of refused");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    let error = refused.expect_err("a second exec ran past --max-concurrent 1");
    assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
    assert!(error.to_string().contains("--max-concurrent"), "{error}");

    // Cancelling the first frees its slot once its group is reaped.
    drop(running);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.output(rexec::client::Command::shell("true")).await {
            Ok(output) => {
                assert_eq!(output.status.code, Some(0));
                break;
            }
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the slot was never released: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_resource_exhausted_and_runs_nothing() {
    let dir = scratch_dir("oversized");
    let daemon = Daemon::start_with(&["--max-request-size", "4KiB"]);
    let marker = dir.join("ran");
    let mut client = connect(&daemon).await;
    let command =
        rexec::client::Command::shell(format!("cat >/dev/null; touch {}", marker.display()))
            .stdin(vec![b'x'; 64 * 1024]);
    let error = client
        .output(command)
        .await
        .expect_err("accepted 64 KiB past a 4 KiB limit");
    assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
    assert!(!marker.exists());

    // Under the limit it runs; an oversized environment is refused by name.
    let small = client
        .output(rexec::client::Command::shell("cat").stdin(vec![b'y'; 1024]))
        .await
        .unwrap();
    assert_eq!(small.stdout.len(), 1024);
    let daemon = Daemon::start();
    let mut client = connect(&daemon).await;
    let error = client
        .output(rexec::client::Command::shell("true").env("BIG", "z".repeat(200 * 1024)))
        .await
        .expect_err("an environment variable over the kernel's limit");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(error.to_string().contains("BIG"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_truncates_and_kills_the_group() {
    let daemon = Daemon::start_with(&["--max-output", "100KiB", "--kill-grace", "1s"]);
    let mut client = connect(&daemon).await;
    let started = Instant::now();
    let output = client
        .output(rexec::client::Command::shell(
            "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2; sleep 30",
        ))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not killed: {:?}",
        started.elapsed()
    );
    assert_eq!(output.stdout.len() + output.stderr.len(), 100 * 1024);
    assert!(output.status.truncated);
    assert_eq!(
        output.status.signal.as_deref(),
        Some("TERM"),
        "{:?}",
        output.status
    );
    assert_eq!(
        output.status.stdout_bytes + output.status.stderr_bytes,
        100 * 1024
    );

    let under = client
        .output(rexec::client::Command::shell("head -c 1000 /dev/zero"))
        .await
        .unwrap();
    assert_eq!(under.stdout.len(), 1000);
    assert!(!under.status.truncated);
    assert_eq!(under.status.code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let daemon = Daemon::start_with(&["--max-connections", "1"]);
    let mut first = connect(&daemon).await;
    let mut running = first
        .exec(rexec::client::Command::shell("sleep 30"))
        .await
        .unwrap();
    assert!(matches!(
        running.next().await.unwrap(),
        Some(Event::Started { .. })
    ));
    let second = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = Client::connect(&daemon.addr, &ClientOptions::default()).await?;
        client.output(rexec::client::Command::shell("true")).await
    })
    .await
    .expect("a connection past the limit hung");
    assert!(
        second.is_err(),
        "a second connection was served past --max-connections 1"
    );
    drop(running);
    let output = first
        .output(rexec::client::Command::shell("echo still"))
        .await
        .unwrap();
    assert_eq!(output.stdout, b"still\n");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn local(command: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", command])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_children_get_the_users_ids_groups_and_home() {
    if !is_root() {
        eprintln!("skipped: --run-as needs the tests to run as root");
        return;
    }
    let (uid, gid, groups) = (
        local("id -u nobody"),
        local("id -g nobody"),
        local("id -G nobody"),
    );
    assert!(!uid.is_empty(), "no user nobody on this machine");
    let home = local("getent passwd nobody | cut -d: -f6");
    let daemon = Daemon::start_with(&["--run-as", "nobody"]);
    let mut client = connect(&daemon).await;
    let output = client
        .output(rexec::client::Command::shell(
            "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; pwd",
        ))
        .await
        .unwrap();
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let expected_cwd = if Path::new(&home).is_dir() {
        home.as_str()
    } else {
        "/"
    };
    assert_eq!(
        lines,
        [
            uid.as_str(),
            gid.as_str(),
            groups.as_str(),
            &format!("{home} nobody nobody"),
            expected_cwd
        ],
        "stderr: {}",
        text(&output.stderr)
    );
    // The daemon itself stays root.
    assert_eq!(local(&format!("stat -c %u /proc/{}", daemon.pid())), "0");

    // The pty path drops privileges too.
    let (input, mut events) = client
        .session(rexec::client::Command::shell("id -u").tty(24, 80))
        .await
        .unwrap();
    drop(input);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await.unwrap() {
        if let Event::Stdout(bytes) = event {
            seen.extend_from_slice(&bytes);
        }
    }
    assert_eq!(text(&seen).trim(), uid);

    let refused = rexecd_refuses(&["--run-as", "no-such-user-rexec"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("no such user"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn cli_rejects_a_token_with_a_name() {
    let daemon = Daemon::start();
    let dir = scratch_dir("cli-token");
    let out = output_within(
        rexec(&daemon)
            .arg("--token-file")
            .arg(token_file(&dir, &format!("alice {ALICE_TOKEN}")))
            .args(["--", "true"]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("one word"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tls_failures_read_as_words_on_both_ends() {
    let dir = scratch_dir("tls-words");
    let pki = Pki::new(&dir);
    let daemon = pki.daemon(&["--tls-client-ca", pki.ca_cert.to_str().unwrap()]);
    let https = format!("https://{}", daemon.addr);

    let no_cert = output_within(
        rexec_at(&https)
            .arg("--ca")
            .arg(&pki.ca_cert)
            .args(["--", "true"]),
        b"",
        LIMIT,
    );
    assert_eq!(no_cert.status.code(), Some(255));
    assert!(
        text(&no_cert.stderr).contains("server requires a client certificate"),
        "{}",
        text(&no_cert.stderr)
    );
    let (stranger_ca, _) = certificate_authority("another CA");
    let other_ca = write(&dir, "other-ca.pem", &stranger_ca);
    let unknown = output_within(
        rexec_at(&https)
            .arg("--ca")
            .arg(&other_ca)
            .args(["--", "true"]),
        b"",
        LIMIT,
    );
    assert!(
        text(&unknown.stderr).contains("unknown issuer"),
        "{}",
        text(&unknown.stderr)
    );
    assert!(
        !text(&unknown.stderr).contains("Other("),
        "{}",
        text(&unknown.stderr)
    );
    let logged = common::eventually(LIMIT, || {
        let log = daemon.log_text();
        log.contains("refused TLS handshake") && log.contains("sent no certificate")
    });
    assert!(logged, "{}", daemon.log_text());

    // A server certificate made as a CA (basicConstraints CA:TRUE).
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    let ca_leaf = write(&dir, "ca-leaf.pem", &cert.pem());
    let ca_leaf_key = write(&dir, "ca-leaf-key.pem", &key.serialize_pem());
    let daemon = Daemon::start_with(&[
        "--tls-cert",
        ca_leaf.to_str().unwrap(),
        "--tls-key",
        ca_leaf_key.to_str().unwrap(),
    ]);
    let out = output_within(
        rexec_at(&format!("https://{}", daemon.addr))
            .arg("--ca")
            .arg(&pki.ca_cert)
            .args(["--", "true"]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    for words in [
        "certificate is a CA certificate",
        "not a server certificate",
        "basicConstraints=critical,CA:FALSE",
    ] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }
}
