//! An exec's events on their way to a NATS caller: numbered, kept until
//! acknowledged, never more than the window outstanding, sent again when the
//! caller reports a gap. Core NATS may drop a message (a broker restart, a
//! slow consumer); this is what makes the stream whole anyway.

use std::collections::VecDeque;

use bytes::Bytes;
use prost::Message;
use rexec::proto::{NatsExecEvent, nats_exec_event};

/// The window when the caller asks for none.
const DEFAULT_WINDOW: u64 = 4 * 1024 * 1024;
const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 16 * 1024 * 1024;
/// Events outstanding at most, whatever their size: a caller's subscription
/// queue counts messages, and many small ones must not overflow it.
const MAX_EVENTS: usize = 1024;
/// Output pieces at most this big (runner chunks reach 1 MiB, and the
/// broker's max_payload is 1 MiB by default).
const MAX_PIECE: usize = 256 * 1024;
/// Room left in a message for its seq and framing.
const ENVELOPE: usize = 64;

pub struct Outbox {
    client: async_nats::Client,
    reply: String,
    window: u64,
    piece: usize,
    next_seq: u64,
    /// Sent and not yet acknowledged: (seq, encoded message).
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: u64,
    /// Something was published since the last tick (no keepalive needed).
    spoke: bool,
}

impl Outbox {
    pub fn new(client: async_nats::Client, reply: String, window: u64, max_payload: usize) -> Self {
        let window = if window == 0 {
            DEFAULT_WINDOW
        } else {
            window.clamp(MIN_WINDOW, MAX_WINDOW)
        };
        Outbox {
            client,
            reply,
            window,
            piece: MAX_PIECE
                .min(max_payload.saturating_sub(ENVELOPE))
                .max(1024),
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            spoke: false,
        }
    }

    pub fn reply(&self) -> &str {
        &self.reply
    }

    /// Whether another event may go out before an acknowledgement.
    pub fn has_room(&self) -> bool {
        self.unacked_bytes < self.window && self.unacked.len() < MAX_EVENTS
    }

    /// Every event sent has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Sends output, cut into pieces that fit a message.
    pub async fn push_output(&mut self, bytes: Bytes, stdout: bool) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(self.piece));
            self.push(if stdout {
                nats_exec_event::Event::Stdout(piece)
            } else {
                nats_exec_event::Event::Stderr(piece)
            })
            .await;
        }
    }

    /// Numbers, sends and keeps one event.
    pub async fn push(&mut self, event: nats_exec_event::Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let message = NatsExecEvent {
            seq,
            event: Some(event),
            sent: 0,
        };
        let encoded = Bytes::from(message.encode_to_vec());
        self.unacked_bytes += encoded.len() as u64;
        self.unacked.push_back((seq, encoded.clone()));
        self.publish(encoded).await;
    }

    /// The caller has everything up to `seq`; with `resend`, it misses what
    /// follows, which goes out again.
    pub async fn acked(&mut self, seq: u64, resend: bool) {
        while let Some((first, message)) = self.unacked.front() {
            if *first > seq {
                break;
            }
            self.unacked_bytes -= message.len() as u64;
            self.unacked.pop_front();
        }
        if resend {
            let again: Vec<Bytes> = self.unacked.iter().map(|(_, m)| m.clone()).collect();
            tracing::debug!(reply = %self.reply, events = again.len(), "nats: re-sending after a gap");
            for message in again {
                self.publish(message).await;
            }
        }
    }

    /// Once a second: a keepalive if nothing else went out, saying how far
    /// the stream has gone, so a caller can notice lost last events.
    pub async fn tick(&mut self) {
        if std::mem::take(&mut self.spoke) {
            return;
        }
        let keepalive = NatsExecEvent {
            seq: 0,
            event: None,
            sent: self.next_seq - 1,
        };
        self.publish(keepalive.encode_to_vec().into()).await;
        self.spoke = false;
    }

    async fn publish(&mut self, message: Bytes) {
        self.spoke = true;
        // A publish fails only once the client is closed; a disconnected one
        // buffers it, and a loss is repaired by the caller's resend.
        if let Err(e) = self.client.publish(self.reply.clone(), message).await {
            tracing::debug!(reply = %self.reply, error = %e, "nats: event not sent");
        }
    }
}
