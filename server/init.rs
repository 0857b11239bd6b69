//! `rexecd init DIR`: a CA, a server certificate, a client certificate for
//! mTLS, a token and a `rexecd.toml` that uses them, made in one step with
//! rcgen, so TLS works the first time (openssl's usual one-liner makes a
//! CA:TRUE server certificate and a v1 client certificate, both refused by
//! rustls). It prints the `rexec` command line that works against it.

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Principal of the generated token and client certificate (the audit log's name).
const CLIENT_NAME: &str = "admin";

/// Create DIR with a CA, a server certificate, an mTLS client certificate,
/// a token and DIR/rexecd.toml using them, then print the rexec command line
/// that reaches the server. DIR must not exist; DIR/client/ is what a client
/// host needs.
#[derive(Debug, Parser)]
#[command(name = "rexecd init", bin_name = "rexecd init", version)]
pub struct InitArgs {
    /// Directory to create (mode 0700); an existing one is refused.
    pub dir: PathBuf,

    /// A name clients dial, DNS name or IP address, put in the server
    /// certificate; repeatable. Default: this host's name, localhost,
    /// 127.0.0.1 and ::1. The first is the one in the printed command line.
    #[arg(long = "name", value_name = "HOST")]
    pub names: Vec<String>,

    /// Address the generated rexecd.toml listens on (a flag given to rexecd
    /// wins, e.g. --listen 127.0.0.1:0).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
}

/// `rexecd init ...`: `words` are the process arguments after `init`.
pub fn main(words: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = InitArgs::parse_from(std::iter::once(OsString::from("rexecd init")).chain(words));
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("rexecd init: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Io(message)) => {
            eprintln!("rexecd init: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The arguments cannot work (exit 2): DIR exists, a name is not one.
    Usage(String),
    /// Something failed while making the files (exit 1); DIR is removed.
    Io(String),
}

fn run(args: &InitArgs) -> Result<(), Failure> {
    let names = if args.names.is_empty() {
        default_names()
    } else {
        args.names.clone()
    };
    // Check the names before anything is made: a bad one leaves no DIR.
    if let Some(bad) = names.iter().find(|name| !is_host_name(name)) {
        return Err(Failure::Usage(format!(
            "--name '{bad}' is neither a DNS name nor an IP address"
        )));
    }
    let server_params = CertificateParams::new(names.clone())
        .map_err(|e| Failure::Usage(format!("the names cannot go in a certificate: {e}")))?;
    if args.dir.symlink_metadata().is_ok() {
        return Err(Failure::Usage(format!(
            "{} already exists; refusing to overwrite it (name a new directory)",
            args.dir.display()
        )));
    }
    if let Some(parent) = args.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    // create, not create_all: two inits racing for one DIR cannot both win.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&args.dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::Usage(format!(
                "{} already exists; refusing to overwrite it (name a new directory)",
                args.dir.display()
            )),
            _ => Failure::Io(format!("cannot create {}: {e}", args.dir.display())),
        })?;
    let made = std::fs::canonicalize(&args.dir)
        .map_err(|e| e.to_string())
        .and_then(|dir| make_files(&dir, &names, server_params, args.listen).map(|()| dir));
    match made {
        Ok(dir) => {
            print_usage(&dir, &names[0], args.listen.port());
            Ok(())
        }
        Err(message) => {
            // Half a setup is worse than none: a rerun must not find DIR.
            let _ = std::fs::remove_dir_all(&args.dir);
            Err(Failure::Io(message))
        }
    }
}

/// An IP address, or dot-separated labels of letters, digits and inner
/// hyphens (RFC 1123), as a TLS client compares them.
fn is_host_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let label = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// This host's name, then loopback by name and address.
fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names
}

