//! The gRPC `RemoteExec` service: decode the request, hand it to the runner,
//! map runner events to responses and runner errors to statuses.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rexec::proto::remote_exec_server::RemoteExec;
use rexec::{
    ExecRequest, ExecResponse, Exit, SessionRequest, Started, exec_response, exit, session_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::audit::Audit;
use crate::memory::{MemoryBudget, Reservation};
use crate::runner::types::{
    Caller, Event, ExecSpec, Program, RunError, StdinMode, Stop, Termination,
};
use crate::runner::{ExecInput, Execution, Runner};
use crate::shutdown::Shutdown;

/// Session stdin chunks the runner may still hold: its queue of 8 and the
/// one it is writing. Once this many later chunks are queued, a chunk has
/// been written and its budget is given back.
const STDIN_CHUNKS_IN_RUNNER: usize = 9;

type EventStream = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

pub struct ExecService {
    runner: Arc<Runner>,
    shutdown: Shutdown,
    audit: Audit,
    /// Stdin in flight is charged here (`--memory-budget`).
    memory: MemoryBudget,
}

impl ExecService {
    pub fn new(
        runner: Arc<Runner>,
        shutdown: Shutdown,
        audit: Audit,
        memory: MemoryBudget,
    ) -> Self {
        ExecService {
            runner,
            shutdown,
            audit,
            memory,
        }
    }

    /// Every refused call leaves one audit line (a call that ran has its exec line).
    fn audited<T>(&self, caller: &Caller, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.audit
                .refused(&caller.peer, &caller.principal, caller.listener, status);
        }
        result
    }
}

#[tonic::async_trait]
impl RemoteExec for ExecService {
    type ExecStream = EventStream;
    type SessionStream = EventStream;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<EventStream>, Status> {
        let caller = caller_of(&request);
        let started = async {
            self.admit()?;
            let deadline = deadline_of(request.metadata());
            // tonic has decoded it already; held until the exec ends, by when it is written.
            let stdin_held = reserve(&self.memory, request.get_ref().stdin.len())?;
            let mut spec = spec_from_request(request.into_inner(), false)?;
            spec.deadline = deadline;
            let execution = self
                .runner
                .start(spec, caller.clone())
                .await
                .map_err(status_from)?;
            Ok((execution, stdin_held))
        };
        let (execution, stdin_held) = self.audited(&caller, started.await)?;
        Ok(Response::new(event_stream(execution, None, stdin_held)))
    }

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller_of(&request);
        let started = self.start_session(request, caller.clone()).await;
        self.audited(&caller, started)
    }
}

impl ExecService {
    async fn start_session(
        &self,
        request: Request<Streaming<SessionRequest>>,
        caller: Caller,
    ) -> Result<Response<EventStream>, Status> {
        self.admit()?;
        let deadline = deadline_of(request.metadata());
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await
            .map_err(|status| crate::limits::request_too_large(&status).unwrap_or(status))?
            .ok_or_else(|| Status::invalid_argument("session ended before its start message"))?;
        let Some(session_request::Event::Start(start)) = first.event else {
            return Err(Status::invalid_argument(
                "the first session message must be start",
            ));
        };
        let initial_stdin = start.stdin.clone();
        let mut spec = spec_from_request(start, true)?;
        spec.stdin = StdinMode::Stream;
        spec.deadline = deadline;
        let mut execution = self.runner.start(spec, caller).await.map_err(status_from)?;
        let input = execution
            .input
            .take()
            .ok_or_else(|| Status::internal("session has no input"))?;
        let (errors_tx, errors_rx) = mpsc::channel(1);
        let stdin = StdinBudget {
            memory: self.memory.clone(),
            queued: VecDeque::new(),
        };
        tokio::spawn(forward_input(
            inbound,
            input,
            initial_stdin,
            stdin,
            errors_tx,
        ));
        let nothing_held = self.memory.none();
        Ok(Response::new(event_stream(
            execution,
            Some(errors_rx),
            nothing_held,
        )))
    }

    /// Checks that a new exec may start.
    fn admit(&self) -> Result<(), Status> {
        if self.shutdown.is_draining() {
            return Err(Status::unavailable("server is shutting down"));
        }
        Ok(())
    }
}

