//! The legacy raw-TCP listener: the classic 4-byte-prefix protocol, served from
//! the same runner as gRPC (DESIGN.md, "Legacy raw-TCP listener").
//!
//! - `listener`: accepts, one permit per connection, refuses past the limit.
//! - `handler`: one connection, one request after the other, its timeouts.
//! - `reader`: the reading half, charged to the memory budget.
//! - `answer`: an answer held until its command exits, then written out.

mod answer;
mod handler;
mod listener;
mod reader;

use std::time::Duration;

pub use listener::Listener;

/// Limits of the legacy listener (rexecd's `--legacy-*` flags).
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Output held for one answer; past it the output is cut (`truncated`).
    pub max_output_bytes: usize,
    /// A connection whose first request has not begun this long after it
    /// opened is closed; `None` waits forever.
    pub first_request_timeout: Option<Duration>,
    /// A connection that makes no progress (sends no bytes of a request,
    /// takes no bytes of its answer) for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Connections served at once; more get an error answer and are closed.
    pub max_connections: usize,
}

/// Parses a byte count for flags: `65536`, `64KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`...).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size '{text}': expected e.g. 1048576, 64KiB, 64MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit '{other}' in '{text}': use KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999999G").is_err());
    }
}
