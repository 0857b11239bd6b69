//! Why a TLS server dropped us. In TLS 1.3 a server checks the client's
//! certificate after the client has finished its handshake, so a refusal
//! reaches tonic only as "transport error" (a broken pipe on its first
//! write). After such a failure one more handshake, made here, reads the
//! server's alert ("certificate required", "unknown CA") and puts it in words.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::tls_words::{self, Side};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP/2 preface and an empty SETTINGS frame: what makes the server
/// read the end of our handshake and answer it.
const HTTP2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What the probe needs to redo the client's handshake.
#[derive(Clone)]
pub struct TlsProbe {
    pub authority: String,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsProbe {
    /// The server's refusal in words, or `None` when the handshake is fine.
    pub async fn run(&self) -> Option<String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.config()?));
        let name = ServerName::try_from(self.server_name.clone()).ok()?;
        let tcp = tokio::time::timeout(
            PROBE_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .ok()?
        .ok()?;
        let mut tls = match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp))
            .await
            .ok()?
        {
            Ok(tls) => tls,
            Err(e) => return tls_words::find(&e, Side::Client),
        };
        if let Err(e) = tls.write_all(HTTP2_START).await {
            return tls_words::find(&e, Side::Client);
        }
        let mut buffer = [0u8; 512];
        match tokio::time::timeout(PROBE_TIMEOUT, tls.read(&mut buffer)).await {
            Ok(Err(e)) => tls_words::find(&e, Side::Client),
            _ => None,
        }
    }

    fn config(&self) -> Option<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(certificate.ok()?).ok()?;
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
        let mut config = match &self.identity_pem {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                builder
                    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key).ok()?)
                    .ok()?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Some(config)
    }
}
