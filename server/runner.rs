//! The process runner: the one place that spawns, reads pipes, kills and reaps.
//! Both listeners consume its stream of events; nothing else touches processes.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, AuditRecord};
use crate::limits::{ExecSlots, OutputBudget};
use crate::run_as::RunAs;
use crate::shutdown::Shutdown;

/// Bytes asked of a pipe per read at first; one chunk on the wire. 64 KiB is
/// the default pipe capacity, so one read empties a full pipe.
const CHUNK_SIZE: usize = 64 * 1024;
/// Once a read fills a whole chunk the child writes faster than we read: the
/// pipe grows to this (`F_SETPIPE_SZ`) and reads become this large, so a bulk
/// stream costs one wake-up, one read and one frame per MiB instead of per
/// 64 KiB. Interactive output never fills a chunk and stays as it was.
/// (BENCHMARKS.md, "Levers measured".)
const BULK_CHUNK_SIZE: usize = 1024 * 1024;
/// Pipes enlarged to `BULK_CHUNK_SIZE` at once. The kernel charges pipe
/// capacity to the user, and past `pipe-user-pages-soft` (64 MiB) every new
/// pipe of an unprivileged user is cut to 8 KiB; this stays well below it.
const MAX_BULK_PIPES: usize = 16;
/// Chunks buffered between the pipe readers and the consumer. With the pipes
/// themselves this bounds what one exec can hold in server memory: at most
/// 4 MiB of bulk chunks plus the pipe.
const EVENT_QUEUE: usize = 4;
/// A read buffer with less room left than this is replaced by a fresh one.
/// Small reads share one buffer until then, so a consumer that holds chunks
/// (a legacy answer) holds about what was read, not a buffer per read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// After the exec's group has been killed past the linger, a process that
/// escaped the group may still hold a pipe: read at most this much more.
const DRAIN_AFTER_STOP: u64 = 1024 * 1024;
/// Stdin chunks queued for a child; a full queue stops reading from the client.
const STDIN_QUEUE: usize = 8;
/// Signals and resizes queued; more than this at once are dropped.
const CONTROL_QUEUE: usize = 32;

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
    /// `None` means the server default.
    pub timeout: Option<Duration>,
    /// Run on a pseudo-terminal of (rows, cols); stdout and stderr merge.
    pub tty: Option<(u16, u16)>,
    /// The consumer keeps every chunk until the exit (the legacy listener's
    /// answer), so each bulk read lands in fresh memory, which is then mapped
    /// in ahead of the read (see `prefault`). A streaming consumer frees
    /// chunks as it sends them and their memory is reused as it is.
    pub holds_output: bool,
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

#[derive(Debug, Clone)]
pub struct ExitReport {
    pub termination: Termination,
    pub timed_out: bool,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
}

/// A spawned exec. Dropping `events` cancels it: the group is killed and reaped.
pub struct Execution {
    pub pid: u32,
    pub exec_id: String,
    pub events: mpsc::Receiver<Event>,
    /// Stdin, signals and resizes; `Some` only for `StdinMode::Stream`.
    pub input: Option<ExecInput>,
}

/// Writes to a running exec: stdin (in order, with backpressure), EOF, and
/// signals and resizes, which overtake queued stdin.
pub struct ExecInput {
    data: mpsc::Sender<Bytes>,
    control: mpsc::Sender<Control>,
    done: CancellationToken,
}

enum Control {
    Signal(i32),
    Resize(u16, u16),
}

impl ExecInput {
    /// Queues stdin bytes; false once stdin is closed or the child stopped reading.
    pub async fn write(&self, bytes: Bytes) -> bool {
        self.data.send(bytes).await.is_ok()
    }

    /// Closes stdin (a tty gets its EOF character) once queued bytes are written.
    pub async fn close(&self) {
        // An empty chunk is the EOF marker: the queue keeps it behind the data.
        let _ = self.data.send(Bytes::new()).await;
    }

    /// Sends a signal to the exec's process group (a tty's foreground group).
    pub fn signal(&self, signal: i32) {
        let _ = self.control.try_send(Control::Signal(signal));
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let _ = self.control.try_send(Control::Resize(rows, cols));
    }

