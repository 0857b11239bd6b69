//! One exec on a named agent through the broker (`rexec.v1.<name>.exec`):
//! the request, then the agent's numbered events, taken in order, repeats
//! ignored, gaps asked for again, and acknowledged as they are consumed, so
//! the agent never runs more than a window ahead of us. A keepalive task
//! acknowledges every second, so the agent knows we are still here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rexec::client::{Command, Error, Event};
use rexec::proto::{
    Ack, NatsExecEvent, NatsExecInput, NatsExecRequest, nats_exec_event, nats_exec_input,
};
use tokio_stream::StreamExt;
use tokio_util::task::TaskTracker;

/// What the agent sends every second while the command is quiet; silence
/// past this means the agent or the broker is gone.
const AGENT_SILENCE: Duration = Duration::from_secs(10);
/// How often we tell the agent we are here (it gives up after 10 s).
const KEEPALIVE: Duration = Duration::from_secs(1);
/// All execs of a run together keep at most this much output in flight
/// through the broker (its default limit for one slow client is 64 MiB).
const FLEET_WINDOW: u64 = 32 * 1024 * 1024;
const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 4 * 1024 * 1024;
/// Stdin sent and not yet written on the agent, at most (its limit too).
const STDIN_WINDOW: u64 = 1024 * 1024;
const STDIN_CHUNK: usize = 256 * 1024;

/// The broker connection every exec of a run shares.
pub struct Bus {
    client: async_nats::Client,
    token: String,
    window: u64,
    /// Cancels sent by execs dropped midway (Ctrl-C), flushed before exit.
    cancels: TaskTracker,
}

impl Bus {
    /// `parallel` execs at once share [`FLEET_WINDOW`].
    pub fn new(client: async_nats::Client, token: Option<String>, parallel: usize) -> Bus {
        Bus {
            client,
            token: token.unwrap_or_default(),
            window: (FLEET_WINDOW / parallel.max(1) as u64).clamp(MIN_WINDOW, MAX_WINDOW),
            cancels: TaskTracker::new(),
        }
    }

    /// Waits (a little) for the cancels of interrupted execs to reach the broker.
    pub async fn settle(&self) {
        self.cancels.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.cancels.wait().await;
            let _ = self.client.flush().await;
        })
        .await;
    }

    /// Sends `command` to the agent `name`; `timeout` bounds the wait for it
    /// to answer. The command's stdin is streamed, within the agent's window.
    pub async fn exec(
        self: &Arc<Self>,
        name: &str,
        command: &Command,
        timeout: Duration,
    ) -> Result<Exec, Error> {
        let mut request = command.to_request();
        let stdin = std::mem::take(&mut request.stdin);
        let message = NatsExecRequest {
            request: Some(request),
            token: self.token.clone(),
            window_bytes: self.window,
            stream_stdin: !stdin.is_empty(),
        };
        let unreachable = |reason: String| Error::Connect {
            addr: format!("agent {name}"),
            reason,
        };
        let inbox = self.client.new_inbox();
        let replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unreachable(format!("nats: {e}")))?;
        self.client
            .publish_with_reply(
                rexec::nats::exec_subject(name),
                inbox,
                message.encode_to_vec().into(),
            )
            .await
            .map_err(|e| unreachable(format!("nats: {e}")))?;
        Ok(Exec {
            bus: self.clone(),
            name: name.to_string(),
            replies,
            connect_timeout: timeout,
            control: None,
            expected: 1,
            asked_for: None,
            consumed: Arc::new(AtomicU64::new(0)),
            since_ack: (0, 0),
            keepalive: None,
            finished: false,
            stdin,
            stdin_sent: 0,
            stdin_written: 0,
        })
    }
}

/// A running exec on an agent. Dropping it before the end cancels the command.
pub struct Exec {
    bus: Arc<Bus>,
    name: String,
    replies: async_nats::Subscriber,
    connect_timeout: Duration,
    /// The exec's control subject, once `started` came.
    control: Option<String>,
    /// The next seq to take.
    expected: u64,
    /// The seq a resend was asked from (once per gap).
    asked_for: Option<u64>,
    /// The highest seq consumed, for the keepalive's ack.
    consumed: Arc<AtomicU64>,
    /// Bytes and events consumed since the last ack.
    since_ack: (u64, u32),
    keepalive: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
    stdin: Bytes,
    stdin_sent: usize,
    stdin_written: u64,
}

