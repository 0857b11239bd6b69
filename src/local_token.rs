//! The per-user local token. A default rexecd (no `--tokens-file`, no mTLS,
//! no `--insecure-no-auth`) requires it on every call, so that on a shared
//! host only the user who started it, and whoever that user gives the file
//! to, can run commands; clients send it by themselves to loopback addresses.

use std::net::IpAddr;
use std::path::PathBuf;

/// Overrides where the local token lives, for rexecd and every client alike.
pub const PATH_ENV: &str = "REXEC_LOCAL_TOKEN_FILE";

/// `$REXEC_LOCAL_TOKEN_FILE`, else `$HOME/.local/state/rexec/token`. Not
/// `$XDG_RUNTIME_DIR`: cron jobs, `sudo` and services lack it or differ, and
/// then rexecd and rexec would look in different places.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PATH_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/rexec/token"))
}

/// The local token, when `addr` is a loopback address and the file can be
/// read. Never sent elsewhere: another host's rexecd has no use for it.
pub fn for_address(addr: &str) -> Option<String> {
    if !is_loopback(addr) {
        return None;
    }
    let text = std::fs::read_to_string(path()?).ok()?;
    let token = text.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then(|| token.to_string())
}

/// `127.0.0.1:P`, `[::1]:P`, `localhost:P`, with or without `http(s)://`.
pub fn is_loopback(addr: &str) -> bool {
    let rest = addr.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_get_the_local_token() {
        for addr in [
            "127.0.0.1:50051",
            "127.9.9.9:1",
            "[::1]:7",
            "localhost:50051",
            "http://127.0.0.1:1",
            "https://localhost:1/",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "10.0.0.1:50051",
            "host:1",
            "[::2]:7",
            "https://example.com:1",
            "localhost.example.com:1",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }
}