    /// Resolves once the exec has ended and its exit has been queued.
    pub async fn finished(&self) {
        self.done.cancelled().await
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

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub shell: PathBuf,
    pub default_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub linger: Duration,
    /// Execs running at once (`--max-concurrent`).
    pub max_concurrent: usize,
    /// Stdout and stderr bytes one exec may send (`--max-output`); `None`: no limit.
    pub max_output_bytes: Option<u64>,
    /// Children run as this user (`--run-as`); `None`: as rexecd.
    pub run_as: Option<RunAs>,
}

pub struct Runner {
    config: RunnerConfig,
    audit: Audit,
    /// Cancelled when shutdown's grace has passed: every exec's group is killed.
    kill_all: CancellationToken,
    supervisors: TaskTracker,
    next_exec: AtomicU64,
    id_prefix: String,
    slots: ExecSlots,
}

impl Runner {
    pub fn new(config: RunnerConfig, audit: Audit, shutdown: &Shutdown) -> Arc<Self> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Arc::new(Runner {
            slots: ExecSlots::new(config.max_concurrent),
            config,
            audit,
            kill_all: shutdown.kill_all_token(),
            supervisors: shutdown.exec_tracker(),
            next_exec: AtomicU64::new(1),
            id_prefix: format!("{epoch:x}-{:x}", std::process::id()),
        })
    }

    /// Validates `spec`, spawns it in its own process group and starts streaming.
    /// Nothing runs unless this returns `Ok`.
    ///
    /// fork/exec blocks the calling thread until the child has exec'd, so it
    /// runs on the blocking pool: spawns overlap each other and never stall
    /// the runtime threads that move output. Dropping the returned future
    /// does not leak a child: the blocking task finishes, and the `Execution`
    /// it built is dropped, which cancels the exec like a client leaving.
    pub async fn start(
        self: &Arc<Self>,
        spec: ExecSpec,
        caller: Caller,
    ) -> Result<Execution, RunError> {
        let runner = Arc::clone(self);
        tokio::task::spawn_blocking(move || runner.start_blocking(spec, caller))
            .await
            .unwrap_or_else(|e| Err(RunError::Internal(format!("spawn task failed: {e}"))))
    }

    /// `start` on the current thread; needs the runtime's context (pipes and
    /// the supervisor register with it).
    fn start_blocking(&self, spec: ExecSpec, caller: Caller) -> Result<Execution, RunError> {
        let slot = self.slots.try_acquire()?;
        let (program, args) = self.resolve(&spec)?;
        let run_as = self.config.run_as.as_ref();
        let spawned = match spec.tty {
            None => spawn_with_pipes(&program, &args, &spec, run_as),
            Some(size) => spawn_with_pty(&program, &args, &spec, size, run_as),
        }
        .map_err(|e| spawn_error(&program, e))?;
        let Spawned {
            child,
            mut stdout,
            mut stderr,
            stdin,
        } = spawned;
        stdout.held = spec.holds_output;
        if let Some(stderr) = &mut stderr {
            stderr.held = spec.holds_output;
        }
        let pid = child
            .id()
            .ok_or_else(|| RunError::Internal("child exited before its pid was read".into()))?;
        let exec_id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_exec.fetch_add(1, Ordering::Relaxed)
        );

        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let done = CancellationToken::new();
        let (data_tx, data_rx) = mpsc::channel(STDIN_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let input = match &spec.stdin {
            StdinMode::Empty => None,
            StdinMode::Bytes(bytes) => {
                // Room is guaranteed: the queue is new and holds two messages.
                let _ = data_tx.try_send(bytes.clone());
                let _ = data_tx.try_send(Bytes::new());
                None
            }
            StdinMode::Stream => Some(ExecInput {
                data: data_tx.clone(),
                control: control_tx.clone(),
                done: done.clone(),
            }),
        };
        drop((data_tx, control_tx));
        self.supervisors.spawn(feed_stdin(
            stdin,
            data_rx,
            control_rx,
            pid as i32,
            done.clone(),
        ));

        let supervisor = Supervisor {
            child,
            pgid: pid as i32,
            tx,
            timeout: spec.timeout.or(self.config.default_timeout),
            kill_grace: self.config.kill_grace,
            linger: self.config.linger,
            kill_all: self.kill_all.clone(),
            audit: self.audit.clone(),
            record: AuditRecord::new(&exec_id, &caller, &spec, pid),
            done,
            budget: OutputBudget::new(self.config.max_output_bytes),
            _slot: slot,
        };
        self.supervisors.spawn(supervisor.run(stdout, stderr));
        Ok(Execution {
            pid,
            exec_id,
            events,
            input,
        })
    }

