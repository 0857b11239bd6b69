//! What an exec is, as both listeners and the audit log see it: the request
//! (`ExecSpec`), who asked (`Caller`), what it produces (`Event`), how it ended
//! (`ExitReport`), and why it could not start (`RunError`). Nothing here runs
//! anything, so any file may import it.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// What to run: a command line for the shell, an argv run directly, or the
/// server user's login shell (interactive tty sessions without a command).
#[derive(Debug, Clone)]
pub enum Program {
    Shell(String),
    Argv(Vec<String>),
    LoginShell,
}

/// Where the command's stdin comes from.
#[derive(Debug, Clone)]
pub enum StdinMode {
    /// Empty, like `</dev/null`: nothing waits on an open pipe.
    Empty,
    /// Fed, then closed.
    Bytes(Bytes),
    /// Written through `Execution::input` as it arrives (sessions).
    Stream,
}

/// One request to run something; validated by `Runner::start`.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdin: StdinMode,
    /// The request's own `timeout_ms`; `None` means the server default.
    pub timeout: Option<Duration>,
    /// The caller's gRPC deadline (`grpc-timeout`), counted from the start
    /// like `timeout`; the smaller of the two ends the exec.
    pub deadline: Option<Duration>,
    /// Run on a pseudo-terminal of (rows, cols); stdout and stderr merge.
    pub tty: Option<(u16, u16)>,
    /// The consumer keeps every chunk until the exit (the legacy listener's
    /// answer), so each bulk read lands in fresh memory, which is then mapped
    /// in ahead of the read (see `pump::prefault`). A streaming consumer frees
    /// chunks as it sends them and their memory is reused as it is.
    pub holds_output: bool,
    /// Output this consumer takes at most (the legacy answer's limit); the
    /// smaller of it and `--max-output` applies, and reaching it stops the
    /// exec as `Stop::OutputLimit` with `truncated` set.
    pub max_output: Option<u64>,
}

/// Who asked, for the audit line.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: String,
    pub principal: String,
    pub listener: &'static str,
}

/// One event of a running exec, in order: chunks, then exactly one `Exit`.
#[derive(Debug)]
pub enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitReport),
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Code(i32),
    Signal(i32),
}

/// Why rexecd ended an exec before its main process exited by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `timeout_ms` of the request, or `--default-timeout`.
    Timeout,
    /// The caller's gRPC deadline.
    Deadline,
    /// The client went away (cancel, disconnect).
    ClientGone,
    /// rexecd's shutdown grace passed.
    Shutdown,
    /// `--max-output`, or the consumer's own limit, was reached.
    OutputLimit,
}

impl Stop {
    /// The word in the audit line's `stopped_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Timeout => "timeout_ms",
            Stop::Deadline => "deadline",
            Stop::ClientGone => "client_gone",
            Stop::Shutdown => "shutdown",
            Stop::OutputLimit => "output_limit",
        }
    }
}

/// CPU time of every process the exec ran (cgroup `cpu.stat`), or of the
/// main process and what it reaped where no cgroup could be made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

#[derive(Debug, Clone)]
pub struct ExitReport {
    pub termination: Termination,
    /// `None`: the main process ended by itself.
    pub stopped_by: Option<Stop>,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
    pub cpu: CpuTime,
}

impl ExitReport {
    /// A timeout of either kind ended it.
    pub fn timed_out(&self) -> bool {
        matches!(self.stopped_by, Some(Stop::Timeout | Stop::Deadline))
    }
}

/// Why an exec could not start; each maps to one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    InvalidArgument(String),
    NotFound(String),
    PermissionDenied(String),
    ResourceExhausted(String),
    Internal(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::InvalidArgument(m)
            | RunError::NotFound(m)
            | RunError::PermissionDenied(m)
            | RunError::ResourceExhausted(m)
            | RunError::Internal(m) => f.write_str(m),
        }
    }
}
