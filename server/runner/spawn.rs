//! Starting an exec's main process, on pipes or on a pseudo-terminal. Between
//! fork and exec the child joins its cgroup, becomes the user (`--run-as`),
//! enters its cwd as that user, and marks every descriptor above 2 to close,
//! so nothing rexecd holds leaks into a command.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::cgroup::Joiner;
use super::child::Spawnee;
use super::program::{Resolved, login_arg0};
use super::pump::OutputPipe;
use super::stdin::StdinSink;
use super::types::{ExecSpec, Program, RunError, StdinMode};
use super::vfork;
use crate::run_as::RunAs;

/// What a spawn gives the supervisor.
pub struct Spawned {
    pub child: Spawnee,
    pub stdout: OutputPipe,
    pub stderr: Option<OutputPipe>,
    pub stdin: Option<StdinSink>,
}

/// Spawns the resolved program for `spec`.
pub fn spawn(
    resolved: &Resolved,
    spec: &ExecSpec,
    run_as: Option<&RunAs>,
    joiner: Option<Joiner>,
) -> Result<Spawned, RunError> {
    // A login shell starts at home, as `ssh host` does (DESIGN: "in their home directory").
    let cwd = spec
        .cwd
        .clone()
        .or_else(|| run_as.map(|user| user.default_cwd().to_path_buf()))
        .or_else(|| {
            matches!(spec.program, Program::LoginShell)
                .then(super::program::own_home)
                .flatten()
        });
    if let Some(joiner) = &joiner
        && spec.tty.is_none()
        && run_as.is_none()
        && resolved.program.is_absolute()
        && !matches!(spec.program, Program::LoginShell)
        && vfork::available()
    {
        return spawn_cloned(resolved, spec, joiner).map_err(|e| spawn_error(&resolved.program, e));
    }
    let setup = ChildSetup::new(joiner, run_as.cloned(), cwd.as_deref())?;
    match spec.tty {
        None => spawn_with_pipes(resolved, spec, run_as, setup),
        Some(size) => spawn_with_pty(resolved, spec, size, run_as, setup),
    }
    .map_err(|e| spawn_error(&resolved.program, e))
}

/// What the child does between fork and exec, in this order: join the cgroup
/// (while still privileged), drop to the user, enter the cwd as the user,
/// mark descriptors 3 and up close-on-exec. Everything was copied before
/// the fork; only async-signal-safe calls are made.
struct ChildSetup {
    joiner: Option<Joiner>,
    run_as: Option<RunAs>,
    cwd: Option<CString>,
    /// The highest descriptor to mark where close_range(2) is missing.
    fd_limit: i32,
}

impl ChildSetup {
    fn new(
        joiner: Option<Joiner>,
        run_as: Option<RunAs>,
        cwd: Option<&Path>,
    ) -> Result<Self, RunError> {
        let cwd = cwd
            .map(|dir| CString::new(dir.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| RunError::InvalidArgument("cwd contains a NUL byte".into()))?;
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(65_536) as i32);
        Ok(ChildSetup {
            joiner,
            run_as,
            cwd,
            fd_limit,
        })
    }

    /// Whether the child needs any of it. Without, the standard library can
    /// spawn by posix_spawn (vfork-like) rather than fork, which is three
    /// times the execs/s on two cores (BENCHMARKS.md); the cwd is then
    /// entered by `Command::current_dir`, and descriptors were marked
    /// close-on-exec at start (`mark_inherited_descriptors`).
    fn needed(&self) -> bool {
        self.joiner.is_some() || self.run_as.is_some()
    }

    fn run(&self) -> std::io::Result<()> {
        if let Some(joiner) = &self.joiner {
            joiner.join()?;
        }
        if let Some(user) = &self.run_as {
            user.switch()?;
        }
        if let Some(cwd) = &self.cwd {
            nix::unistd::chdir(cwd.as_c_str())?;
        }
        mark_descriptors_cloexec(self.fd_limit);
        Ok(())
    }
}

/// Sets close-on-exec on every descriptor from 3 up: those rexecd inherited
/// or opened without it are not passed on. (Closing them here instead would
/// also close the pipe the standard library reports exec errors through.)
fn mark_descriptors_cloexec(fd_limit: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11) only sets a
    // flag on descriptors; nothing is closed before exec.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        for fd in 3..fd_limit {
            // SAFETY: F_SETFD on a descriptor that may not be open: EBADF at worst.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Marks every descriptor rexecd inherited above 2 close-on-exec, once at
