//! Where rexecd is: an address as a person writes it (`web1`, `10.0.0.1`,
//! `[::1]:7`, `https://web1`) made into one a client dials, with rexecd's
//! port when none is named. `rexec --addr` and fan-out hosts share it.

/// rexecd's port when an address names none.
pub const DEFAULT_PORT: u16 = 50051;

/// Adds `:50051` to an address that names no port: `web1`, `http://web1`,
/// `[::1]`, or a bare IPv6 address (which also gets its brackets).
pub fn with_default_port(name: &str) -> String {
    let (scheme, rest) = match name.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, name),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = if let Some(bracketed) = authority.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((_, "")) => format!("{authority}:{DEFAULT_PORT}"),
            _ => authority.to_string(),
        }
    } else {
        match authority.matches(':').count() {
            0 => format!("{authority}:{DEFAULT_PORT}"),
            1 => authority.to_string(),
            _ => format!("[{authority}]:{DEFAULT_PORT}"),
        }
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

/// Accepts `host:port`, `[::1]:port`, `http://host:port` and `https://host:port`.
pub fn endpoint_uri(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("empty address: use host:port".into());
    }
    match addr.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(addr.to_string()),
        Some((scheme, _)) => Err(format!(
            "unsupported address scheme '{scheme}://': use host:port, http://host:port or https://host:port"
        )),
        None => Ok(format!("http://{addr}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_port_gets_the_default_port() {
        let addr = with_default_port;
        assert_eq!(addr("web1"), "web1:50051");
        assert_eq!(addr("web1:7"), "web1:7");
        assert_eq!(addr("10.0.0.1"), "10.0.0.1:50051");
        assert_eq!(addr("[::1]"), "[::1]:50051");
        assert_eq!(addr("[::1]:7"), "[::1]:7");
        assert_eq!(addr("::1"), "[::1]:50051");
        assert_eq!(addr("http://web1"), "http://web1:50051");
        assert_eq!(addr("https://web1"), "https://web1:50051");
        assert_eq!(addr("http://web1:7"), "http://web1:7");
        assert_eq!(addr("http://web1/"), "http://web1:50051/");
    }

    #[test]
    fn accepts_plain_and_http_addresses() {
        assert_eq!(
            endpoint_uri("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_uri("http://h:1").unwrap(), "http://h:1");
        assert_eq!(endpoint_uri("https://h:1").unwrap(), "https://h:1");
        assert_eq!(endpoint_uri("[::1]:7").unwrap(), "http://[::1]:7");
        assert!(endpoint_uri("ftp://h:1").is_err());
        assert!(endpoint_uri("").is_err());
    }
}
