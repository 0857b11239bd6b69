//! Spawning a piped exec straight into its cgroup without a fork.
//!
//! The child must join its cgroup before any of its code runs, so something
//! has to run between clone and exec. The standard library forks whenever a
//! child needs that (`pre_exec`), and a fork copies rexecd's page tables: in
//! cgroup mode that gave a quarter of the execs/s of posix_spawn on two cores
//! (BENCHMARKS.md, "Containment"). Here the child is cloned the way glibc's
//! posix_spawn clones it, `CLONE_VM | CLONE_VFORK`: it runs on a small stack
//! of its own in rexecd's memory, the calling thread waits until it has
//! exec'd (or exited), and in between it makes only raw system calls on
//! values the parent prepared: reset signal handlers, own process group,
//! `write("0")` to the cgroup's `cgroup.procs`, stdio, cwd, unblock signals,
//! execve. (`clone3` with `CLONE_INTO_CGROUP` would save the write, but needs
//! its own assembly to switch stacks; glibc 2.39's posix_spawn does it, and
//! this host has 2.36.)
//!
//! Used for piped execs in cgroup mode without `--run-as`; a pty or a user
//! switch goes through the standard library's fork path (`spawn.rs`).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::c_char;

/// The child's stack. It calls a handful of libc wrappers and execve; glibc
/// gives its posix_spawn child 32 KiB plus the argv size.
const CHILD_STACK: usize = 64 * 1024;

/// What the child needs, all of it built before the clone: the child may not
/// allocate (it runs on the parent's heap and thread-local storage).
pub struct Plan {
    path: CString,
    /// Owners of the strings `argv` and `envp` point into.
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: Option<CString>,
    /// The child's 0, 1 and 2 (each above 2, so `dup2` always copies and
    /// clears close-on-exec).
    stdio: [RawFd; 3],
    /// The exec cgroup's `cgroup.procs`, open for writing.
    cgroup_procs: RawFd,
    /// Set by the child when a step fails: the errno, read after it exits.
    error: AtomicI32,
}

impl Plan {
    /// `program` is absolute; `env` is the whole environment of the command.
    pub fn new<'a>(
        program: &Path,
        args: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
        cwd: Option<&Path>,
        stdio: [RawFd; 3],
        cgroup_procs: RawFd,
    ) -> io::Result<Plan> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        };
        let path = c(program.as_os_str().as_bytes())?;
        let mut strings = vec![path.clone()];
        for arg in args {
            strings.push(c(arg.as_bytes())?);
        }
        let args_end = strings.len();
        for (name, value) in env {
            let mut pair = Vec::with_capacity(name.len() + 1 + value.len());
            pair.extend_from_slice(name.as_bytes());
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(c(&pair)?);
        }
        let pointers = |range: std::ops::Range<usize>| {
            let mut list: Vec<*const c_char> = strings[range].iter().map(|s| s.as_ptr()).collect();
            list.push(std::ptr::null());
            list
        };
        let argv = pointers(0..args_end);
        let envp = pointers(args_end..strings.len());
        let cwd = cwd.map(|dir| c(dir.as_os_str().as_bytes())).transpose()?;
        Ok(Plan {
            path,
            _strings: strings,
            argv,
            envp,
            cwd,
            stdio,
            cgroup_procs,
            error: AtomicI32::new(0),
        })
    }
}

/// Clones the child, which execs the plan. Returns its pid once it has
/// exec'd; if any step before failed, the child is reaped and its errno
/// returned.
pub fn spawn(plan: &Plan) -> io::Result<i32> {
    let mut stack = vec![0u128; CHILD_STACK / 16];
    // The stack grows down on every architecture Linux runs rexecd on;
    // u128 elements keep its top 16-byte aligned.
    let stack_top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();

    // Blocked in the parent thread across the clone, so no handler of
    // rexecd's runs in the child before the child resets it.
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask fills `old`.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
    }
    // SAFETY: `child_main` makes only async-signal-safe libc calls on `plan`,
    // which outlives the call: CLONE_VFORK suspends this thread until the
    // child has exec'd or exited, and only then do `plan` and `stack` go.
    // The child has its own copy of the signal handlers (no CLONE_SIGHAND).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack_top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(plan).cast_mut().cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    match plan.error.load(Ordering::Acquire) {
        0 => Ok(pid),
        errno => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child, between clone and exec. No allocation, no panics, no locks:
/// raw calls only, and `_exit` on failure.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&Plan` passed to clone, alive until we exec or exit.
    let plan = unsafe { &*arg.cast::<Plan>() };
    // SAFETY: each call below is async-signal-safe and gets valid pointers
    // into `plan` or this frame.
    unsafe {
        // rexecd's handlers (tokio's) must not run here or be inherited as
        // "ignored"; SIGPIPE goes back to default, as std does for children.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=64 {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            if current.sa_sigaction != libc::SIG_DFL
                && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(plan);
        }
        // Into the exec's cgroup before anything of the command runs.
        if libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(plan);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(plan);
            }
        }
        if let Some(cwd) = &plan.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(plan);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan)
    }
}

/// Leaves the errno for the parent and exits.
unsafe fn fail(plan: &Plan) -> ! {
    // SAFETY: errno is this thread's (the parent's, suspended); _exit is
    // async-signal-safe and runs no destructors or atexit handlers.
    unsafe {
        let errno = *libc::__errno_location();
        plan.error.store(
            if errno == 0 { libc::EIO } else { errno },
            Ordering::Release,
        );
        libc::_exit(127)
    }
}

/// A close-on-exec pipe whose ends are both above 2, so that `dup2` onto
/// 0-2 in the child never finds source and target the same.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// `/dev/null` for a child with no stdin.
pub fn null() -> io::Result<OwnedFd> {
    let file = std::fs::File::open("/dev/null")?;
    above_stdio(file.into())
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor, owned from here on.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Whether this kernel gives pidfds (Linux 5.3), which `child.rs` needs to
/// see a cloned child exit without reaping it; checked once.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .is_ok()
    })
}
