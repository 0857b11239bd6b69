//! `--tls-cert`, `--tls-key` and `--tls-client-ca`: rustls through tonic.
//! Everything is read and checked before the readiness line, so a bad file
//! stops rexecd at start rather than failing every handshake later.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A client that opens a connection and never finishes its handshake gives
/// up its connection slot after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the server's TLS settings; with `client_ca`, every client must show
/// a certificate signed by it (mTLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, String> {
    let identity = Identity::from_pem(read_pem(cert, "--tls-cert")?, read_pem(key, "--tls-key")?);
    let mut config = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(ca, "--tls-client-ca")?));
    }
    // rustls parses the PEM only when the acceptor is built: do it now.
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| format!("invalid TLS certificate or key: {}", root_cause(&e)))?;
    Ok(config)
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{flag} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
