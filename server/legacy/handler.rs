//! One legacy connection: requests one after the other, each run to its exit
//! and answered whole. Its first request must begin within
//! `--legacy-first-request-timeout`; after that a connection that makes no
//! progress for `--legacy-idle-timeout` is closed. HTTP runs nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rexec::legacy::{LegacyError, Request, RequestCodec, Response, ResponseHeader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;

use super::answer::{Answer, OutputBuffer, await_ready, write_segments};
use super::listener::Shared;
use super::reader::{self, BudgetedReader};
use crate::memory::Reservation;
use crate::metrics::{self, Rejection};
use crate::runner::types::{Caller, Event, ExecSpec, Program, StdinMode};

/// How long a request start that later bytes must decide (under 4 bytes that
/// could begin a length prefix, an HTTP method cut short, long text) waits
/// for more bytes. Checked on two ticks, so the wait is one to two of these.
const SHORT_COMMAND_GRACE: Duration = Duration::from_millis(50);
/// Read buffer: the classic server takes a text command from one read, so one
/// read must be able to hold the largest text command.
const READ_BUFFER_BYTES: usize = rexec::legacy::MAX_TEXT_COMMAND_BYTES;

/// A decoded request and the budget its stdin holds until its exec ends.
struct Incoming {
    request: Request,
    stdin_held: Reservation,
}

pub struct Handler {
    requests: FramedRead<BudgetedReader, RequestCodec>,
    /// Answers go out with TCP_NODELAY in as few writes as the kernel takes
    /// (writev of the header and the output's chunks), so no part waits for
    /// an ACK of the one before.
    writer: OwnedWriteHalf,
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// A request that arrived while the previous one ran (a pipelining client).
    pending: Option<Result<Incoming, LegacyError>>,
    opened: Instant,
    /// No request has been read yet: the first-request timeout applies.
    first: bool,
}

