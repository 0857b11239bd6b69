//! `--legacy-compat udp=ADDR`: the tutorial's UDP server. One datagram in is
//! one command (read as the classic server reads a TCP command: text, HTTP
//! refused); one datagram out, to the address that sent it and nowhere else,
//! is its stdout then stderr, cut at what one datagram can carry.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rexec::legacy::{LegacyError, RequestCodec};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;

use super::LegacyConfig;
use super::answer::OutputBuffer;
use super::dialect::{self, Dialect};
use super::handler::exec_spec;
use crate::memory::MemoryBudget;
use crate::metrics::Rejection;
use crate::rate_limited::RateLimited;
use crate::runner::Runner;
use crate::runner::types::{Caller, Event};
use crate::shutdown::Shutdown;

/// The largest UDP payload: 65535 less the IPv4 and UDP headers (IPv6's
/// header is counted outside its payload length, hence 20 bytes more).
const MAX_DATAGRAM_V4: usize = 65_507;
const MAX_DATAGRAM_V6: usize = 65_527;
/// A receive buffer one byte over the largest datagram, so none is cut.
const RECEIVE_BYTES: usize = 65_536;

pub struct UdpListener {
    socket: Arc<UdpSocket>,
    runner: Arc<Runner>,
    shutdown: Shutdown,
    config: LegacyConfig,
    memory: MemoryBudget,
    /// One permit per command running; past the limit a datagram gets an error answer.
    running: Arc<Semaphore>,
    /// Sources the socket answers: loopback ones only, unless it was bound
    /// off loopback (`--legacy-allow-remote`).
    loopback_only: bool,
    warnings: std::sync::Mutex<RateLimited>,
}

impl UdpListener {
    pub async fn bind(
        addr: SocketAddr,
        runner: Arc<Runner>,
        shutdown: Shutdown,
        config: LegacyConfig,
        memory: MemoryBudget,
    ) -> std::io::Result<UdpListener> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(UdpListener {
            socket: Arc::new(socket),
            running: Arc::new(Semaphore::new(config.max_connections)),
            runner,
            shutdown,
            config,
            memory,
            loopback_only: addr.ip().is_loopback(),
            warnings: std::sync::Mutex::new(RateLimited::new(1)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives until shutdown starts draining, then waits for the commands
    /// still running to be answered.
    pub async fn run(self) {
        let this = Arc::new(self);
        let mut buffer = vec![0u8; RECEIVE_BYTES];
        loop {
            let received = tokio::select! {
                received = this.socket.recv_from(&mut buffer) => received,
                () = this.shutdown.draining() => break,
            };
            let (len, peer) = match received {
                Ok(received) => received,
                Err(e) => {
                    // An ICMP error for an earlier answer, usually.
                    tracing::debug!("legacy-udp: receive failed: {e}");
                    continue;
                }
            };
            let metrics = crate::metrics::get();
            let _counted = metrics.legacy_connection(Dialect::Udp.listener());
            if this.loopback_only && !peer.ip().is_loopback() {
                this.warn(
                    peer,
                    "came from off loopback to a loopback socket; not answered",
                );
                continue;
            }
            let mut datagram = BytesMut::from(&buffer[..len]);
            let request = match RequestCodec::new().decode_eof(&mut datagram) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    // An empty datagram: the tutorial's server runs "" and answers nothing but an empty datagram.
                    this.send(peer, Bytes::new()).await;
                    continue;
                }
                Err(LegacyError::Http(why)) => {
                    metrics.rejected(Rejection::Invalid);
                    this.warn(peer, &format!("{why}; nothing run, not answered"));
                    continue;
                }
                Err(e) => {
                    tracing::info!(%peer, "legacy-udp: bad request: {e}");
                    metrics.rejected(Rejection::Invalid);
                    metrics.legacy_answer(Dialect::Udp.listener(), true);
                    this.send(peer, dialect::error_text(&e.to_string())).await;
                    continue;
                }
            };
            let Ok(permit) = this.running.clone().try_acquire_owned() else {
                let limit = this.config.max_connections;
                tracing::warn!(%peer, limit, "legacy-udp: too many commands running");
                metrics.rejected(Rejection::Limit);
                metrics.legacy_answer(Dialect::Udp.listener(), true);
                let message =
                    format!("too many legacy commands running (limit {limit}); try again later");
                this.send(peer, dialect::error_text(&message)).await;
                continue;
            };
            let this = this.clone();
            tokio::spawn(async move {
                let answer = this.execute(request, peer).await;
                crate::metrics::get().legacy_answer(Dialect::Udp.listener(), false);
                this.send(peer, answer).await;
                drop(permit);
            });
        }
        let all = u32::try_from(this.config.max_connections).unwrap_or(u32::MAX);
        let _ = this.running.acquire_many(all).await;
    }

    fn datagram_limit(&self, peer: SocketAddr) -> usize {
        let limit = match peer {
            SocketAddr::V4(_) => MAX_DATAGRAM_V4,
            SocketAddr::V6(_) => MAX_DATAGRAM_V6,
        };
        limit.min(self.config.max_output_bytes)
    }

    /// Runs one command to its exit; the answer's body, at most one datagram.
    async fn execute(&self, request: rexec::legacy::Request, peer: SocketAddr) -> Bytes {
        if request.command.trim().is_empty() {
            return Bytes::new();
        }
        let limit = self.datagram_limit(peer);
        let caller = Caller {
            peer: peer.to_string(),
            principal: "anonymous".into(),
            listener: Dialect::Udp.listener(),
        };
        let mut execution = match self.runner.start(exec_spec(request, limit), caller).await {
            Ok(execution) => execution,
            Err(e) => return dialect::error_text(&e.to_string()),
        };
        let mut output = OutputBuffer::new(limit, self.memory.none());
        loop {
            match execution.events.recv().await {
                Some(Event::Stdout(chunk)) => output.push_stdout(chunk),
                Some(Event::Stderr(chunk)) => output.push_stderr(chunk),
                Some(Event::Exit(_)) => return output.into_body(),
                None => return dialect::error_text("the command ended without an exit status"),
            }
            if output.over_discard_allowance() {
                // Out of memory budget with the command still writing: stop it.
                tracing::info!(%peer, exec_id = %execution.exec_id, "legacy-udp: output past what the memory budget can hold; stopping the command");
                drop(execution);
                return output.into_body();
            }
        }
    }

    /// Answers `peer`, the source of the request, from the socket it came to.
    async fn send(&self, peer: SocketAddr, body: Bytes) {
        if let Err(e) = self.socket.send_to(&body, peer).await {
            tracing::debug!(%peer, "legacy-udp: cannot send the answer: {e}");
        }
    }

    /// A datagram not answered: say so, at most once an interval.
    fn warn(&self, peer: SocketAddr, why: &str) {
        let logged = self
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hit();
        if let Some(count) = logged {
            tracing::warn!(%peer, count, "legacy-udp: a datagram {why}");
        }
    }
}