/// start: those it opens itself already are, so a child spawned without
/// `ChildSetup` gets none either.
pub fn mark_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        mark_descriptors_cloexec(1024);
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only sets a flag; the directory's own descriptor,
        // closed by now, gives EBADF at worst.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

fn spawn_with_pipes(
    resolved: &Resolved,
    spec: &ExecSpec,
    run_as: Option<&RunAs>,
    setup: ChildSetup,
) -> std::io::Result<Spawned> {
    let mut command = Command::new(&resolved.program);
    if let Some(user) = run_as {
        command.envs(user.env());
    }
    if setup.needed() {
        // SAFETY: `ChildSetup::run` makes only async-signal-safe calls.
        unsafe {
            command.pre_exec(move || setup.run());
        }
    } else if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command
        .args(&resolved.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(match spec.stdin {
            StdinMode::Empty => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if matches!(spec.program, Program::LoginShell) {
        command.arg0(login_arg0(&resolved.program));
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
        child: Spawnee::Tokio(child),
        stdout: OutputPipe::new(stdout),
        stderr: Some(OutputPipe::new(stderr)),
        stdin,
    })
}

/// The child becomes a session leader with the pty as its controlling
/// terminal, so its process group id is its pid, as with pipes. With
/// `--run-as` the terminal is handed to the user, as login does.
fn spawn_with_pty(
    resolved: &Resolved,
    spec: &ExecSpec,
    (rows, cols): (u16, u16),
    run_as: Option<&RunAs>,
    setup: ChildSetup,
) -> std::io::Result<Spawned> {
    let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
    pty.resize(pty_process::Size::new(rows, cols))
        .map_err(std::io::Error::other)?;
    if let Some(user) = run_as {
        // Owned by the user, writable by its group only, like a login tty
        // (tmux, screen and gpg refuse a terminal they do not own).
        nix::unistd::fchown(&pts, Some(user.uid), Some(user.gid))?;
        nix::sys::stat::fchmod(&pts, nix::sys::stat::Mode::from_bits_truncate(0o620))?;
    }
    let mut command = pty_process::Command::new(&resolved.program).args(&resolved.args);
    if !spec.env.iter().any(|(k, _)| k == "TERM") {
        command = command.env("TERM", "xterm-256color");
    }
    if let Some(user) = run_as {
        command = command.envs(user.env());
    }
    // SAFETY: `ChildSetup::run` makes only async-signal-safe calls; it runs
    // after pty-process makes the child a session leader.
    command = unsafe { command.pre_exec(move || setup.run()) };
    command = command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if matches!(spec.program, Program::LoginShell) {
        command = command.arg0(login_arg0(&resolved.program));
    }
    let master = pty.as_fd().try_clone_to_owned()?;
    let child = command.spawn(pts).map_err(std::io::Error::other)?;
    let (read, write) = pty.into_split();
    Ok(Spawned {
        child: Spawnee::Tokio(child),
        stdout: OutputPipe::new(read),
        stderr: None,
        stdin: Some(StdinSink::Pty(write, master)),
    })
}

/// A piped exec cloned straight into its cgroup (`vfork.rs`): the environment
/// is rexecd's with the request's on top, as `Command` would give it.
fn spawn_cloned(resolved: &Resolved, spec: &ExecSpec, joiner: &Joiner) -> std::io::Result<Spawned> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in &spec.env {
        env.insert(name.into(), value.into());
    }
    let stdin = match spec.stdin {
        StdinMode::Empty => (vfork::null()?, None),
        _ => {
            let (read, write) = vfork::pipe()?;
            (read, Some(write))
        }
    };
    let (stdout_read, stdout_write) = vfork::pipe()?;
    let (stderr_read, stderr_write) = vfork::pipe()?;
    let plan = vfork::Plan::new(
        &resolved.program,
        resolved.args.iter().map(OsStr::new),
        env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
        spec.cwd.as_deref(),
        [
            stdin.0.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ],
        joiner.as_raw_fd(),
    )?;
    let pid = vfork::spawn(&plan)?;
    // The child's ends are closed here; it has its copies.
    drop((stdin.0, stdout_write, stderr_write));
    let stdout =
        tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(stdout_read))?;
    let stderr =
        tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(stderr_read))?;
    let stdin = stdin
        .1
        .map(|write| tokio::process::ChildStdin::from_std(std::process::ChildStdin::from(write)))
        .transpose()?
        .map(StdinSink::Pipe);
    Ok(Spawned {
        child: Spawnee::Cloned(pid as u32),
        stdout: OutputPipe::new(stdout),
        stderr: Some(OutputPipe::new(stderr)),
        stdin,
    })
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
