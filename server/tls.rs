//! `--tls-cert`, `--tls-key` and `--tls-client-ca`: rustls, with the
//! handshake done here rather than inside tonic, so that a refused handshake
//! is logged with its peer and reason in words. Everything is read and
//! checked before the readiness line, so a bad file stops rexecd at start.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rexec::tls_words::{self, Side};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::connections::GrpcConnection;
use crate::rate_limited::RateLimited;

/// A client that opens a connection and never finishes its handshake gives
/// up its connection slot after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused handshakes logged one by one per interval; the rest are counted.
const LOGGED_REFUSALS: u32 = 5;

/// The server's TLS settings; with `client_ca`, every client must show a
/// certificate signed by it (mTLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(&read_pem(cert, "--tls-cert")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&read_pem(key, "--tls-key")?)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(&read_pem(ca, "--tls-client-ca")?) {
                let certificate =
                    certificate.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private_key).map_err(|e| {
        match tls_words::find_own(&e, "--tls-cert") {
            Some(words) => words,
            None => format!("invalid TLS certificate or key: {e}"),
        }
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{flag} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// TLS connections from `incoming`, each handshake in its own task so a
/// slow client holds up nobody; a refused one is logged and dropped.
pub fn handshakes<S>(
    incoming: S,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<TlsStream<GrpcConnection>>>
where
    S: Stream<Item = io::Result<GrpcConnection>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let refusals = Arc::new(Mutex::new(RateLimited::new(LOGGED_REFUSALS)));
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                () = sender.closed() => return,
            };
            let connection = match next {
                Some(Ok(connection)) => connection,
                Some(Err(e)) => {
                    if sender.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            let (acceptor, sender, refusals) = (acceptor.clone(), sender.clone(), refusals.clone());
            tokio::spawn(async move {
                let peer = connection.peer();
                let reason = match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(connection),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        tls_words::find(&e, Side::Server).unwrap_or_else(|| e.to_string())
                    }
                    Err(_) => format!("no TLS handshake within {}s", HANDSHAKE_TIMEOUT.as_secs()),
                };
                crate::metrics::get().tls_handshake_failures.inc();
                let logged = refusals.lock().unwrap_or_else(|e| e.into_inner()).hit();
                if let Some(count) = logged {
                    tracing::warn!(%peer, count, "refused TLS handshake: {reason}");
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
