//! Messages a person can act on: the real `rexec` CLI driven at the wrong
//! kind of port, or at a server whose certificate is wrong, says so in one
//! line with the fix, and exits 255. Certificates are made with rcgen and,
//! where a user's mistake comes from the openssl command line, with openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXEC, REXECD, output_within, scratch_dir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

const LIMIT: Duration = Duration::from_secs(20);

/// The CLI at `addr` with `args`, no credentials from the environment.
fn rexec_at(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(REXEC);
    command
        .args(["--addr", addr])
        .args(args)
        .env_remove("REXEC_TOKEN")
        .env_remove("REXEC_CA")
        .env_remove("REXEC_CERT")
        .env_remove("REXEC_KEY");
    command
}

/// Runs a CLI call that must fail as a connection failure: exit 255 and
/// exactly one `rexec: ` line on stderr, which is returned.
fn one_line_failure(mut command: Command) -> String {
    let output = output_within(&mut command, b"", LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(255), "{command:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("rexec: "), "{stderr}");
    assert!(!stderr.contains("transport error"), "{stderr}");
    stderr
}

fn assert_says(message: &str, words: &[&str]) {
    for word in words {
        assert!(message.contains(word), "{word:?} missing from: {message}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A CA made with rcgen, and the server certificates it signs.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_cert: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch_dir(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{tag} CA"));
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_cert = write(&dir, "ca.pem", &cert.pem());
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca_cert,
        }
    }

    /// A server certificate for localhost and 127.0.0.1; `adjust` may
    /// change it (e.g. make it expired). Returns (cert, key) paths.
    fn server(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            write(&self.dir, &format!("{name}.pem"), &cert.pem()),
            write(&self.dir, &format!("{name}-key.pem"), &key.serialize_pem()),
        )
    }
}

/// rexecd serving TLS with `cert`, no authentication (these tests are about
/// reaching it, not about credentials).
fn tls_daemon(cert: &Path, key: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--insecure-no-auth",
        "--tls-cert",
        path(cert),
        "--tls-key",
        path(key),
    ];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

/// rexecd with plaintext gRPC and the legacy listener.
fn plain_daemon() -> (Daemon, String) {
    let daemon = Daemon::start_with(&[
        "--insecure-no-auth",
        "--legacy-listen",
        "127.0.0.1:0",
        "--legacy-allow-anonymous",
    ]);
    let legacy = daemon.legacy_addr.clone().expect("legacy address");
    (daemon, legacy)
}

#[test]
fn plaintext_grpc_at_a_tls_port_suggests_https_and_ca() {
    let pki = Pki::new("msg-tls-port");
    let (cert, key) = pki.server("server", |_| {});
    let daemon = tls_daemon(&cert, &key, &[]);
    let message = one_line_failure(rexec_at(&daemon.addr, &["--", "true"]));
    let https = format!("https://{}", daemon.addr);
    assert_says(&message, &[&daemon.addr, &https, "--ca", "TLS"]);
    // Following the advice works.
    let mut fixed = rexec_at(&https, &["--ca", path(&pki.ca_cert), "--", "echo", "ok"]);
    let output = output_within(&mut fixed, b"", LIMIT);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
}

#[test]
fn grpc_at_the_legacy_port_suggests_legacy() {
    let (_daemon, legacy) = plain_daemon();
    let message = one_line_failure(rexec_at(&legacy, &["--", "true"]));
    assert_says(&message, &[&legacy, "legacy listener", "--legacy"]);
}

#[test]
fn legacy_at_a_grpc_port_says_drop_legacy() {
    let (daemon, _legacy) = plain_daemon();
    let message = one_line_failure(rexec_at(&daemon.addr, &["--legacy", "--", "true"]));
    assert_says(&message, &[&daemon.addr, "HTTP/2", "drop --legacy"]);
    assert!(!message.contains("68288512"), "{message}");

    let pki = Pki::new("msg-legacy-tls");
    let (cert, key) = pki.server("server", |_| {});
    let tls = tls_daemon(&cert, &key, &[]);
    let message = one_line_failure(rexec_at(&tls.addr, &["--legacy", "--", "true"]));
    let https = format!("https://{}", tls.addr);
    assert_says(&message, &[&tls.addr, "TLS", "drop --legacy", &https]);
}

