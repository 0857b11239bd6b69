//! How to reach a server: timeouts, credentials and TLS settings.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How to reach a server. Build it with `..ClientOptions::default()` so new
/// fields do not break callers.
#[derive(Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Sent as `authorization: Bearer TOKEN` with every call (`rexecd --tokens-file`).
    pub token: Option<String>,
    /// Without `token`, send this user's local token (`crate::local_token`)
    /// to a loopback address: what a default rexecd requires.
    pub local_token: bool,
    /// PEM CA certificate(s) that signed the server's certificate; without
    /// it an https:// server must have a certificate the system trusts.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for servers that require mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host (e.g. connecting by IP to a certificate for a name).
    pub tls_server_name: Option<String>,
}

impl ClientOptions {
    /// Whether a TLS setting was given: an address without a scheme then means https.
    pub(super) fn wants_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity_pem.is_some() || self.tls_server_name.is_some()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            token: None,
            local_token: true,
            ca_pem: None,
            identity_pem: None,
            tls_server_name: None,
        }
    }
}

// By hand, so that a token never lands in a log line through `{:?}`.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("local_token", &self.local_token)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("identity_pem", &self.identity_pem.is_some())
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

/// rustls settings: the given CA, else the system's roots; the client
/// identity for mTLS; the server name to check.
pub(super) fn tls_config(options: &ClientOptions) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    config = match &options.ca_pem {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &options.identity_pem {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &options.tls_server_name {
        config = config.domain_name(name.clone());
    }
    config
}