impl Exec {
    /// The next event, in order; `None` after the exit.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        while !self.finished {
            let wait = match self.control {
                None => self.connect_timeout,
                Some(_) => AGENT_SILENCE,
            };
            let message = match tokio::time::timeout(wait, self.replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err(Error::Protocol("nats: the connection closed".into())),
                Err(_) if self.control.is_none() => {
                    return Err(self.unreachable(format!("not responding within {wait:?}")));
                }
                Err(_) => {
                    return Err(Error::Protocol(format!(
                        "agent {} stopped answering ({wait:?} without a message); \
                         it kills the command when it hears nothing from us",
                        self.name
                    )));
                }
            };
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(self.unreachable("not responding (no agent of that name)".into()));
            }
            let event = NatsExecEvent::decode(message.payload).map_err(|e| {
                Error::Protocol(format!(
                    "agent {}: a reply is not NatsExecEvent: {e}",
                    self.name
                ))
            })?;
            if event.seq == 0 {
                // A keepalive comes after a second of nothing else, so a
                // resend asked for before it has arrived by now, or was lost:
                // ask again.
                if event.sent >= self.expected {
                    self.asked_for = None;
                    self.ask_again().await;
                }
                continue;
            }
            if event.seq < self.expected {
                continue;
            }
            if event.seq > self.expected {
                self.ask_again().await;
                continue;
            }
            self.expected += 1;
            self.asked_for = None;
            if let Some(event) = self.take(event.event).await? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// One event in order: what the caller sees of it, if anything.
    async fn take(
        &mut self,
        event: Option<nats_exec_event::Event>,
    ) -> Result<Option<Event>, Error> {
        let seq = self.expected - 1;
        let event = match event {
            Some(nats_exec_event::Event::Started(started)) => {
                self.control = Some(started.control.clone());
                self.keepalive = Some(tokio::spawn(keepalive(
                    self.bus.client.clone(),
                    started.control,
                    self.consumed.clone(),
                )));
                self.send_stdin().await;
                Event::Started {
                    pid: started.pid,
                    exec_id: started.exec_id,
                }
            }
            Some(nats_exec_event::Event::Stdout(bytes)) => {
                self.consumed(seq, bytes.len()).await;
                Event::Stdout(bytes)
            }
            Some(nats_exec_event::Event::Stderr(bytes)) => {
                self.consumed(seq, bytes.len()).await;
                Event::Stderr(bytes)
            }
            Some(nats_exec_event::Event::StdinWritten(total)) => {
                self.stdin_written = total;
                self.consumed(seq, 0).await;
                self.send_stdin().await;
                return Ok(None);
            }
            Some(nats_exec_event::Event::Exit(exit)) => {
                self.finish(seq).await;
                Event::Exit(exit.into())
            }
            Some(nats_exec_event::Event::Error(error)) => {
                self.finish(seq).await;
                let status = tonic::Status::new(tonic::Code::from(error.code), error.message);
                return Err(Error::Status(status));
            }
            None => return Ok(None),
        };
        Ok(Some(event))
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::Connect {
            addr: format!("agent {}", self.name),
            reason,
        }
    }

    /// The exit (or an error) was taken: say so, and stop the keepalive.
    async fn finish(&mut self, seq: u64) {
        self.finished = true;
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        self.consumed.store(seq, Ordering::Relaxed);
        self.ack(false).await;
    }

    /// Counts a consumed event; acknowledges every quarter window.
    async fn consumed(&mut self, seq: u64, bytes: usize) {
        self.consumed.store(seq, Ordering::Relaxed);
        self.since_ack.0 += bytes as u64;
        self.since_ack.1 += 1;
        if self.since_ack.0 >= self.bus.window / 4 || self.since_ack.1 >= 256 {
            self.ack(false).await;
        }
    }

    /// Missing events: ask for them once per gap.
    async fn ask_again(&mut self) {
        if self.asked_for != Some(self.expected) && self.control.is_some() {
            self.asked_for = Some(self.expected);
            self.ack(true).await;
        }
    }

    async fn ack(&mut self, resend: bool) {
        self.since_ack = (0, 0);
        let ack = Ack {
            seq: self.consumed.load(Ordering::Relaxed),
            resend,
        };
        self.send(nats_exec_input::Event::Ack(ack)).await;
    }

    /// Stdin within the window; EOF once it is all sent.
    async fn send_stdin(&mut self) {
        if self.stdin.is_empty() && self.stdin_sent == 0 {
            return;
        }
        while self.stdin_sent < self.stdin.len()
            && (self.stdin_sent as u64) < self.stdin_written + STDIN_WINDOW
        {
            let room = (self.stdin_written + STDIN_WINDOW - self.stdin_sent as u64) as usize;
            let end = self
                .stdin
                .len()
                .min(self.stdin_sent + STDIN_CHUNK.min(room));
            let chunk = self.stdin.slice(self.stdin_sent..end);
            self.stdin_sent = end;
            self.send(nats_exec_input::Event::Stdin(chunk)).await;
            if self.stdin_sent == self.stdin.len() {
                self.send(nats_exec_input::Event::StdinEof(true)).await;
            }
        }
    }

    async fn send(&self, event: nats_exec_input::Event) {
        if let Some(control) = &self.control {
            let message = NatsExecInput { event: Some(event) };
            let _ = self
                .bus
                .client
                .publish(control.clone(), message.encode_to_vec().into())
                .await;
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if self.finished {
            return;
        }
        // Interrupted (Ctrl-C) or given up on: the agent kills the command.
        if let Some(control) = self.control.take() {
            let client = self.bus.client.clone();
            let cancel = NatsExecInput {
                event: Some(nats_exec_input::Event::Cancel(true)),
            };
            self.bus.cancels.spawn(async move {
                let _ = client.publish(control, cancel.encode_to_vec().into()).await;
            });
        }
    }
}

/// Acknowledges what was consumed, every second, until aborted.
async fn keepalive(client: async_nats::Client, control: String, consumed: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ack = NatsExecInput {
            event: Some(nats_exec_input::Event::Ack(Ack {
                seq: consumed.load(Ordering::Relaxed),
                resend: false,
            })),
        };
        if client
            .publish(control.clone(), ack.encode_to_vec().into())
            .await
            .is_err()
        {
            return;
        }
    }
}
