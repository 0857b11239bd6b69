//! The tutorial's earlier servers, as `--legacy-compat DIALECT=ADDR`: what
//! each one's client reads, so the scripts written against it work
//! unchanged. Every dialect reads requests as the classic server does (a
//! text command, what one read returns) and answers stdout then stderr.
//!
//! - `raw`: the body alone, no framing (the first TCP server).
//! - `length-ready`: the body's length in ASCII digits, then, once the client
//!   sends `recv_ready`, the body.
//! - `fixed-header`: the JSON header `{"length": N, "fill": "000…"}` zero-filled
//!   to exactly 100 bytes, then the body.
//! - `udp`: one datagram in (the command), one datagram out (the body).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;

/// What the `length-ready` client sends between the length and the body.
pub const READY: &[u8] = b"recv_ready";
/// The `fixed-header` header's size, as the tutorial pads it.
pub const FIXED_HEADER_BYTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Raw,
    LengthReady,
    FixedHeader,
    Udp,
}

impl Dialect {
    const ALL: [Dialect; 4] = [
        Dialect::Raw,
        Dialect::LengthReady,
        Dialect::FixedHeader,
        Dialect::Udp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Raw => "raw",
            Dialect::LengthReady => "length-ready",
            Dialect::FixedHeader => "fixed-header",
            Dialect::Udp => "udp",
        }
    }

    /// The listener name in audit lines and logs.
    pub fn listener(self) -> &'static str {
        match self {
            Dialect::Raw => "legacy-raw",
            Dialect::LengthReady => "legacy-length-ready",
            Dialect::FixedHeader => "legacy-fixed-header",
            Dialect::Udp => "legacy-udp",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a TCP legacy listener frames its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `--legacy-listen`: the 4-byte prefix and the JSON header.
    Prefixed,
    /// One of `--legacy-compat`'s TCP dialects.
    Compat(Dialect),
}

impl Framing {
    pub fn listener(self) -> &'static str {
        match self {
            Framing::Prefixed => "legacy",
            Framing::Compat(dialect) => dialect.listener(),
        }
    }
}

/// The fixed-header dialect's header for a body of `length` bytes, byte for
/// byte what the tutorial's `pack_msg_header` makes: Python's `json.dumps`
/// of `{'length': N, 'fill': ''}`, then `fill` zero-filled by the bytes
/// missing to 100.
pub fn fixed_header(length: usize) -> Bytes {
    let bare = format!("{{\"length\": {length}, \"fill\": \"\"}}");
    let fill = "0".repeat(FIXED_HEADER_BYTES.saturating_sub(bare.len()));
    Bytes::from(format!("{{\"length\": {length}, \"fill\": \"{fill}\"}}"))
}

/// The length-ready dialect's first answer: the length in ASCII digits.
pub fn ascii_length(length: usize) -> Bytes {
    Bytes::from(length.to_string())
}

/// A refusal, where a dialect has no header to carry it: the body says it,
/// on a line of its own, as a shell's error would.
pub fn error_text(message: &str) -> Bytes {
    Bytes::from(format!("rexecd: {message}\n"))
}

/// One `--legacy-compat DIALECT=ADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompatListen {
    pub dialect: Dialect,
    pub addr: SocketAddr,
}

impl FromStr for CompatListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let names = || {
            Dialect::ALL
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((name, addr)) = text.split_once('=') else {
            return Err(format!(
                "expected DIALECT=ADDR (e.g. raw=127.0.0.1:8080); dialects: {}",
                names()
            ));
        };
        let dialect = Dialect::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| format!("unknown dialect '{name}'; dialects: {}", names()))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("'{addr}' is not an address (IP:PORT): {e}"))?;
        Ok(CompatListen { dialect, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's own output for the tutorial's `pack_msg_header(header, 100)`.
    #[test]
    fn fixed_header_is_the_tutorials_exactly() {
        let header = fixed_header(12);
        assert_eq!(header.len(), FIXED_HEADER_BYTES);
        assert_eq!(
            &header[..],
            format!("{{\"length\": 12, \"fill\": \"{}\"}}", "0".repeat(74)).as_bytes()
        );
        for length in [0, 9, 10, 99_999, 64 << 20, usize::MAX] {
            let header = fixed_header(length);
            assert_eq!(header.len(), FIXED_HEADER_BYTES, "length {length}");
            let parsed: serde_json::Value = serde_json::from_slice(&header).unwrap();
            assert_eq!(parsed["length"].as_u64(), Some(length as u64));
        }
    }

    #[test]
    fn compat_flags_parse_or_say_what_is_accepted() {
        assert_eq!(
            "length-ready=127.0.0.1:0".parse::<CompatListen>(),
            Ok(CompatListen {
                dialect: Dialect::LengthReady,
                addr: "127.0.0.1:0".parse().unwrap()
            })
        );
        let unknown = "tcp=127.0.0.1:1".parse::<CompatListen>().unwrap_err();
        assert!(
            unknown.contains("raw, length-ready, fixed-header, udp"),
            "{unknown}"
        );
        assert!(
            "raw"
                .parse::<CompatListen>()
                .unwrap_err()
                .contains("DIALECT=ADDR")
        );
        assert!("raw=localhost".parse::<CompatListen>().is_err());
    }
}
