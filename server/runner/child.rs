//! An exec's main process, from spawn to reap. Its exit is seen through a
//! pidfd before it is reaped, so the zombie's CPU times can still be read and
//! its pid (the process group's id) cannot be reused while the rest of the
//! exec is being ended.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::io::unix::AsyncFd;
use tokio::process::Child;

use super::types::{CpuTime, Termination};

/// Who reaps the main process: tokio, for a child of the standard library's
/// spawn, or this module, for one cloned by `vfork.rs` (seen exiting through
/// its pidfd, which such a spawn requires).
pub enum Spawnee {
    Tokio(Child),
    Cloned(u32),
}

impl Spawnee {
    pub fn id(&self) -> Option<u32> {
        match self {
            Spawnee::Tokio(child) => child.id(),
            Spawnee::Cloned(pid) => Some(*pid),
        }
    }
}

pub struct MainProcess {
    child: Spawnee,
    pid: u32,
    /// Readable once the process has exited; `None` on kernels without pidfds
    /// (before 5.3), where the exit is only seen by reaping.
    pidfd: Option<AsyncFd<std::os::fd::OwnedFd>>,
    exited: bool,
    /// A cloned child has been waited for.
    reaped: bool,
}

impl MainProcess {
    pub fn new(child: Spawnee, pid: u32) -> Self {
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .and_then(|fd| {
                // SAFETY: the pidfd is moved into the AsyncFd, which owns it:
                // it stays open while registered and is deregistered first
                // when dropped.
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
            });
        MainProcess {
            child,
            pid,
            pidfd,
            exited: false,
            reaped: false,
        }
    }

    /// Resolves once the process has exited; cancel-safe.
    pub async fn exited(&mut self) {
        if self.exited {
            return;
        }
        match &self.pidfd {
            Some(pidfd) => {
                let _ = pidfd.readable().await;
            }
            // Without a pidfd the exit is its reaping.
            None => {
                if let Spawnee::Tokio(child) = &mut self.child {
                    let _ = child.wait().await;
                }
            }
        }
        self.exited = true;
    }

    /// CPU time of the exited process and of the children it waited for (its
    /// zombie's `/proc/PID/stat`); zero once reaped.
    pub fn cpu_time(&self) -> CpuTime {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return CpuTime::default();
        };
        let Some((_, fields)) = stat.rsplit_once(')') else {
            return CpuTime::default();
        };
        // Fields 14-17 (utime stime cutime cstime), counted after the name.
        let ticks: Vec<u64> = fields
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|f| f.parse().ok())
            .collect();
        let [utime, stime, cutime, cstime] = ticks[..] else {
            return CpuTime::default();
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|hz| *hz > 0)
            .unwrap_or(100) as u64;
        let time = |t: u64| Duration::from_micros(t.saturating_mul(1_000_000) / hz);
        CpuTime {
            user: time(utime + cutime),
            system: time(stime + cstime),
        }
    }

    /// Reaps the process (waiting for it first if it has not exited).
    pub async fn reap(&mut self) -> Termination {
        let status = match &mut self.child {
            Spawnee::Tokio(child) => child.wait().await.map(termination_of),
            Spawnee::Cloned(pid) => {
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                self.exited().await;
                // Exited already (its pidfd said so): this wait does not block.
                let status = waitpid(pid, None).map_err(std::io::Error::from);
                self.reaped = status.is_ok();
                status.map(|status| match status {
                    WaitStatus::Exited(_, code) => Termination::Code(code),
                    WaitStatus::Signaled(_, signal, _) => Termination::Signal(signal as i32),
                    _ => Termination::Signal(libc::SIGKILL),
                })
            }
        };
        status.unwrap_or_else(|e| {
            tracing::error!(pid = self.pid, "waiting for child failed: {e}");
            Termination::Signal(libc::SIGKILL)
        })
    }
}

impl Drop for MainProcess {
    /// A cloned child not reaped (the runtime shutting down mid-exec) is
    /// reaped if it has exited; tokio does the same for its own.
    fn drop(&mut self) {
        if let Spawnee::Cloned(pid) = self.child
            && !self.reaped
        {
            let _ = waitpid(
                nix::unistd::Pid::from_raw(pid as i32),
                Some(WaitPidFlag::WNOHANG),
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
