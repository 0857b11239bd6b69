//! Which kind of port a failed call reached, and what to type instead.
//! A plaintext call to a TLS port or a legacy port fails as "transport
//! error", and `--legacy` at a gRPC port as a header length of 68288512
//! (an HTTP/2 SETTINGS frame read as a length). After such a failure, and
//! never on the success path, one short probe connection asks the port.
//!
//! The probe sends `\x02\x00\x00\x00{}`: to rexecd's legacy listener a framed
//! request without `cmd`, which runs nothing and is answered with an error
//! header; an HTTP/2 server sends its SETTINGS before reading anything; a TLS
//! server answers the non-TLS record with an alert.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A legacy request with an empty JSON header: refused, never run.
const PROBE: &[u8] = b"\x02\x00\x00\x00{}";
/// How long the probe waits for the port's first bytes; every kind it
/// knows answers at once, so this only bounds a silent port.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Enough to tell every kind apart (a legacy answer's prefix and its `{`).
const FIRST_BYTES: usize = 64;

/// What a port answered the probe with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// HTTP/2 without TLS: rexecd's gRPC listener.
    Grpc,
    /// A TLS server: rexecd's gRPC with `--tls-cert`, or anything else on TLS.
    Tls,
    /// rexecd's `--legacy-listen` (a 4-byte length, then a JSON header).
    Legacy,
    /// An HTTP/1 server.
    Http1,
    /// An SSH server.
    Ssh,
}

/// How the failed call tried to talk to the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// gRPC without TLS (`http://` or a bare address).
    Grpc,
    /// gRPC over TLS (`https://` or `--ca`).
    GrpcTls,
    /// `rexec --legacy`.
    Legacy,
}

/// Asks `authority` (`host:port`) what it is; `None` when it does not say.
pub async fn probe(authority: &str) -> Option<PortKind> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        // A server that answers before reading (HTTP/2, SSH) may close
        // before our write lands; what it sent is still worth reading.
        let _ = stream.write_all(PROBE).await;
        let mut answer = Vec::with_capacity(FIRST_BYTES);
        let mut buffer = [0u8; FIRST_BYTES];
        while answer.len() < FIRST_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if let Some(kind) = classify(&answer) {
                return Some(kind);
            }
        }
        classify(&answer)
    };
    tokio::time::timeout(PROBE_WAIT, ask).await.ok().flatten()
}

/// The kind of server whose first bytes are `answer`, if they tell.
pub fn classify(answer: &[u8]) -> Option<PortKind> {
    match answer {
        // An HTTP/2 frame header: 3-byte length, type 4 (SETTINGS), on stream 0.
        [_, _, _, 0x04, _, 0, 0, 0, 0, ..] => Some(PortKind::Grpc),
        // A legacy answer: little-endian header length under 8 KiB, then JSON.
        [_, high, 0, 0, b'{', ..] if *high < 0x20 => Some(PortKind::Legacy),
        // A TLS record: alert (0x15) or handshake (0x16), version 3.x.
        [0x15 | 0x16, 0x03, ..] => Some(PortKind::Tls),
        _ if answer.starts_with(b"HTTP/") => Some(PortKind::Http1),
        _ if answer.starts_with(b"SSH-") => Some(PortKind::Ssh),
        _ => None,
    }
}

/// What the port at `authority` is and how to reach it, for after "cannot
/// connect to ADDR: "; `None` when it is the kind that was tried (the
/// failure is then something else).
pub fn advice(authority: &str, tried: Tried, kind: PortKind) -> Option<String> {
    let words = match (tried, kind) {
        (Tried::Grpc, PortKind::Grpc)
        | (Tried::GrpcTls, PortKind::Tls)
        | (Tried::Legacy, PortKind::Legacy) => return None,
        (Tried::Grpc, PortKind::Tls) => format!(
            "the port speaks TLS: use --addr https://{authority} with --ca FILE \
             (the CA that signed the server's certificate)"
        ),
        (Tried::Grpc, PortKind::Legacy) => format!(
            "the port looks like rexecd's legacy listener (--legacy-listen): \
             use rexec --legacy --addr {authority}"
        ),
        (Tried::GrpcTls, PortKind::Grpc) => {
            "the port does not speak TLS, it is plaintext gRPC: drop https:// and --ca".into()
        }
        (Tried::GrpcTls, PortKind::Legacy) => format!(
            "the port does not speak TLS, it looks like rexecd's legacy listener: \
             use rexec --legacy --addr {authority}, without https:// or --ca"
        ),
        (Tried::Legacy, PortKind::Grpc) => {
            "the port is HTTP/2 (gRPC), not the legacy listener: drop --legacy".into()
        }
        (Tried::Legacy, PortKind::Tls) => format!(
            "the port speaks TLS (gRPC over TLS?), not the legacy protocol: \
             drop --legacy and use --addr https://{authority} with --ca FILE"
        ),
        (_, PortKind::Http1) => "the port is an HTTP/1 server, not rexecd".into(),
        (_, PortKind::Ssh) => "the port is an SSH server, not rexecd".into(),
    };
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_kind() {
        // What rexecd's listeners answered the probe with (measured).
        let settings = b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x04\x00\x10\x00\x00";
        assert_eq!(classify(settings), Some(PortKind::Grpc));
        assert_eq!(
            classify(b"\x15\x03\x03\x00\x02\x02\x32"),
            Some(PortKind::Tls)
        );
        let legacy = b"b\x00\x00\x00{\"data_size\":0,\"error\":\"...\"}";
        assert_eq!(classify(legacy), Some(PortKind::Legacy));
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(PortKind::Http1)
        );
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(PortKind::Ssh));
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\x15"), None, "too short to tell");
        assert_eq!(classify(b"hello world"), None);
    }

    #[test]
    fn advice_names_the_address_and_the_fix() {
        let addr = "127.0.0.1:7";
        let words = |tried, kind| advice(addr, tried, kind).unwrap_or_default();
        assert!(words(Tried::Grpc, PortKind::Tls).contains("https://127.0.0.1:7"));
        assert!(words(Tried::Grpc, PortKind::Tls).contains("--ca"));
        assert!(words(Tried::Grpc, PortKind::Legacy).contains("--legacy"));
        assert!(words(Tried::Legacy, PortKind::Grpc).contains("drop --legacy"));
        assert!(words(Tried::Legacy, PortKind::Tls).contains("TLS"));
        assert!(words(Tried::GrpcTls, PortKind::Grpc).contains("drop https://"));
        assert!(words(Tried::GrpcTls, PortKind::Legacy).contains("--legacy"));
        assert_eq!(advice(addr, Tried::Legacy, PortKind::Legacy), None);
        assert_eq!(advice(addr, Tried::GrpcTls, PortKind::Tls), None);
    }
}