    /// Checks the request and turns it into program + arguments.
    fn resolve(&self, spec: &ExecSpec) -> Result<(PathBuf, Vec<String>), RunError> {
        let (program, args) = self.resolve_program(spec)?;
        crate::limits::check_exec_size(&args, &spec.env)?;
        Ok((program, args))
    }

    fn resolve_program(&self, spec: &ExecSpec) -> Result<(PathBuf, Vec<String>), RunError> {
        for (name, value) in &spec.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(RunError::InvalidArgument(format!(
                    "invalid environment variable name {name:?}: must be non-empty, without '=' or NUL"
                )));
            }
            if value.contains('\0') {
                return Err(RunError::InvalidArgument(format!(
                    "environment variable {name} contains a NUL byte"
                )));
            }
        }
        if let Some(cwd) = &spec.cwd {
            check_cwd(cwd)?;
        }
        match &spec.program {
            Program::Shell(command) => {
                if command.contains('\0') {
                    return Err(RunError::InvalidArgument(
                        "command contains a NUL byte".into(),
                    ));
                }
                Ok((
                    self.config.shell.clone(),
                    vec!["-c".into(), command.clone()],
                ))
            }
            Program::LoginShell => Ok((
                self.config
                    .run_as
                    .as_ref()
                    .map_or_else(login_shell, |user| user.shell.clone()),
                Vec::new(),
            )),
            Program::Argv(argv) => {
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(RunError::InvalidArgument("argv contains a NUL byte".into()));
                }
                let Some((name, rest)) = argv.split_first() else {
                    return Err(RunError::InvalidArgument("argv is empty".into()));
                };
                if name.is_empty() {
                    return Err(RunError::InvalidArgument("argv[0] is empty".into()));
                }
                let path_var = spec
                    .env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| OsString::from(v))
                    .or_else(|| std::env::var_os("PATH"));
                let program = find_program(name, spec.cwd.as_deref(), path_var)
                    .ok_or_else(|| RunError::NotFound(format!("program not found: {name}")))?;
                Ok((program, rest.to_vec()))
            }
        }
    }
}

fn check_cwd(cwd: &Path) -> Result<(), RunError> {
    if cwd.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(RunError::InvalidArgument("cwd contains a NUL byte".into()));
    }
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(RunError::InvalidArgument(format!(
            "cwd is not a directory: {}",
            cwd.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(
            RunError::PermissionDenied(format!("cwd not accessible: {}", cwd.display())),
        ),
        Err(_) => Err(RunError::NotFound(format!(
            "cwd not found: {}",
            cwd.display()
        ))),
    }
}

/// Looks `name` up as execvp would: a name with a slash is a path (relative to
/// the exec's cwd), anything else is searched in PATH.
fn find_program(name: &str, cwd: Option<&Path>, path_var: Option<OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = match cwd {
            Some(dir) if !name.starts_with('/') => dir.join(name),
            _ => PathBuf::from(name),
        };
        // Existence decides NOT_FOUND; a present but unrunnable file fails at spawn.
        return path.exists().then_some(PathBuf::from(name));
    }
    let path_var = path_var.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn spawn_error(program: &Path, e: std::io::Error) -> RunError {
    let what = format!("cannot run {}: {e}", program.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => RunError::NotFound(what),
        std::io::ErrorKind::PermissionDenied => RunError::PermissionDenied(what),
        _ if matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
        ) =>
        {
            RunError::ResourceExhausted(what)
        }
        _ if e.raw_os_error() == Some(libc::E2BIG) => RunError::InvalidArgument(what),
        _ => RunError::Internal(what),
    }
}

