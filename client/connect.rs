//! Addresses and connections: `host:port` or `http://host:port` to a channel,
//! and connect errors as one readable line.

use std::time::Duration;

use rexec::RemoteExecClient;
use tonic::transport::{Channel, Endpoint};

/// HTTP/2 frame size the client advertises. The receiver's setting governs a
/// download, and 1 MiB frames cut per-frame work on big outputs (BENCHMARKS.md).
const MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// Accepts `host:port`, `[::1]:port` and `http://host:port`.
pub fn endpoint_uri(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("empty address: use host:port".into());
    }
    match addr.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(addr.to_string()),
        Some((scheme, _)) => Err(format!(
            "unsupported address scheme '{scheme}://' in {addr}: use host:port or http://host:port"
        )),
        None => Ok(format!("http://{addr}")),
    }
}

pub async fn connect(
    addr: &str,
    connect_timeout: Duration,
) -> Result<RemoteExecClient<Channel>, String> {
    let uri = endpoint_uri(addr)?;
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("invalid address {addr}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {}", root_cause(&e)))?;
    Ok(RemoteExecClient::new(channel))
}

/// The innermost error, as "connection refused" rather than a transport chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    if let Some(io) = current.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        let text = match io.kind() {
            ConnectionRefused => "connection refused",
            TimedOut => "timed out",
            HostUnreachable => "host unreachable",
            NetworkUnreachable => "network unreachable",
            _ => return io.to_string(),
        };
        return text.to_string();
    }
    let text = current.to_string();
    if text.contains("timed out") {
        "timed out".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_http_addresses() {
        assert_eq!(
            endpoint_uri("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_uri("http://h:1").unwrap(), "http://h:1");
        assert_eq!(endpoint_uri("[::1]:7").unwrap(), "http://[::1]:7");
        assert!(endpoint_uri("ftp://h:1").is_err());
        assert!(endpoint_uri("").is_err());
    }
}
