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
            format!(
                "{peer_cert}: {}",
                certificate_words(certificate, peer, side)
            )
        }
        Error::AlertReceived(alert) => alert_words(*alert, side),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            format!("the {peer} does not speak TLS (plaintext on one end, https on the other?)")
        }
        Error::PeerIncompatible(why) => format!("the {peer}'s TLS is incompatible: {why:?}"),
        other => other.to_string(),
    }
}

/// The first TLS error in `error`'s chain about this end's own certificate
/// (`flag` names it: `--cert`, `--tls-cert`), found when it is loaded: not
/// the peer's, whatever rustls's "invalid peer certificate" says.
pub fn find_own(error: &(dyn std::error::Error + 'static), flag: &str) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(Error::InvalidCertificate(certificate)) = error.downcast_ref::<Error>() {
            return Some(own_certificate_words(certificate, flag));
        }
        current = error.source();
    }
    None
}

/// This end's own certificate, refused as it was loaded.
pub fn own_certificate_words(error: &CertificateError, flag: &str) -> String {
    let role = if flag == "--cert" { "client" } else { "server" };
    format!("{flag}: {}", certificate_words(error, role, Side::Client))
}

/// What is wrong with a certificate for `role` ("server", "client"), with
/// the fix; `side` says who checked it, for which flag fixes an issuer.
fn certificate_words(error: &CertificateError, role: &str, side: Side) -> String {
    let fix_ca = match side {
        Side::Client => "pass --ca with the CA that signed it",
        Side::Server => "it is not signed by --tls-client-ca",
    };
    match error {
        CertificateError::UnknownIssuer => format!("unknown issuer ({fix_ca})"),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!(
                "expired on {} (renew it, or check the clocks)",
                date(*not_after)
            )
        }
        CertificateError::Expired => "expired (renew it, or check the clocks)".into(),
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!("not valid until {} (check the clocks)", date(*not_before))
        }
        CertificateError::NotValidYet => "not valid yet (check the clocks)".into(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = expected.to_str();
            let presented = presented
                .iter()
                .map(|name| bare_name(name))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "it is for {presented}, not {expected} (connect to one of those names, \
                 pass --tls-server-name NAME, or add {expected} to its subjectAltName)"
            )
        }
        CertificateError::NotValidForName => {
            "not valid for the name connected to (rexec --tls-server-name NAME)".into()
        }
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::BadEncoding => "not a valid X.509 certificate".into(),
        CertificateError::Revoked => "revoked".into(),
        other => {
            let text = format!("{other:?}");
            if text.contains("CaUsedAsEndEntity") {
                format!(
                    "certificate is a CA certificate (basicConstraints CA:TRUE, as `openssl req \
                     -x509` makes), not a {role} certificate: sign a {role} certificate with \
                     basicConstraints=critical,CA:FALSE by a CA (README, \"Certificates that \
                     work the first time\")"
                )
            } else if text.contains("UnsupportedCertVersion") {
                format!(
                    "certificate is X.509 version 1 (signed without extensions), which TLS \
                     libraries refuse: sign the {role} certificate again with -extfile giving \
                     basicConstraints, subjectAltName and extendedKeyUsage (README, \
                     \"Certificates that work the first time\")"
                )
            } else if text.contains("RequiredEkuNotFound") || text.contains("InvalidPurpose") {
                let usage = if role == "client" {
                    "clientAuth"
                } else {
                    "serverAuth"
                };
                format!("certificate is not for this purpose (extendedKeyUsage needs {usage})")
            } else {
                text
            }
        }
    }
}

/// `localhost` from webpki's `DnsName("localhost")`, `127.0.0.1` from
/// `IpAddress(127.0.0.1)`; any other text as it is.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// A certificate time as a UTC date, e.g. `2026-12-01`.
fn date(time: tokio_rustls::rustls::pki_types::UnixTime) -> String {
    let days = (time.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil algorithm: no date crate for one line.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
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
            "the server refused our client certificate (bad certificate: its log says why; \
             a CA:TRUE, version 1 or non-clientAuth certificate is refused so)"
                .into()
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

    #[test]
    fn presented_names_are_bare() {
        assert_eq!(bare_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(bare_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(bare_name("web1"), "web1");
    }

    #[test]
    fn dates_are_utc_days() {
        use tokio_rustls::rustls::pki_types::UnixTime;
        let at = |secs| {
            date(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                secs,
            )))
        };
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_798_761_599), "2026-12-31");
    }

    #[test]
    fn own_certificate_is_not_the_peers() {
        let v1 = CertificateError::Other(tokio_rustls::rustls::OtherError(std::sync::Arc::new(
            std::io::Error::other("UnsupportedCertVersion"),
        )));
        let words = own_certificate_words(&v1, "--cert");
        assert!(
            words.starts_with("--cert: certificate is X.509 version 1"),
            "{words}"
        );
        assert!(words.contains("client certificate"), "{words}");
        assert!(!words.contains("server's"), "{words}");
    }
}