/// A child's stdout or stderr: a pipe, or a pty master.
struct OutputPipe {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Set for a pipe, which may be enlarged; the fd lives as long as `reader`.
    pipe_fd: Option<std::os::fd::RawFd>,
    /// `ExecSpec::holds_output`.
    held: bool,
}

impl OutputPipe {
    fn pipe<P: AsyncRead + std::os::fd::AsRawFd + Send + Unpin + 'static>(pipe: P) -> Self {
        OutputPipe {
            pipe_fd: Some(pipe.as_raw_fd()),
            reader: Box::new(pipe),
            held: false,
        }
    }

    /// Switches to bulk reads; the pipe grows if fewer than `MAX_BULK_PIPES`
    /// have. Returns the new read size and whether a bulk slot was taken.
    fn go_bulk(&self) -> (usize, Option<BulkPipe>) {
        let Some(fd) = self.pipe_fd else {
            return (CHUNK_SIZE, None);
        };
        let Some(slot) = BulkPipe::take() else {
            return (CHUNK_SIZE, None);
        };
        // SAFETY: fd is the open pipe `reader` owns; F_SETPIPE_SZ changes
        // only its capacity. Failure (EPERM past a user's hard limit) leaves
        // the pipe as it was.
        let grown = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, BULK_CHUNK_SIZE as libc::c_int) };
        if grown < 0 {
            return (CHUNK_SIZE, None);
        }
        (BULK_CHUNK_SIZE, Some(slot))
    }
}

/// One of `MAX_BULK_PIPES`, given back when the pipe's reader ends.
struct BulkPipe;

static BULK_PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl BulkPipe {
    fn take() -> Option<BulkPipe> {
        BULK_PIPES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_BULK_PIPES).then_some(n + 1)
            })
            .ok()
            .map(|_| BulkPipe)
    }
}