#[test]
fn tls_at_a_plaintext_port_says_the_server_does_not_speak_tls() {
    let (daemon, legacy) = plain_daemon();
    let pki = Pki::new("msg-plain");
    let ca = path(&pki.ca_cert);
    let https = format!("https://{}", daemon.addr);
    let message = one_line_failure(rexec_at(&https, &["--ca", ca, "--", "true"]));
    assert_says(
        &message,
        &[&daemon.addr, "does not speak TLS", "drop https://", "--ca"],
    );
    // A bare address with --ca means TLS too.
    let message = one_line_failure(rexec_at(&daemon.addr, &["--ca", ca, "--", "true"]));
    assert_says(&message, &[&daemon.addr, "does not speak TLS"]);
    // The legacy port is told apart from plaintext gRPC.
    let https = format!("https://{legacy}");
    let message = one_line_failure(rexec_at(&https, &["--ca", ca, "--", "true"]));
    assert_says(&message, &[&legacy, "does not speak TLS", "--legacy"]);
}

#[test]
fn nothing_listening_names_the_address_with_its_port() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let message = one_line_failure(rexec_at(&addr, &["--", "true"]));
    assert_says(&message, &[&addr, "connection refused"]);
    let message = one_line_failure(rexec_at(&addr, &["--legacy", "--", "true"]));
    assert_says(&message, &[&addr, "connection refused"]);
}

#[test]
fn certificate_failures_are_said_with_the_fix() {
    let pki = Pki::new("msg-certs");
    let (cert, key) = pki.server("server", |_| {});
    let daemon = tls_daemon(&cert, &key, &[]);
    let https = format!("https://{}", daemon.addr);

    let stranger = Pki::new("msg-stranger");
    let other_ca = path(&stranger.ca_cert);
    let message = one_line_failure(rexec_at(&https, &["--ca", other_ca, "--", "true"]));
    assert_says(
        &message,
        &[
            &daemon.addr,
            "the server's certificate",
            "unknown issuer",
            "--ca",
        ],
    );

    let ca = path(&pki.ca_cert);
    let renamed = [
        "--ca",
        ca,
        "--tls-server-name",
        "other.example",
        "--",
        "true",
    ];
    let message = one_line_failure(rexec_at(&https, &renamed));
    assert_says(
        &message,
        &[
            "localhost, 127.0.0.1",
            "not other.example",
            "--tls-server-name",
        ],
    );

    let (cert, key) = pki.server("expired", |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let expired = tls_daemon(&cert, &key, &[]);
    let https = format!("https://{}", expired.addr);
    let message = one_line_failure(rexec_at(&https, &["--ca", ca, "--", "true"]));
    assert_says(&message, &[&expired.addr, "expired on 2021-01-01"]);
}

/// Whether openssl can be run. Without it the openssl tests skip, except on
/// CI (`CI=true`), where a missing openssl must fail rather than hide them.
fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "openssl is needed for these tests on CI"
        );
        eprintln!("skipped: no openssl");
    }
    found
}

