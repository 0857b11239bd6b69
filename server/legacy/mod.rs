//! The legacy raw-TCP listener: the classic 4-byte-prefix protocol, served from
//! the same runner as gRPC (docs/ARCHITECTURE.md, "The contract": legacy listener).
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
