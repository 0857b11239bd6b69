//! The legacy listeners: the classic 4-byte-prefix protocol (docs/ARCHITECTURE.md,
//! "The contract": legacy listener) and the tutorial's earlier servers
//! (`--legacy-compat`), served from the same runner as gRPC.
//!
//! - `dialect`: the tutorial's earlier servers (`--legacy-compat`): names, framings.
//! - `listener`: accepts, one permit per connection, refuses past the limit.
//! - `handler`: one connection, one request after the other, its timeouts.
//! - `reader`: the reading half, charged to the memory budget.
//! - `answer`: an answer held until its command exits, then written out.
//! - `udp`: the UDP dialect, one datagram in and one out.

mod answer;
mod dialect;
mod handler;
mod listener;
mod reader;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use dialect::{CompatListen, Dialect, Framing};
pub use listener::Listener;
pub use udp::UdpListener;

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

/// A bound `--legacy-compat` listener.
pub enum Compat {
    Tcp(Listener),
    Udp(UdpListener),
}

impl Compat {
    pub async fn bind(
        listen: CompatListen,
        runner: Arc<crate::runner::Runner>,
        shutdown: crate::shutdown::Shutdown,
        config: LegacyConfig,
        memory: crate::memory::MemoryBudget,
    ) -> std::io::Result<Compat> {
        let CompatListen { dialect, addr } = listen;
        Ok(match dialect {
            Dialect::Udp => {
                Compat::Udp(UdpListener::bind(addr, runner, shutdown, config, memory).await?)
            }
            tcp => Compat::Tcp(
                Listener::bind(addr, Framing::Compat(tcp), runner, shutdown, config, memory)
                    .await?,
            ),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Compat::Tcp(listener) => listener.local_addr(),
            Compat::Udp(listener) => listener.local_addr(),
        }
    }

    pub async fn run(self) {
        match self {
            Compat::Tcp(listener) => listener.run().await,
            Compat::Udp(listener) => listener.run().await,
        }
    }
}