/// Runs a shell script in `dir`; fails the test with its output if it fails.
fn sh(dir: &Path, script: &str) {
    let output = output_within(
        Command::new("sh").args(["-ec", script]).current_dir(dir),
        b"",
        LIMIT,
    );
    assert!(
        output.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn openssl_text(cert: &Path) -> String {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", path(cert)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A CA and a version 1 server certificate it signed (`x509 -req` without
/// `-extfile`), made as a user would.
const OPENSSL_V1: &str = "
openssl req -x509 -nodes -newkey rsa:2048 -days 30 -subj /CN=ca -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -nodes -newkey rsa:2048 -subj /CN=localhost -keyout v1-key.pem -out v1.csr 2>/dev/null
openssl x509 -req -in v1.csr -CA ca.pem -CAkey ca-key.pem -set_serial 7 -days 30 -out v1.pem 2>/dev/null
";

#[test]
fn openssl_one_liner_ca_certificate_as_the_server_leaf() {
    if !have_openssl() {
        return;
    }
    let dir = scratch_dir("msg-ossl-ca");
    sh(
        &dir,
        "openssl req -x509 -nodes -newkey rsa:2048 -subj /CN=localhost \
         -keyout key.pem -out cert.pem -days 30 2>/dev/null",
    );
    let cert = dir.join("cert.pem");
    assert!(
        openssl_text(&cert).contains("CA:TRUE"),
        "the one-liner makes a CA"
    );
    let daemon = tls_daemon(&cert, &dir.join("key.pem"), &[]);
    let https = format!("https://{}", daemon.addr);
    let message = one_line_failure(rexec_at(&https, &["--ca", path(&cert), "--", "true"]));
    assert_says(
        &message,
        &[
            &daemon.addr,
            "the server's certificate",
            "CA certificate",
            "CA:FALSE",
        ],
    );
}

#[test]
fn openssl_version_1_certificates_are_named_for_whose_they_are() {
    if !have_openssl() {
        return;
    }
    let dir = scratch_dir("msg-ossl-v1");
    sh(&dir, OPENSSL_V1);
    let (v1, v1_key, ca) = (
        dir.join("v1.pem"),
        dir.join("v1-key.pem"),
        dir.join("ca.pem"),
    );
    assert!(
        openssl_text(&v1).contains("Version: 1 (0x0)"),
        "a v1 certificate"
    );

    // As rexecd's own certificate: refused at start, as --tls-cert's fault.
    let mut rexecd = Command::new(REXECD);
    rexecd.args(["--listen", "127.0.0.1:0", "--insecure-no-auth"]);
    rexecd.args(["--tls-cert", path(&v1), "--tls-key", path(&v1_key)]);
    let output = output_within(&mut rexecd, b"", LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_says(&stderr, &["--tls-cert", "version 1"]);
    assert!(!stderr.contains("peer"), "{stderr}");

    // As our own client certificate: --cert's fault, not the server's.
    let pki = Pki::new("msg-v1-client");
    let (cert, key) = pki.server("server", |_| {});
    let daemon = tls_daemon(&cert, &key, &["--tls-client-ca", path(&ca)]);
    let https = format!("https://{}", daemon.addr);
    let args = [
        "--ca",
        path(&pki.ca_cert),
        "--cert",
        path(&v1),
        "--key",
        path(&v1_key),
    ];
    let message = one_line_failure(rexec_at(&https, &[&args[..], &["--", "true"]].concat()));
    assert_says(
        &message,
        &[&daemon.addr, "--cert", "version 1", "client certificate"],
    );
    assert!(!message.contains("server's"), "{message}");

    // Shown to rexecd by another TLS client: the client's certificate.
    sh(
        &dir,
        &format!(
            "openssl s_client -connect {} -cert v1.pem -key v1-key.pem </dev/null >/dev/null 2>&1 || true",
            daemon.addr
        ),
    );
    let seen = common::eventually(LIMIT, || daemon.log_text().contains("version 1"));
    let log = daemon.log_text();
    assert!(seen, "{log}");
    assert!(
        log.contains("the client certificate: certificate is X.509 version 1"),
        "{log}"
    );

    // As the server's certificate of a TLS server that accepts it (here
    // openssl s_server, e.g. a TLS proxy in front of rexecd).
    let (mut server, addr) = openssl_server(&dir, &v1, &v1_key);
    let https = format!("https://{addr}");
    let message = one_line_failure(rexec_at(&https, &["--ca", path(&ca), "--", "true"]));
    let _ = server.kill();
    let _ = server.wait();
    assert_says(&message, &[&addr, "the server's certificate", "version 1"]);
}

/// `openssl s_server` on a free loopback port with `cert`; its address.
fn openssl_server(dir: &Path, cert: &Path, key: &Path) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new("openssl")
        .args(["s_server", "-accept", "127.0.0.1:0"])
        .args(["-cert", path(cert), "-key", path(key)])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_server");
    let stdout = child.stdout.take().expect("stdout");
    let (found, address) = std::sync::mpsc::channel();
    // Reads on after the ACCEPT line so s_server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.trim().strip_prefix("ACCEPT ") {
                let _ = found.send(addr.to_string());
            }
        }
    });
    match address.recv_timeout(LIMIT) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_server printed no ACCEPT line");
        }
    }
}

/// The first ```sh block after the README's "Certificates that work the first time".
fn readme_recipe() -> String {
    let readme = include_str!("../README.md");
    let (_, after) = readme
        .split_once("**Certificates that work the first time.**")
        .expect("README has the certificate recipe");
    let (_, block) = after.split_once("```sh\n").expect("a sh block");
    let (block, _) = block.split_once("```").expect("the block ends");
    block.to_string()
}

#[test]
fn readme_certificate_recipe_works_for_tls_and_mtls() {
    if !have_openssl() {
        return;
    }
    let dir = scratch_dir("msg-recipe");
    // The README's commands exactly as written there.
    sh(&dir, &readme_recipe());
    let server_text = openssl_text(&dir.join("server.pem"));
    assert_says(
        &server_text,
        &[
            "Version: 3",
            "CA:FALSE",
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "TLS Web Server Authentication",
        ],
    );
    let alice_text = openssl_text(&dir.join("alice.pem"));
    assert_says(
        &alice_text,
        &["Version: 3", "CA:FALSE", "TLS Web Client Authentication"],
    );

    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let daemon = Daemon::start_with(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server-key.pem"),
        "--tls-client-ca",
        &file("ca.pem"),
    ]);
    let port = daemon.addr.rsplit_once(':').unwrap().1.to_string();
    for host in ["localhost", "127.0.0.1"] {
        let addr = format!("https://{host}:{port}");
        let (ca, cert, key) = (file("ca.pem"), file("alice.pem"), file("alice-key.pem"));
        let args = [
            "--ca", &ca, "--cert", &cert, "--key", &key, "--", "echo", "ok",
        ];
        let output = output_within(&mut rexec_at(&addr, &args), b"", LIMIT);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "ok\n",
            "{addr}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(0));
    }
}
