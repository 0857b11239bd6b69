//! TLS failures in words, for the client's message and rexecd's log:
//! "server requires a client certificate", not
//! `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`.

use tokio_rustls::rustls::{AlertDescription, CertificateError, Error};

/// Which end is describing the failure: the peer's certificate is the
/// server's for a client, the client's for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// The first TLS error in `error`'s chain, in words.
pub fn find(error: &(dyn std::error::Error + 'static), side: Side) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<Error>() {
            return Some(describe(tls, side));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
        {
            return Some(describe(tls, side));
        }
        current = error.source();
    }
    None
}

pub fn describe(error: &Error, side: Side) -> String {
    let (peer, peer_cert) = match side {
        Side::Client => ("server", "the server's certificate"),
        Side::Server => ("client", "the client certificate"),
    };
    match error {
        Error::NoCertificatesPresented => match side {
            Side::Client => "the server sent no certificate".into(),
            Side::Server => "the client sent no certificate (--tls-client-ca requires one)".into(),
        },
        Error::InvalidCertificate(certificate) => {
            format!("{peer_cert}: {}", certificate_words(certificate, side))
        }
        Error::AlertReceived(alert) => alert_words(*alert, side),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            format!("the {peer} does not speak TLS (plaintext on one end, https on the other?)")
        }
        Error::PeerIncompatible(why) => format!("the {peer}'s TLS is incompatible: {why:?}"),
        other => other.to_string(),
    }
}

fn certificate_words(error: &CertificateError, side: Side) -> String {
    let fix_ca = match side {
        Side::Client => "pass --ca with the CA that signed it",
        Side::Server => "it is not signed by --tls-client-ca",
    };
    match error {
        CertificateError::UnknownIssuer => format!("unknown issuer ({fix_ca})"),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet (check the clocks)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "not valid for the name connected to (rexec --tls-server-name NAME)".into()
        }
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::Revoked => "revoked".into(),
        other => {
            let text = format!("{other:?}");
            if text.contains("CaUsedAsEndEntity") {
                let role = match side {
                    Side::Client => "server",
                    Side::Server => "client",
                };
                format!(
                    "certificate is a CA certificate, not a {role} certificate — make the leaf \
                     with basicConstraints CA:FALSE"
                )
            } else if text.contains("RequiredEkuNotFound") || text.contains("InvalidPurpose") {
                "certificate is not for this purpose (extendedKeyUsage)".into()
            } else {
                text
            }
        }
    }
}

fn alert_words(alert: AlertDescription, side: Side) -> String {
    match (side, alert) {
        (Side::Client, AlertDescription::CertificateRequired)
        | (Side::Client, AlertDescription::HandshakeFailure) => {
            "server requires a client certificate (rexec --cert FILE --key FILE)".into()
        }
        (Side::Client, AlertDescription::UnknownCA) => {
            "the server refused our client certificate: unknown issuer".into()
        }
        (Side::Client, AlertDescription::BadCertificate)
        | (Side::Client, AlertDescription::UnsupportedCertificate)
        | (Side::Client, AlertDescription::CertificateUnknown) => {
            "the server refused our client certificate (bad certificate)".into()
        }
        (Side::Client, AlertDescription::CertificateExpired) => {
            "the server refused our client certificate: expired".into()
        }
        (Side::Server, AlertDescription::UnknownCA) => {
            "the client does not trust this server's certificate: unknown issuer".into()
        }
        (Side::Server, AlertDescription::BadCertificate)
        | (Side::Server, AlertDescription::CertificateUnknown)
        | (Side::Server, AlertDescription::UnsupportedCertificate) => {
            "the client refused this server's certificate".into()
        }
        (_, alert) => format!("the peer ended the handshake: {alert:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_failures_read_as_words() {
        assert_eq!(
            describe(
                &Error::AlertReceived(AlertDescription::CertificateRequired),
                Side::Client
            ),
            "server requires a client certificate (rexec --cert FILE --key FILE)"
        );
        let unknown = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe(&unknown, Side::Client).contains("unknown issuer"));
        assert!(describe(&unknown, Side::Server).contains("--tls-client-ca"));
        assert!(
            describe(&Error::NoCertificatesPresented, Side::Server).contains("sent no certificate")
        );
    }
}
