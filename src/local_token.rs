//! The per-user local token. A default rexecd (no `--tokens-file`, no mTLS,
//! no `--insecure-no-auth`) requires it on every call, so that on a shared
//! host only the user who started it, and whoever that user gives the file
//! to, can run commands; clients send it by themselves to loopback addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The local token, when `addr` is a loopback address whose listening
/// socket belongs to this user, and the file can be read. Never sent
/// elsewhere: another host's rexecd has no use for it, and a server another
/// local user started on the port would learn it.
pub fn for_address(addr: &str) -> Option<String> {
    let port = loopback_port(addr)?;
    if !listener_is_mine(port) {
        return None;
    }
    let text = std::fs::read_to_string(path()?).ok()?;
    let token = text.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then(|| token.to_string())
}

/// `127.0.0.1:P`, `[::1]:P`, `localhost:P`, with or without `http(s)://`.
pub fn is_loopback(addr: &str) -> bool {
    host_and_port(addr).is_some_and(|(host, _)| is_loopback_host(host))
}

fn loopback_port(addr: &str) -> Option<u16> {
    let (host, port) = host_and_port(addr)?;
    if !is_loopback_host(host) {
        return None;
    }
    port?.parse().ok()
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_and_port(addr: &str) -> Option<(&str, Option<&str>)> {
    let rest = addr.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    Some(match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    })
}

/// How long one look at the listening sockets serves: a fan-out to 1,000
/// loopback hosts would otherwise read /proc/net/tcp 1,000 times, and the
/// kernel makes each read by walking every socket (19 s of system time for
/// 1,000 hosts, BENCHMARKS.md).
const LISTENERS_FRESH_FOR: Duration = Duration::from_secs(1);

/// Whether every TCP socket listening on `port` belongs to this user (false
/// when none is found). A yes from a look at most [`LISTENERS_FRESH_FOR`]
/// old is taken; anything else is looked up afresh, so a server started a
/// moment ago (or a port that changed hands to us) is seen at once.
fn listener_is_mine(port: u16) -> bool {
    static SEEN: Mutex<Option<(Instant, HashMap<u16, bool>)>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cached_yes = seen.as_ref().is_some_and(|(at, ports)| {
        at.elapsed() < LISTENERS_FRESH_FOR && ports.get(&port) == Some(&true)
    });
    if cached_yes {
        return true;
    }
    let ports = listeners();
    let mine = ports.get(&port) == Some(&true);
    *seen = Some((Instant::now(), ports));
    mine
}

/// Every listening TCP port, and whether all its sockets belong to this
/// user, from /proc/net/tcp and tcp6 (Linux).
#[cfg(unix)]
fn listeners() -> HashMap<u16, bool> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut ports = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(uid)) =
                (fields.get(1), fields.get(3), fields.get(7))
            else {
                continue;
            };
            if *state != "0A" {
                continue;
            }
            let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            else {
                continue;
            };
            let mine = uid.parse::<libc::uid_t>().ok() == Some(me);
            *ports.entry(port).or_insert(true) &= mine;
        }
    }
    ports
}

/// Elsewhere (Windows) no listener is known to be ours, so the local token
/// is never sent by itself: pass `--token-file` or `$REXEC_TOKEN`.
#[cfg(not(unix))]
fn listeners() -> HashMap<u16, bool> {
    HashMap::new()
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
        assert_eq!(loopback_port("http://[::1]:7/"), Some(7));
        assert_eq!(loopback_port("127.0.0.1"), None);
    }

    #[test]
    fn a_listener_of_this_user_is_recognised() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listeners().get(&port), Some(&true));
        drop(listener);
        assert_eq!(listeners().get(&port), None);
    }
}
