//! The gRPC `RemoteExec` service: decode the request, hand it to the runner,
//! map runner events to responses and runner errors to statuses.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rexec::proto::remote_exec_server::RemoteExec;
use rexec::{ExecRequest, ExecResponse, Exit, SessionRequest, Started, exec_response, exit};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::runner::{Caller, Event, ExecSpec, Program, RunError, Runner, Termination};
use crate::shutdown::Shutdown;

type EventStream = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

pub struct ExecService {
    runner: Arc<Runner>,
    shutdown: Shutdown,
}

impl ExecService {
    pub fn new(runner: Arc<Runner>, shutdown: Shutdown) -> Self {
        ExecService { runner, shutdown }
    }
}

#[tonic::async_trait]
impl RemoteExec for ExecService {
    type ExecStream = EventStream;
    type SessionStream = EventStream;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<EventStream>, Status> {
        if self.shutdown.is_draining() {
            return Err(Status::unavailable("server is shutting down"));
        }
        let caller = Caller {
            peer: request
                .remote_addr()
                .map_or_else(|| "unknown".into(), |a| a.to_string()),
            principal: "anonymous".into(),
            listener: "grpc",
        };
        let spec = spec_from_request(request.into_inner())?;
        let execution = self.runner.start(spec, caller).map_err(status_from)?;
        let started = ExecResponse {
            event: Some(exec_response::Event::Started(Started {
                pid: execution.pid,
                exec_id: execution.exec_id,
            })),
        };
        // When tonic drops this stream (client gone), the runner sees its
        // channel close and kills the group.
        let events = ReceiverStream::new(execution.events).map(|event| Ok(response_from(event)));
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(started)).chain(events),
        )))
    }

    async fn session(
        &self,
        _request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented(
            "Session is not implemented yet; use Exec",
        ))
    }
}

/// Turns the wire request into a runner spec; shape errors are INVALID_ARGUMENT.
pub fn spec_from_request(request: ExecRequest) -> Result<ExecSpec, Status> {
    let program = match (request.command.is_empty(), request.argv.is_empty()) {
        (false, true) => Program::Shell(request.command),
        (true, false) => Program::Argv(request.argv),
        (false, false) => {
            return Err(Status::invalid_argument(
                "set either command or argv, not both",
            ));
        }
        (true, true) => return Err(Status::invalid_argument("set one of command or argv")),
    };
    if request.tty {
        return Err(Status::unimplemented("tty is not supported yet"));
    }
    let mut env: Vec<(String, String)> = request.env.into_iter().collect();
    env.sort();
    Ok(ExecSpec {
        program,
        env,
        cwd: (!request.cwd.is_empty()).then(|| PathBuf::from(request.cwd)),
        stdin: (!request.stdin.is_empty()).then_some(request.stdin),
        timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
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

fn response_from(event: Event) -> ExecResponse {
    let event = match event {
        Event::Stdout(bytes) => exec_response::Event::Stdout(bytes),
        Event::Stderr(bytes) => exec_response::Event::Stderr(bytes),
        Event::Exit(report) => exec_response::Event::Exit(Exit {
            status: Some(match report.termination {
                Termination::Code(code) => exit::Status::Code(code),
                Termination::Signal(signal) => exit::Status::Signal(rexec::signals::name(signal)),
            }),
            timed_out: report.timed_out,
            duration_ms: report.duration.as_millis() as u64,
            stdout_bytes: report.stdout_bytes,
            stderr_bytes: report.stderr_bytes,
            truncated: report.truncated,
        }),
    };
    ExecResponse { event: Some(event) }
}