impl Drop for BulkPipe {
    fn drop(&mut self) {
        BULK_PIPES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where stdin bytes go: a pipe, or the pty master (shared with stdout).
enum StdinSink {
    Pipe(tokio::process::ChildStdin),
    Pty(pty_process::OwnedWritePty, std::os::fd::RawFd),
}

struct Spawned {
    child: Child,
    stdout: OutputPipe,
    stderr: Option<OutputPipe>,
    stdin: Option<StdinSink>,
}

fn spawn_with_pipes(
    program: &Path,
    args: &[String],
    spec: &ExecSpec,
    run_as: Option<&RunAs>,
) -> std::io::Result<Spawned> {
    let mut command = Command::new(program);
    if let Some(user) = run_as {
        command.envs(user.env()).current_dir(user.default_cwd());
        // SAFETY: the closure makes only async-signal-safe syscalls.
        unsafe {
            command.pre_exec(user.switch_in_child());
        }
    }
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(match spec.stdin {
            StdinMode::Empty => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if matches!(spec.program, Program::LoginShell) {
        command.arg0(login_arg0(program));
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let stdin = child.stdin.take().map(StdinSink::Pipe);
    Ok(Spawned {
        child,
        stdout: OutputPipe::pipe(stdout),
        stderr: Some(OutputPipe::pipe(stderr)),
        stdin,
    })
}

/// The child becomes a session leader with the pty as its controlling
/// terminal, so its process group id is its pid, as with pipes.
fn spawn_with_pty(
    program: &Path,
    args: &[String],
    spec: &ExecSpec,
    (rows, cols): (u16, u16),
    run_as: Option<&RunAs>,
) -> std::io::Result<Spawned> {
    use std::os::fd::AsRawFd;
    let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
    pty.resize(pty_process::Size::new(rows, cols))
        .map_err(std::io::Error::other)?;
    let mut command = pty_process::Command::new(program).args(args);
    if !spec.env.iter().any(|(k, _)| k == "TERM") {
        command = command.env("TERM", "xterm-256color");
    }
    if let Some(user) = run_as {
        command = command.envs(user.env()).current_dir(user.default_cwd());
        // SAFETY: the closure makes only async-signal-safe syscalls; it runs
        // after pty-process makes the child a session leader.
        command = unsafe { command.pre_exec(user.switch_in_child()) };
    }
    command = command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        command = command.current_dir(cwd);
    }
    if matches!(spec.program, Program::LoginShell) {
        command = command.arg0(login_arg0(program));
    }
    let master_fd = pty.as_raw_fd();
    let child = command.spawn(pts).map_err(std::io::Error::other)?;
    let (read, write) = pty.into_split();
    Ok(Spawned {
        child,
        stdout: OutputPipe {
            reader: Box::new(read),
            pipe_fd: None,
            held: false,
        },
        stderr: None,
        stdin: Some(StdinSink::Pty(write, master_fd)),
    })
}

/// The server user's login shell from the password database, else /bin/sh.
/// Read once: spawns run on several threads, and the database does not change
/// under a running server in any way that matters here.
fn login_shell() -> PathBuf {
    static SHELL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHELL
        .get_or_init(|| {
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut buffer = vec![0 as libc::c_char; 16 * 1024];
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call; strings land in `buffer`.
            let rc = unsafe {
                libc::getpwuid_r(
                    libc::getuid(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            if rc == 0 && !result.is_null() && !entry.pw_shell.is_null() {
                // SAFETY: getpwuid_r succeeded, so pw_shell points into `buffer`.
                let shell = unsafe { std::ffi::CStr::from_ptr(entry.pw_shell) };
                if !shell.is_empty() {
                    return PathBuf::from(shell.to_string_lossy().into_owned());
                }
            }
            PathBuf::from("/bin/sh")
        })
        .clone()
}

/// `-bash` for /bin/bash: a leading dash makes a shell a login shell.
fn login_arg0(program: &Path) -> String {
    let name = program
        .file_name()
        .map_or_else(|| "sh".into(), |n| n.to_string_lossy().into_owned());
    format!("-{name}")
}

/// Writes stdin as it is queued and applies signals and resizes, which never
/// wait behind stdin. Runs until the exec is done or both queues are closed.
async fn feed_stdin(
    mut sink: Option<StdinSink>,
    mut data: mpsc::Receiver<Bytes>,
    mut control: mpsc::Receiver<Control>,
    pgid: i32,
    done: CancellationToken,
) {
    let (mut data_open, mut control_open) = (true, true);
    let mut pending = Bytes::new();
    while data_open || control_open || !pending.is_empty() {
        let writing = !pending.is_empty() && sink.is_some();
        tokio::select! {
            biased;
            () = done.cancelled() => break,
            message = control.recv(), if control_open => match message {
                Some(Control::Signal(signal)) => signal_group(foreground_group(sink.as_ref()).unwrap_or(pgid), signal),
                Some(Control::Resize(rows, cols)) => {
                    if let Some(StdinSink::Pty(pty, _)) = &sink {
                        // TIOCSWINSZ: the kernel sends SIGWINCH to the foreground group.
                        let _ = pty.resize(pty_process::Size::new(rows, cols));
                    }
                }
                None => control_open = false,
            },
            written = write_some(sink.as_mut(), &pending), if writing => match written {
                Ok(n) => {
                    let _ = pending.split_to(n);
                }
                // The child stopped reading (EPIPE): drop the rest of stdin.
                Err(_) => {
                    sink = None;
                    pending.clear();
                }
            },
            message = data.recv(), if data_open && pending.is_empty() => match message {
                Some(bytes) if bytes.is_empty() => {
                    close_stdin(&mut sink).await;
                    data_open = false;
                }
                Some(bytes) => {
                    if sink.is_some() {
                        pending = bytes;
                    }
                }
                None => {
                    close_stdin(&mut sink).await;
                    data_open = false;
                }
            },
        }
        if !writing && pending.is_empty() && !data_open && !control_open {
            break;
        }
    }
}

/// One write; cancel-safe, so a signal can overtake a write blocked on a full pipe.
async fn write_some(sink: Option<&mut StdinSink>, bytes: &[u8]) -> std::io::Result<usize> {
    match sink {
        Some(StdinSink::Pipe(pipe)) => pipe.write(bytes).await,
        Some(StdinSink::Pty(pty, _)) => pty.write(bytes).await,
        None => Ok(bytes.len()),
    }
}

/// EOF for stdin: a pipe is closed; a tty gets its EOF character (^D), as a
/// terminal user would type it.
async fn close_stdin(sink: &mut Option<StdinSink>) {
    match sink {
        Some(StdinSink::Pty(pty, _)) => {
            let _ = pty.write_all(&[0x04]).await;
        }
        _ => *sink = None,
    }
}

/// The foreground process group of a tty (a shell's running job), if any.
fn foreground_group(sink: Option<&StdinSink>) -> Option<i32> {
    let Some(StdinSink::Pty(_, fd)) = sink else {
        return None;
    };
    // SAFETY: the fd is the pty master, kept open by the write half we hold.
    let group = unsafe { libc::tcgetpgrp(*fd) };
    (group > 0).then_some(group)
}

/// Why the supervisor stopped waiting for the main process on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    TimedOut,
    ClientGone,
    Shutdown,
    OutputLimit,
}

/// Owns one child from spawn to reap.
struct Supervisor {
    child: Child,
    pgid: i32,
    tx: mpsc::Sender<Event>,
    timeout: Option<Duration>,
    kill_grace: Duration,
    linger: Duration,
    kill_all: CancellationToken,
    audit: Audit,
    record: AuditRecord,
    /// Fired once the exit is queued: the stdin feeder and signals stop.
    done: CancellationToken,
    /// `--max-output`: past it, output is dropped and the group killed.
    budget: Arc<OutputBudget>,
    /// One of `--max-concurrent`, released once the exec is reaped.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Supervisor {
    async fn run(mut self, stdout: OutputPipe, stderr: Option<OutputPipe>) {
        let started = Instant::now();
        // Readers stop at EOF, or once `stop_reading` fires and their pipe is empty.
        let stop_reading = CancellationToken::new();
        let stdout_reader = tokio::spawn(pump(
            Some(stdout),
            self.tx.clone(),
            Event::Stdout,
            stop_reading.clone(),
            self.budget.clone(),
        ));
        let stderr_reader = tokio::spawn(pump(
            stderr,
            self.tx.clone(),
            Event::Stderr,
            stop_reading.clone(),
            self.budget.clone(),
        ));

        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let interruption = tokio::select! {
            status = self.child.wait() => Err(status),
            () = deadline => Ok(Interruption::TimedOut),
            () = self.tx.closed() => Ok(Interruption::ClientGone),
            () = self.kill_all.cancelled() => Ok(Interruption::Shutdown),
            () = self.budget.exceeded() => Ok(Interruption::OutputLimit),
        };
        let (status, interruption) = match interruption {
            Err(status) => (status, None),
            Ok(why) => {
                tracing::debug!(pgid = self.pgid, ?why, "killing process group");
                (self.terminate_group().await, Some(why))
            }
        };

        // The main process is gone; a background process may still hold the
        // pipes. Give it the linger, then the group is killed like any other.
        let readers = async {
            (
                stdout_reader.await.unwrap_or(0),
                stderr_reader.await.unwrap_or(0),
            )
        };
        tokio::pin!(readers);
        let (stdout_bytes, stderr_bytes) = tokio::select! {
            counts = &mut readers => counts,
            () = tokio::time::sleep(self.linger) => {
                self.terminate_leftovers().await;
                stop_reading.cancel();
                readers.await
            }
        };
        self.terminate_leftovers().await;

        let termination = match &status {
            Ok(status) => termination_of(*status),
            Err(e) => {
                tracing::error!(pgid = self.pgid, "waiting for child failed: {e}");
                Termination::Signal(libc::SIGKILL)
            }
        };
        let report = ExitReport {
            termination,
            timed_out: interruption == Some(Interruption::TimedOut),
            duration: started.elapsed(),
            stdout_bytes,
            stderr_bytes,
            truncated: self.budget.is_exceeded(),
        };
        self.audit.exec_finished(
            &self.record,
            &report,
            interruption == Some(Interruption::ClientGone),
        );
        self.done.cancel();
        let _ = self.tx.send(Event::Exit(report)).await;
    }

    /// SIGTERM to the group, SIGKILL after the kill grace; returns the reaped status.
    async fn terminate_group(&mut self) -> std::io::Result<ExitStatus> {
        signal_group(self.pgid, libc::SIGTERM);
        tokio::select! {
            status = self.child.wait() => {
                // The leader died; members that ignore SIGTERM get SIGKILL later.
                self.schedule_kill();
                status
            }
            () = tokio::time::sleep(self.kill_grace) => {
                signal_group(self.pgid, libc::SIGKILL);
                self.child.wait().await
            }
        }
    }

    /// Kills what is left of the group once the main process has exited.
    async fn terminate_leftovers(&self) {
        if group_alive(self.pgid) {
            tracing::debug!(pgid = self.pgid, "terminating leftover group members");
            signal_group(self.pgid, libc::SIGTERM);
            self.schedule_kill();
        }
    }

    fn schedule_kill(&self) {
        let (pgid, grace) = (self.pgid, self.kill_grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if group_alive(pgid) {
                signal_group(pgid, libc::SIGKILL);
            }
        });
    }
}

/// Forwards one pipe as chunks until EOF; a full channel stops reading, so the
/// child's pipe fills and the child waits (backpressure).
async fn pump(
    pipe: Option<OutputPipe>,
    tx: mpsc::Sender<Event>,
    wrap: fn(Bytes) -> Event,
    stop: CancellationToken,
    budget: Arc<OutputBudget>,
) -> u64 {
    let Some(mut pipe) = pipe else { return 0 };
    let mut read_size = CHUNK_SIZE;
    // Held while the pipe is enlarged; dropped (given back) when this ends.
    let mut bulk: Option<Option<BulkPipe>> = None;
    let mut buf = BytesMut::with_capacity(read_size);
    let mut total = 0u64;
    let mut after_stop = 0u64;
    loop {
        // `buf` is empty here: each read is split off, and the next one goes
        // into the room left behind it.
        if buf.capacity() < MIN_READ_ROOM {
            buf.reserve(read_size);
            if pipe.held && read_size > CHUNK_SIZE {
                prefault(buf.spare_capacity_mut());
            }
        }
        // Data already in the pipe wins over `stop`, so nothing written before
        // the group was killed is lost.
        let read = tokio::select! {
            biased;
            read = pipe.reader.read_buf(&mut buf) => read,
            () = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if stop.is_cancelled() {
                    after_stop += n as u64;
                }
                if n >= CHUNK_SIZE && bulk.is_none() {
                    let (size, slot) = pipe.go_bulk();
                    read_size = size;
                    bulk = Some(slot);
                }
                // Past --max-output the pipe is still drained (the group is
                // being killed) but nothing more is sent or counted.
                let mut chunk = buf.split().freeze();
                chunk.truncate(budget.take(n));
                total += chunk.len() as u64;
                if (!chunk.is_empty() && tx.send(wrap(chunk)).await.is_err())
                    || after_stop > DRAIN_AFTER_STOP
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once every slave fd is closed: its EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!("reading child output failed: {e}");
                break;
            }
        }
    }
    total
}

/// Maps in the pages of a fresh read buffer with one call. Otherwise the
/// kernel takes a page fault per 4 KiB while copying out of the pipe, with
/// the pipe's lock held, and the writing child spins on that lock (in a
/// profile of a legacy 1 GiB answer, a fifth of all CPU went to that spin).
/// Pages already mapped are left as they are; a kernel older than 5.14
/// refuses the advice and the faults happen as before.
fn prefault(spare: &mut [std::mem::MaybeUninit<u8>]) {
    const PAGE: usize = 4096;
    let start = (spare.as_mut_ptr() as usize).next_multiple_of(PAGE);
    let end = (spare.as_mut_ptr() as usize + spare.len()) & !(PAGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside `spare`, memory this buffer owns;
        // MADV_POPULATE_WRITE maps it writable without changing its contents.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}

fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Code(code),
        (None, Some(signal)) => Termination::Signal(signal),
        (None, None) => Termination::Signal(libc::SIGKILL),
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory effects; a vanished group gives ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::killpg(pgid, 0) == 0 }
}