fn make_files(
    dir: &Path,
    names: &[String],
    mut server: CertificateParams,
    listen: SocketAddr,
) -> Result<(), String> {
    fn failed(what: &'static str) -> impl Fn(rcgen::Error) -> String {
        move |e| format!("cannot make the {what}: {e}")
    }
    let year = this_year();
    // January 1st of last year: a client whose clock is a little behind
    // still accepts the certificates.
    let valid_from = rcgen::date_time_ymd(year - 1, 1, 1);

    let mut ca = CertificateParams::default();
    ca.distinguished_name = common_name("rexec CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = valid_from;
    ca.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    let ca_key = KeyPair::generate().map_err(failed("CA key"))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(failed("CA certificate"))?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |params: &mut CertificateParams, usage: ExtendedKeyUsagePurpose| {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = valid_from;
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    };
    server.distinguished_name = common_name(&names[0]);
    leaf(&mut server, ExtendedKeyUsagePurpose::ServerAuth);
    let server_key = KeyPair::generate().map_err(failed("server key"))?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(failed("server certificate"))?;

    let mut client = CertificateParams::new(vec![CLIENT_NAME.to_string()])
        .map_err(failed("client certificate"))?;
    client.distinguished_name = common_name(CLIENT_NAME);
    leaf(&mut client, ExtendedKeyUsagePurpose::ClientAuth);
    let client_key = KeyPair::generate().map_err(failed("client key"))?;
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(failed("client certificate"))?;

    let token = crate::local_token::new_token()?;
    let client_dir = dir.join("client");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&client_dir)
        .map_err(|e| format!("cannot create {}: {e}", client_dir.display()))?;

    const PUBLIC: u32 = 0o644;
    const SECRET: u32 = 0o600;
    let files: [(PathBuf, String, u32); 10] = [
        (dir.join("ca.pem"), ca_pem.clone(), PUBLIC),
        (dir.join("ca-key.pem"), ca_key_pem, SECRET),
        (dir.join("server.pem"), server_cert.pem(), PUBLIC),
        (
            dir.join("server-key.pem"),
            server_key.serialize_pem(),
            SECRET,
        ),
        (
            dir.join("tokens"),
            format!("{CLIENT_NAME} {token}\n"),
            SECRET,
        ),
        (client_dir.join("ca.pem"), ca_pem, PUBLIC),
        (client_dir.join("client.pem"), client_cert.pem(), PUBLIC),
        (
            client_dir.join("client-key.pem"),
            client_key.serialize_pem(),
            SECRET,
        ),
        (client_dir.join("token"), format!("{token}\n"), SECRET),
        (dir.join("rexecd.toml"), config_text(dir, listen), PUBLIC),
    ];
    for (path, text, mode) in &files {
        write_new(path, text, *mode)?;
    }
    Ok(())
}

fn common_name(name: &str) -> DistinguishedName {
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    subject
}

/// The current year, give or take a day at New Year (hence last year's start).
fn this_year() -> i32 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    1970 + (days as f64 / 365.2425) as i32
}

fn config_text(dir: &Path, listen: SocketAddr) -> String {
    let path = |name: &str| toml_string(&dir.join(name));
    format!(
        "# Made by `rexecd init`: TLS, mTLS with the client certificate in client/,\n\
         # and the bearer token in client/token. Start with\n\
         #   rexecd --config {config}\n\
         # (a flag given on the command line wins, e.g. --listen 127.0.0.1:0).\n\
         listen = \"{listen}\"\n\
         tls-cert = {cert}\n\
         tls-key = {key}\n\
         tls-client-ca = {ca}\n\
         tokens-file = {tokens}\n",
        config = dir.join("rexecd.toml").display(),
        cert = path("server.pem"),
        key = path("server-key.pem"),
        ca = path("ca.pem"),
        tokens = path("tokens"),
    )
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn print_usage(dir: &Path, host: &str, port: u16) {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    };
    let client = dir.join("client");
    let file = |name: &str| shell_word(&client.join(name).display().to_string());
    println!(
        "Made {dir}: a CA, a server certificate, a client certificate and a token.\n\
         Keep {ca_key} (the CA's key) offline or delete it; copy {client_dir}/ to client hosts.\n\
         Start the server:\n\
         \x20 rexecd --config {config}\n\
         Run a command on it:\n\
         \x20 rexec --addr https://{host}:{port} --ca {ca} --cert {cert} --key {key} --token-file {token} -- uptime",
        dir = dir.display(),
        ca_key = dir.join("ca-key.pem").display(),
        client_dir = client.display(),
        config = shell_word(&dir.join("rexecd.toml").display().to_string()),
        ca = file("ca.pem"),
        cert = file("client.pem"),
        key = file("client-key.pem"),
        token = file("token"),
    );
}

/// A word the shell reads back as itself.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked() {
        for good in ["localhost", "web-1.example.com", "10.0.0.5", "::1"] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in ["", "not a host!", "-x.com", "a..b", "x_y"] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/tmp/a-b/ca.pem"), "/tmp/a-b/ca.pem");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
