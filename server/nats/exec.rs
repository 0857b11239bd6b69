//! `rexec.v1.<name>.exec`: one command run for a NATS caller, with the same
//! checks, runner and audit as gRPC. Events go to the caller's reply subject
//! numbered; the caller acknowledges them on the exec's control subject and
//! the agent never has more than the window unacknowledged, so a slow caller
//! slows the command and a lost message is sent again (see `Outbox`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rexec::proto::{
    NatsError, NatsExecEvent, NatsExecInput, NatsExecRequest, NatsStarted, nats_exec_event,
    nats_exec_input,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use super::outbox::Outbox;
use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::runner::types::{Caller, Event, StdinMode};
use crate::runner::{ExecInput, Runner};
use crate::service::{response_from, spec_from_request, status_from};
use crate::shutdown::Shutdown;

/// How often an agent with nothing to say tells the caller it is still there
/// (a keepalive saying how far the stream has gone; see `Outbox::tick`).
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A caller silent this long is gone (crashed, or the broker is lost): the
/// exec is killed, as when a gRPC client disconnects.
pub const CALLER_SILENCE: Duration = Duration::from_secs(10);
/// After the exit, how long the agent waits for the caller to acknowledge it
/// (re-sending it meanwhile) before forgetting the exec.
const EXIT_LINGER: Duration = Duration::from_secs(10);
/// Stdin bytes queued towards the command; the caller keeps its own window of
/// unacknowledged stdin (`stdin_written`) no larger than this.
const STDIN_QUEUE_BYTES: u64 = 1024 * 1024;

/// What every exec handler shares.
pub struct ExecContext {
    pub client: async_nats::Client,
    pub name: String,
    pub runner: Arc<Runner>,
    pub shutdown: Shutdown,
    pub audit: Audit,
    pub auth: Authenticator,
}

/// Takes requests until the connection is drained; each runs on its own task.
pub async fn serve(context: Arc<ExecContext>, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        // Without a reply subject there is nobody to answer: nothing runs.
        let Some(reply) = request.reply else {
            tracing::debug!(subject = %request.subject, "nats: exec request without a reply subject");
            continue;
        };
        tokio::spawn(run(context.clone(), request.payload, reply.to_string()));
    }
}

async fn run(context: Arc<ExecContext>, payload: Bytes, reply: String) {
    let caller = Caller {
        peer: format!("nats:{reply}"),
        principal: "unauthenticated".into(),
        listener: "nats",
    };
    let request = match NatsExecRequest::decode(payload) {
        Ok(request) => request,
        Err(e) => {
            let status = Status::invalid_argument(format!("not a rexec.v1.NatsExecRequest: {e}"));
            return refuse(&context, &caller, &reply, status).await;
        }
    };
    let principal = match context.auth.principal_of_token(&request.token) {
        Ok(principal) => principal,
        Err(status) => return refuse(&context, &caller, &reply, status).await,
    };
    let caller = Caller {
        principal,
        ..caller
    };
    match start(&context, request, caller.clone(), &reply).await {
        Ok(()) => {}
        Err(status) => refuse(&context, &caller, &reply, status).await,
    }
}

/// Answers a request that runs nothing: one `error` event, one audit line.
async fn refuse(context: &ExecContext, caller: &Caller, reply: &str, status: Status) {
    tracing::debug!(peer = %caller.peer, "nats: refused: {}", status.message());
    context
        .audit
        .refused(&caller.peer, &caller.principal, caller.listener, &status);
    let event = NatsExecEvent {
        seq: 1,
        event: Some(nats_exec_event::Event::Error(error_of(&status))),
        sent: 1,
    };
    let _ = context
        .client
        .publish(reply.to_string(), event.encode_to_vec().into())
        .await;
}