/// Who sent a gRPC request: its peer, and the principal the auth
/// interceptor found ("anonymous" when no credentials are required).
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    Caller {
        peer: request
            .remote_addr()
            .map_or_else(|| "unknown".into(), |a| a.to_string()),
        principal: request
            .extensions()
            .get::<crate::auth::Principal>()
            .map_or_else(|| "anonymous".into(), |p| p.0.clone()),
        listener: "grpc",
    }
}

/// RESOURCE_EXHAUSTED past the memory budget.
fn reserve(memory: &MemoryBudget, bytes: usize) -> Result<Reservation, Status> {
    memory
        .reserve(bytes)
        .map_err(|exhausted| Status::resource_exhausted(exhausted.to_string()))
}

/// The budget of a session's stdin chunks the runner may still hold.
struct StdinBudget {
    memory: MemoryBudget,
    queued: VecDeque<Reservation>,
}

impl StdinBudget {
    /// Charges a chunk about to be queued, giving back those written by now.
    fn charge(&mut self, bytes: usize) -> Result<(), Status> {
        while self.queued.len() >= STDIN_CHUNKS_IN_RUNNER {
            self.queued.pop_front();
        }
        self.queued.push_back(reserve(&self.memory, bytes)?);
        Ok(())
    }
}

/// `started`, then the runner's events; a session's input errors end it with
/// their status. When tonic drops this stream (client gone), the runner sees
/// its channel close and kills the group. `held` (the request's stdin) is
/// given back at the exit, or when the stream is dropped.
fn event_stream(
    execution: Execution,
    errors: Option<mpsc::Receiver<Status>>,
    held: Reservation,
) -> EventStream {
    let started = ExecResponse {
        event: Some(exec_response::Event::Started(Started {
            pid: execution.pid,
            exec_id: execution.exec_id,
        })),
    };
    let mut held = Some(held);
    let events = ReceiverStream::new(execution.events).map(move |event| {
        if matches!(event, Event::Exit(_)) {
            held.take();
        }
        response_from(event)
    });
    match errors {
        None => Box::pin(tokio_stream::once(Ok(started)).chain(events)),
        Some(errors) => {
            let errors = ReceiverStream::new(errors).map(Err);
            Box::pin(tokio_stream::once(Ok(started)).chain(events.merge(errors)))
        }
    }
}

/// Applies a session's client messages to the running exec until it ends.
/// A client half-close is EOF on stdin, like `stdin_eof`.
async fn forward_input(
    mut inbound: Streaming<SessionRequest>,
    input: ExecInput,
    initial_stdin: bytes::Bytes,
    mut stdin_budget: StdinBudget,
    errors: mpsc::Sender<Status>,
) {
    if !initial_stdin.is_empty() {
        if let Err(status) = stdin_budget.charge(initial_stdin.len()) {
            let _ = errors.send(status).await;
            return;
        }
        tokio::select! {
            _ = input.write(initial_stdin) => {}
            () = input.finished() => return,
        }
    }
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = input.finished() => return,
        };
        let event = match message {
            Ok(Some(request)) => request.event,
            Ok(None) => {
                input.close().await;
                return;
            }
            Err(status) => {
                // A stdin message over --max-request-size ends the session
                // with its status; any other error means the client is gone,
                // which the response side notices and cancels.
                if let Some(status) = crate::limits::request_too_large(&status) {
                    let _ = errors.send(status).await;
                }
                return;
            }
        };
        match event {
            Some(session_request::Event::Stdin(bytes)) if !bytes.is_empty() => {
                if let Err(status) = stdin_budget.charge(bytes.len()) {
                    let _ = errors.send(status).await;
                    return;
                }
                tokio::select! {
                    _ = input.write(bytes) => {}
                    () = input.finished() => return,
                }
            }
            Some(session_request::Event::StdinEof(true)) => input.close().await,
            Some(session_request::Event::Signal(name)) => match rexec::signals::number(&name) {
                Some(signal) => input.signal(signal),
                None => {
                    let _ = errors
                        .send(Status::invalid_argument(format!("unknown signal {name:?}")))
                        .await;
                    return;
                }
            },
            Some(session_request::Event::Resize(size)) => {
                input.resize(clamp_u16(size.rows), clamp_u16(size.cols))
            }
            Some(session_request::Event::Start(_)) => {
                let _ = errors
                    .send(Status::invalid_argument(
                        "start may only be the first session message",
                    ))
                    .await;
                return;
            }
            Some(session_request::Event::Stdin(_) | session_request::Event::StdinEof(false))
            | None => {}
        }
    }
}

