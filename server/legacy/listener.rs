//! Accepts legacy connections: one permit of `--legacy-max-connections` per
//! connection, held by its handler; past the limit an error answer and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rexec::legacy::Response;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::LegacyConfig;
use super::answer::{Answer, await_ready, write_segments};
use super::dialect::Framing;
use super::handler::Handler;
use crate::memory::MemoryBudget;
use crate::rate_limited::RateLimited;
use crate::runner::Runner;
use crate::shutdown::Shutdown;

/// How long a refused connection may take to read its error answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection's handler shares.
pub struct Shared {
    pub runner: Arc<Runner>,
    pub shutdown: Shutdown,
    pub config: LegacyConfig,
    pub memory: MemoryBudget,
    /// `--legacy-listen`'s framing, or a `--legacy-compat` dialect's.
    pub framing: Framing,
    /// At most one "HTTP sent to the legacy port" warning an interval, with a count.
    pub http_warnings: std::sync::Mutex<RateLimited>,
}

pub struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// One permit per open connection, held by its handler.
    connections: Arc<Semaphore>,
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        framing: Framing,
        runner: Arc<Runner>,
        shutdown: Shutdown,
        config: LegacyConfig,
        memory: MemoryBudget,
    ) -> std::io::Result<Listener> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Listener {
            listener,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            shared: Arc::new(Shared {
                runner,
                shutdown,
                config,
                memory,
                framing,
                http_warnings: std::sync::Mutex::new(RateLimited::new(1)),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until shutdown starts draining, then waits for open connections
    /// to finish their current request.
    pub async fn run(self) {
        let max_connections = self.shared.config.max_connections;
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.shared.shutdown.draining() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!("legacy listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Without it the answer's segments can wait ~40 ms on a delayed ACK.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "legacy: cannot set TCP_NODELAY: {e}");
            }
            match self.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let handler = Handler::new(stream, peer, self.shared.clone());
                    tokio::spawn(handler.run(permit));
                }
                Err(_) => {
                    let listener = self.shared.framing.listener();
                    let metrics = crate::metrics::get();
                    let _open = metrics.legacy_connection(listener);
                    metrics.rejected(crate::metrics::Rejection::Limit);
                    metrics.legacy_answer(listener, true);
                    tracing::warn!(%peer, limit = max_connections, listener, "legacy: too many connections");
                    let message = format!(
                        "too many legacy connections (limit {max_connections}); try again later"
                    );
                    tokio::spawn(refuse(stream, self.shared.framing, message));
                }
            }
        }
        drop(self.listener);
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let _ = self.connections.acquire_many(all).await;
    }
}

/// The error answer to a connection past the limit, in the listener's framing
/// (in `length-ready`, after the client's `recv_ready`), then close.
async fn refuse(stream: TcpStream, framing: Framing, message: String) {
    let Ok(wire) = Answer::from(Response::error(message)).into_wire(framing) else {
        return;
    };
    let (mut reader, mut writer) = stream.into_split();
    let timeout = Some(REFUSAL_WRITE_TIMEOUT);
    if wire.after_ready.is_some() {
        // The length answers a command: take the command's bytes first, so
        // the `recv_ready` that follows the length is not read behind them.
        let mut request = vec![0u8; rexec::legacy::MAX_TEXT_COMMAND_BYTES];
        match tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, reader.read(&mut request)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    if write_segments(&mut writer, wire.first, timeout)
        .await
        .is_err()
    {
        return;
    }
    if let Some(body) = wire.after_ready {
        let mut buffered = BytesMut::new();
        if await_ready(&mut reader, &mut buffered, timeout)
            .await
            .is_ok()
        {
            let _ = write_segments(&mut writer, body, timeout).await;
        }
    }
}