fn error_of(status: &Status) -> NatsError {
    NatsError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

async fn start(
    context: &ExecContext,
    request: NatsExecRequest,
    caller: Caller,
    reply: &str,
) -> Result<(), Status> {
    if context.shutdown.is_draining() {
        return Err(Status::unavailable("server is shutting down"));
    }
    let exec = request
        .request
        .ok_or_else(|| Status::invalid_argument("the request has no command"))?;
    if exec.tty {
        return Err(Status::invalid_argument(
            "tty is not available over NATS: use the gRPC Session (rexec -t)",
        ));
    }
    let mut spec = spec_from_request(exec, false)?;
    let initial_stdin = match (&spec.stdin, request.stream_stdin) {
        (StdinMode::Bytes(bytes), true) => Some(bytes.clone()),
        _ => None,
    };
    if request.stream_stdin {
        spec.stdin = StdinMode::Stream;
    }
    // Random, so nobody who did not see the answer can steer the exec.
    let inbox = context.client.new_inbox();
    let id = inbox.rsplit('.').next().unwrap_or_default();
    let control = format!("rexec.v1.{}.ctl.{id}", context.name);
    let inputs = context
        .client
        .subscribe(control.clone())
        .await
        .map_err(|e| Status::unavailable(format!("nats: cannot subscribe to {control}: {e}")))?;
    let mut execution = context
        .runner
        .start(spec, caller)
        .await
        .map_err(status_from)?;
    let max_payload = context.client.server_info().max_payload;
    let mut outbox = Outbox::new(
        context.client.clone(),
        reply.to_string(),
        request.window_bytes,
        max_payload,
    );
    outbox
        .push(nats_exec_event::Event::Started(NatsStarted {
            pid: execution.pid,
            exec_id: execution.exec_id.clone(),
            control,
        }))
        .await;
    let stdin = execution.input.take().map(|input| {
        let input = Arc::new(input);
        Stdin::start(input, initial_stdin)
    });
    let conversation = Conversation {
        outbox,
        inputs,
        stdin,
        heard: Instant::now(),
    };
    conversation.run(execution.events).await;
    Ok(())
}

/// A streamed stdin: chunks go to a writer task, so a command that stops
/// reading never stops the agent from moving its output and acks.
struct Stdin {
    input: Arc<ExecInput>,
    chunks: mpsc::UnboundedSender<Option<Bytes>>,
    written: mpsc::UnboundedReceiver<u64>,
    /// Bytes given to the writer and not yet written.
    queued: u64,
    total_written: u64,
}

impl Stdin {
    fn start(input: Arc<ExecInput>, initial: Option<Bytes>) -> Stdin {
        let (chunks, mut to_write) = mpsc::unbounded_channel::<Option<Bytes>>();
        let (written_tx, written) = mpsc::unbounded_channel();
        let writer = input.clone();
        tokio::spawn(async move {
            while let Some(chunk) = to_write.recv().await {
                match chunk {
                    Some(bytes) => {
                        let len = bytes.len() as u64;
                        if !writer.write(bytes).await || written_tx.send(len).is_err() {
                            return;
                        }
                    }
                    None => return writer.close().await,
                }
            }
        });
        let mut stdin = Stdin {
            input,
            chunks,
            written,
            queued: 0,
            total_written: 0,
        };
        if let Some(bytes) = initial {
            stdin.queued += bytes.len() as u64;
            let _ = stdin.chunks.send(Some(bytes));
        }
        stdin
    }
}

/// One running exec and its caller.
struct Conversation {
    outbox: Outbox,
    inputs: async_nats::Subscriber,
    stdin: Option<Stdin>,
    /// When the caller was last heard from.
    heard: Instant,
}

impl Conversation {
    /// Streams events until the exit is acknowledged, or the caller goes
    /// silent or cancels (then `events` is dropped, which kills the exec).
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut exited: Option<Instant> = None;
        loop {
            let room = exited.is_none() && self.outbox.has_room();
            tokio::select! {
                event = events.recv(), if room => match event {
                    Some(event) => {
                        if matches!(event, Event::Exit(_)) {
                            exited = Some(Instant::now());
                        }
                        self.send(event).await;
                    }
                    // The runner ends the stream only after an exit.
                    None => exited = Some(Instant::now()),
                },
                Some(len) = written(&mut self.stdin) => {
                    let stdin = self.stdin.as_mut().expect("written implies stdin");
                    stdin.queued -= len;
                    stdin.total_written += len;
                    let total = stdin.total_written;
                    if exited.is_none() {
                        self.outbox.push(nats_exec_event::Event::StdinWritten(total)).await;
                    }
                }
                message = self.inputs.next() => {
                    let Some(message) = message else { return };
                    self.heard = Instant::now();
                    let applied = match NatsExecInput::decode(message.payload) {
                        Ok(input) => self.apply(input).await,
                        Err(e) => Applied::Refused(Status::invalid_argument(format!(
                            "a control message is not a rexec.v1.NatsExecInput: {e}"
                        ))),
                    };
                    match applied {
                        Applied::Done => {}
                        Applied::Cancel => {
                            return self.end(events, Status::cancelled(
                                "cancelled by the caller: the command was killed",
                            )).await;
                        }
                        Applied::Refused(status) => {
                            if exited.is_none() {
                                return self.end(events, status).await;
                            }
                        }
                    }
                    if exited.is_some() && self.outbox.is_empty() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if self.heard.elapsed() >= CALLER_SILENCE {
                        tracing::info!(
                            reply = %self.outbox.reply(),
                            "nats: caller silent for {CALLER_SILENCE:?}; the exec is killed"
                        );
                        return;
                    }
                    if exited.is_some_and(|at| at.elapsed() >= EXIT_LINGER) {
                        return;
                    }
                    self.outbox.tick().await;
                }
            }
        }
    }

    async fn send(&mut self, event: Event) {
        let event = match event {
            Event::Stdout(bytes) => return self.outbox.push_output(bytes, true).await,
            Event::Stderr(bytes) => return self.outbox.push_output(bytes, false).await,
            exit @ Event::Exit(_) => match response_from(exit) {
                Ok(rexec::ExecResponse {
                    event: Some(rexec::exec_response::Event::Exit(exit)),
                }) => nats_exec_event::Event::Exit(exit),
                Ok(_) => return,
                Err(status) => nats_exec_event::Event::Error(error_of(&status)),
            },
        };
        self.outbox.push(event).await;
    }

    async fn apply(&mut self, input: NatsExecInput) -> Applied {
        match input.event {
            Some(nats_exec_input::Event::Ack(ack)) => self.outbox.acked(ack.seq, ack.resend).await,
            Some(nats_exec_input::Event::Stdin(bytes)) => {
                let Some(stdin) = &mut self.stdin else {
                    return Applied::Refused(Status::invalid_argument(
                        "stdin sent to an exec without stream_stdin",
                    ));
                };
                stdin.queued += bytes.len() as u64;
                if stdin.queued > STDIN_QUEUE_BYTES {
                    return Applied::Refused(Status::resource_exhausted(format!(
                        "stdin sent past its window: at most {STDIN_QUEUE_BYTES} bytes may \
                         wait to be written (wait for stdin_written)"
                    )));
                }
                let _ = stdin.chunks.send(Some(bytes));
            }
            Some(nats_exec_input::Event::StdinEof(true)) => {
                if let Some(stdin) = &self.stdin {
                    let _ = stdin.chunks.send(None);
                }
            }
            Some(nats_exec_input::Event::Signal(name)) => match rexec::signals::number(&name) {
                Some(signal) => {
                    if let Some(stdin) = &self.stdin {
                        stdin.input.signal(signal);
                    }
                }
                None => {
                    return Applied::Refused(Status::invalid_argument(format!(
                        "unknown signal {name:?}"
                    )));
                }
            },
            Some(nats_exec_input::Event::Cancel(true)) => return Applied::Cancel,
            Some(
                nats_exec_input::Event::StdinEof(false) | nats_exec_input::Event::Cancel(false),
            )
            | None => {}
        }
        Applied::Done
    }

    /// Kills the exec (by dropping its events), says why as the last event,
    /// and keeps it available until acknowledged.
    async fn end(mut self, events: mpsc::Receiver<Event>, status: Status) {
        drop(events);
        self.outbox
            .push(nats_exec_event::Event::Error(error_of(&status)))
            .await;
        let ends = Instant::now() + EXIT_LINGER;
        let mut tick = tokio::time::interval(KEEPALIVE);
        while !self.outbox.is_empty() && Instant::now() < ends {
            tokio::select! {
                message = self.inputs.next() => {
                    let Some(message) = message else { return };
                    if let Ok(NatsExecInput { event: Some(nats_exec_input::Event::Ack(ack)) }) =
                        NatsExecInput::decode(message.payload)
                    {
                        self.outbox.acked(ack.seq, ack.resend).await;
                    }
                }
                _ = tick.tick() => self.outbox.tick().await,
            }
        }
    }
}

/// The next "written" report of a streamed stdin; never, without one.
async fn written(stdin: &mut Option<Stdin>) -> Option<u64> {
    match stdin {
        Some(stdin) => stdin.written.recv().await,
        None => std::future::pending().await,
    }
}

enum Applied {
    Done,
    Cancel,
    Refused(Status),
}