impl Handler {
    pub fn new(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Handler {
        let (reader, writer) = stream.into_split();
        let reader = BudgetedReader::new(reader, &shared.memory);
        Handler {
            requests: FramedRead::with_capacity(reader, RequestCodec::new(), READ_BUFFER_BYTES),
            writer,
            peer,
            shared,
            pending: None,
            opened: Instant::now(),
            first: true,
        }
    }

    pub async fn run(mut self, _permit: OwnedSemaphorePermit) {
        let _open = metrics::get().legacy_connection(self.shared.framing.listener());
        tracing::debug!(peer = %self.peer, "legacy: connection open");
        loop {
            let next = match self.pending.take() {
                Some(next) => Some(next),
                None => self.next_request().await,
            };
            let incoming = match next {
                None => break,
                Some(Err(LegacyError::Io(e))) => {
                    if let Some(exhausted) = reader::exhausted(&e) {
                        tracing::info!(peer = %self.peer, "legacy: request refused: {exhausted}");
                        metrics::get().rejected(Rejection::Limit);
                        self.answer(Response::error(exhausted.to_string())).await;
                    } else {
                        tracing::debug!(peer = %self.peer, "legacy: read failed: {e}");
                    }
                    break;
                }
                Some(Err(LegacyError::Http(why))) => {
                    metrics::get().rejected(Rejection::Invalid);
                    self.warn_http(why);
                    break;
                }
                Some(Err(LegacyError::BadMessage(message))) => {
                    tracing::info!(peer = %self.peer, "legacy: bad request: {message}");
                    metrics::get().rejected(Rejection::Invalid);
                    self.answer(Response::error(message)).await;
                    break;
                }
                Some(Ok(incoming)) => incoming,
            };
            self.first = false;
            if self.shared.shutdown.is_draining() {
                metrics::get().rejected(Rejection::ShuttingDown);
                self.answer(Response::error("server is shutting down"))
                    .await;
                break;
            }
            let Some(answer) = self.execute(incoming).await else {
                break;
            };
            let refused = answer.is_refusal();
            // Once draining, a connection ends with the answer it was owed.
            if !self.answer(answer).await || refused || self.shared.shutdown.is_draining() {
                break;
            }
        }
        tracing::debug!(peer = %self.peer, "legacy: connection closed");
    }

    /// A browser page can make any site's visitor send this; say so, rarely.
    fn warn_http(&self, why: &str) {
        let logged = self
            .shared
            .http_warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hit();
        if let Some(count) = logged {
            tracing::warn!(
                peer = %self.peer,
                count,
                "legacy: closed a connection whose request {why}, without running anything; \
                 the legacy port is not an HTTP endpoint (a web page can send requests to \
                 loopback ports)"
            );
        }
    }

    /// When the connection is given up on if no byte arrives: the first
    /// request's start is due `first_request_timeout` after the connection
    /// opened (until a framed header is in); any wait ends `idle_timeout`
    /// after the last progress.
    fn deadline(&self, last_progress: Instant) -> Option<Instant> {
        let config = &self.shared.config;
        let idle = config.idle_timeout.map(|idle| last_progress + idle);
        let first = config
            .first_request_timeout
            .filter(|_| self.first && !self.requests.decoder().reading_stdin())
            .map(|limit| self.opened + limit);
        match (idle, first) {
            (Some(idle), Some(first)) => Some(idle.min(first)),
            (idle, first) => idle.or(first),
        }
    }

    fn timed_out(&self) {
        if self.first {
            tracing::debug!(peer = %self.peer, "legacy: no request within the first-request timeout; closed");
        } else {
            tracing::debug!(peer = %self.peer, "legacy: idle connection closed");
        }
    }

    /// Waits for the next request; `None` on EOF, timeout or shutdown.
    async fn next_request(&mut self) -> Option<Result<Incoming, LegacyError>> {
        let mut last_progress = Instant::now();
        let mut read_so_far = self.requests.get_ref().total_read();
        // Wait for a first byte here, where shutdown may end the wait:
        // nothing is lost between requests.
        if self.requests.read_buffer().is_empty() {
            let deadline = self.deadline(last_progress);
            tokio::select! {
                readable = self.requests.get_ref().readable() => {
                    if readable.is_err() {
                        return None;
                    }
                }
                () = sleep_until_or_never(deadline) => {
                    self.timed_out();
                    return None;
                }
                () = self.shared.shutdown.draining() => return None,
            }
        }
        let mut undecided_len = None;
        loop {
            let deadline = self.deadline(last_progress);
            tokio::select! {
                next = self.requests.next() => return next.map(|next| next.map(|r| self.settle(r))),
                () = sleep_until_or_never(deadline) => {
                    self.timed_out();
                    return None;
                }
                () = tokio::time::sleep(SHORT_COMMAND_GRACE) => {
                    let read = self.requests.get_ref().total_read();
                    if read != read_so_far {
                        (read_so_far, last_progress) = (read, Instant::now());
                    }
                    let buffer = self.requests.read_buffer();
                    if !self.requests.decoder().is_undecided(buffer) {
                        undecided_len = None;
                    } else if undecided_len == Some(buffer.len()) {
                        // No byte came to decide it: take it as it is.
                        let buffer = self.requests.read_buffer_mut();
                        return Some(RequestCodec::short_command(buffer).map(|r| self.settle(r)));
                    } else {
                        undecided_len = Some(buffer.len());
                    }
                }
            }
        }
    }

    /// A request is in: its stdin's budget goes with it.
    fn settle(&mut self, request: Request) -> Incoming {
        let stdin_len = request.stdin.as_ref().map_or(0, Bytes::len);
        let still_buffered = self.requests.read_buffer().len();
        let stdin_held = self.requests.get_mut().settle(stdin_len, still_buffered);
        Incoming {
            request,
            stdin_held,
        }
    }

    /// Runs one request to its exit, holding its output up to the limit; `None`
    /// when the client left (the exec is then cancelled).
    async fn execute(&mut self, incoming: Incoming) -> Option<Answer> {
        // Held until the exec ends: the runner writes the stdin as the child reads it.
        let Incoming {
            request,
            stdin_held: _stdin_held,
        } = incoming;
        if request.command.trim().is_empty() {
            return Some(empty_answer());
        }
        let spec = exec_spec(request, self.shared.config.max_output_bytes);
        let caller = Caller {
            peer: self.peer.to_string(),
            principal: "anonymous".into(),
            listener: self.shared.framing.listener(),
        };
        let started = Instant::now();
        let mut execution = match self.shared.runner.start(spec, caller).await {
            Ok(execution) => execution,
            Err(e) => {
                metrics::get()
                    .rejected(Rejection::of(crate::service::status_from(e.clone()).code()));
                return Some(Response::error(e.to_string()).into());
            }
        };
        let mut output = OutputBuffer::new(
            self.shared.config.max_output_bytes,
            self.shared.memory.none(),
        );
        loop {
            let was_out_of_budget = output.out_of_budget();
            tokio::select! {
                event = execution.events.recv() => match event {
                    Some(Event::Stdout(chunk)) => output.push_stdout(chunk),
                    Some(Event::Stderr(chunk)) => output.push_stderr(chunk),
                    Some(Event::Exit(report)) => {
                        return Some(output.answer(&report, &execution.exec_id));
                    }
                    None => {
                        return Some(Response::error("the command ended without an exit status").into());
                    }
                },
                // The client may send its next request early; an EOF here means it left.
                next = self.requests.next(), if self.pending.is_none() => match next {
                    None => {
                        tracing::debug!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: client left; cancelling");
                        return None;
                    }
                    Some(Err(LegacyError::Io(e))) if reader::exhausted(&e).is_none() => {
                        tracing::debug!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: client left; cancelling");
                        return None;
                    }
                    Some(next) => self.pending = Some(next.map(|r| self.settle(r))),
                },
            }
            if output.out_of_budget() && !was_out_of_budget {
                tracing::info!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: the memory budget (--memory-budget) is used up; the answer is cut");
            }
            if output.over_discard_allowance() {
                // Out of budget, a command still writing is stopped like a writer
                // whose reader has gone: dropping the events kills its group.
                tracing::info!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: output past what the memory budget can hold; stopping the command");
                let exec_id = execution.exec_id.clone();
                drop(execution);
                return Some(output.stopped_answer(started.elapsed(), &exec_id));
            }
        }
    }

    /// Sends one answer; false if the client cannot take it (or, in
    /// `length-ready`, does not ask for the body with `recv_ready`).
    async fn answer(&mut self, answer: impl Into<Answer>) -> bool {
        let mut answer = answer.into();
        metrics::get().legacy_answer(self.shared.framing.listener(), answer.is_refusal());
        // The held output is given back once it has left.
        let _held = answer.held.take();
        let wire = match answer.into_wire(self.shared.framing) {
            Ok(wire) => wire,
            Err(e) => {
                tracing::error!(peer = %self.peer, "legacy: cannot encode the answer: {e}");
                return false;
            }
        };
        // A client that stops reading its answer is idle too.
        let idle = self.shared.config.idle_timeout;
        if let Err(e) = write_segments(&mut self.writer, wire.first, idle).await {
            tracing::debug!(peer = %self.peer, "legacy: cannot send the answer: {e}");
            return false;
        }
        let Some(body) = wire.after_ready else {
            return true;
        };
        // The bytes after the request are the client's: take them out of the
        // request reader, put back what follows `recv_ready`.
        let mut buffered = self.requests.read_buffer_mut().split();
        let ready = await_ready(self.requests.get_mut(), &mut buffered, idle).await;
        self.requests.read_buffer_mut().unsplit(buffered);
        if let Err(e) = ready {
            tracing::info!(peer = %self.peer, listener = self.shared.framing.listener(), "legacy: closing the connection: {e}");
            return false;
        }
        match write_segments(&mut self.writer, body, idle).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "legacy: cannot send the answer: {e}");
                false
            }
        }
    }
}

/// The answer to a command that is only blanks: no output, exit 0.
pub(super) fn empty_answer() -> Answer {
    Answer::from(Response {
        header: ResponseHeader {
            exit_code: Some(0),
            timed_out: Some(false),
            truncated: Some(false),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// What the runner runs for a legacy request: its text through the shell, the
/// output held for one answer of at most `max_output_bytes`.
pub(super) fn exec_spec(request: Request, max_output_bytes: usize) -> ExecSpec {
    ExecSpec {
        program: Program::Shell(request.command),
        env: Vec::new(),
        cwd: None,
        stdin: request.stdin.map_or(StdinMode::Empty, StdinMode::Bytes),
        timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        deadline: None,
        tty: None,
        holds_output: true,
        max_output: Some(OutputBuffer::runner_limit(max_output_bytes)),
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