fn clamp_u16(value: u32) -> u16 {
    value.clamp(1, u16::MAX.into()) as u16
}

/// Turns the wire request into a runner spec; shape errors are INVALID_ARGUMENT.
/// A tty session without a command runs the login shell, as `ssh host` does.
pub fn spec_from_request(request: ExecRequest, session: bool) -> Result<ExecSpec, Status> {
    let program = match (request.command.is_empty(), request.argv.is_empty()) {
        (false, true) => Program::Shell(request.command),
        (true, false) => Program::Argv(request.argv),
        (false, false) => {
            return Err(Status::invalid_argument(
                "set either command or argv, not both",
            ));
        }
        (true, true) if session && request.tty => Program::LoginShell,
        (true, true) => return Err(Status::invalid_argument("set one of command or argv")),
    };
    let tty = request.tty.then(|| {
        let size = request.tty_size.unwrap_or_default();
        let rows = if size.rows == 0 {
            24
        } else {
            clamp_u16(size.rows)
        };
        let cols = if size.cols == 0 {
            80
        } else {
            clamp_u16(size.cols)
        };
        (rows, cols)
    });
    let mut env: Vec<(String, String)> = request.env.into_iter().collect();
    env.sort();
    Ok(ExecSpec {
        program,
        env,
        cwd: (!request.cwd.is_empty()).then(|| PathBuf::from(request.cwd)),
        stdin: if request.stdin.is_empty() {
            StdinMode::Empty
        } else {
            StdinMode::Bytes(request.stdin)
        },
        timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        deadline: None,
        tty,
        holds_output: false,
        max_output: None,
    })
}

pub fn status_from(error: RunError) -> Status {
    match error {
        RunError::InvalidArgument(m) => Status::invalid_argument(m),
        RunError::NotFound(m) => Status::not_found(m),
        RunError::PermissionDenied(m) => Status::permission_denied(m),
        RunError::ResourceExhausted(m) => Status::resource_exhausted(m),
        RunError::Internal(m) => Status::internal(m),
    }
}

/// One runner event as a response. An exec ended by the caller's deadline
/// ends the call with DEADLINE_EXCEEDED instead of its `exit` (the audit line
/// keeps how it ended).
pub fn response_from(event: Event) -> Result<ExecResponse, Status> {
    let event = match event {
        Event::Stdout(bytes) => exec_response::Event::Stdout(bytes),
        Event::Stderr(bytes) => exec_response::Event::Stderr(bytes),
        Event::Exit(report) if report.stopped_by == Some(Stop::Deadline) => {
            return Err(Status::deadline_exceeded(format!(
                "the call's deadline passed after {} ms: the command was killed",
                report.duration.as_millis()
            )));
        }
        Event::Exit(report) => exec_response::Event::Exit(Exit {
            status: Some(match report.termination {
                Termination::Code(code) => exit::Status::Code(code),
                Termination::Signal(signal) => exit::Status::Signal(rexec::signals::name(signal)),
            }),
            timed_out: report.timed_out(),
            duration_ms: report.duration.as_millis() as u64,
            stdout_bytes: report.stdout_bytes,
            stderr_bytes: report.stderr_bytes,
            truncated: report.truncated,
            cpu_user_us: report.cpu.user.as_micros() as u64,
            cpu_system_us: report.cpu.system.as_micros() as u64,
        }),
    };
    Ok(ExecResponse { event: Some(event) })
}

/// The caller's deadline from its `grpc-timeout` header (gRPC over HTTP/2:
/// up to 8 digits and a unit, H M S m u n). tonic bounds only the call's
/// start with it; a streaming exec is bounded here, through the runner.
fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match value.as_bytes()[value.len() - 1] {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_parse_as_the_spec_says() {
        let parse = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            deadline_of(&metadata)
        };
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "more than 8 digits");
        assert_eq!(parse("S"), None);
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("-1S"), None);
        assert_eq!(deadline_of(&tonic::metadata::MetadataMap::new()), None);
    }
}
