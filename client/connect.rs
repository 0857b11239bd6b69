//! The connection flags every subcommand shares (`rexec`, `rexec bench`):
//! where rexecd is and how to prove who we are to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rexec::client::ClientOptions;

use rexec::ending::Ending;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server: HOST[:PORT] (port 50051), or https://HOST[:PORT] for TLS
    /// (http:// for plaintext). With --legacy, the legacy listener's HOST:PORT.
    #[arg(long, env = "REXEC_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,

    /// Give up connecting after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = rexec::units::parse_duration)]
    pub connect_timeout: Duration,

    /// Bearer token for `rexecd --tokens-file`, read from FILE (else
    /// $REXEC_TOKEN; a loopback --addr gets this user's local token by itself).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate (PEM) that signed the server's; implies TLS (without
    /// it, https:// needs a certificate the system trusts).
    #[arg(long, value_name = "FILE", env = "REXEC_CA")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that require mTLS; needs --key.
    #[arg(long, value_name = "FILE", env = "REXEC_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", env = "REXEC_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Name the server's certificate must carry, when --addr is an IP or
    /// another name.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl ConnectArgs {
    /// The client options these flags say: the token and TLS files read once here.
    pub fn options(&self) -> Result<ClientOptions, Ending> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Ending::failed(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let token = match &self.token_file {
            Some(path) => {
                let text = String::from_utf8(read("--token-file", path)?).map_err(|_| {
                    Ending::failed(format!("--token-file {} is not text", path.display()))
                })?;
                Some(text)
            }
            None => std::env::var("REXEC_TOKEN").ok(),
        };
        let token = token.map(|t| t.trim().to_string());
        if token
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err(Ending::failed(
                "the token (--token-file or REXEC_TOKEN) must be one word, without NAME",
            ));
        }
        let identity_pem = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((read("--cert", cert)?, read("--key", key)?)),
            _ => None,
        };
        Ok(ClientOptions {
            connect_timeout: self.connect_timeout,
            token,
            local_token: true,
            ca_pem: self.ca.as_deref().map(|ca| read("--ca", ca)).transpose()?,
            identity_pem,
            tls_server_name: self.tls_server_name.clone(),
        })
    }
}
