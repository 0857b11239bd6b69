//! An exec's main process, from spawn to reap. Its exit is seen through a
//! pidfd before it is reaped, so the zombie's CPU times can still be read and
//! its pid (the process group's id) cannot be reused while the rest of the
//! exec is being ended.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::process::Child;

use super::types::{CpuTime, Termination};

pub struct MainProcess {
    child: Child,
    pid: u32,
    /// Readable once the process has exited; `None` on kernels without pidfds
    /// (before 5.3), where the exit is only seen by reaping.
    pidfd: Option<AsyncFd<std::os::fd::OwnedFd>>,
    exited: bool,
}

impl MainProcess {
    pub fn new(child: Child, pid: u32) -> Self {
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
                let _ = self.child.wait().await;
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
        match self.child.wait().await {
            Ok(status) => termination_of(status),
            Err(e) => {
                tracing::error!(pid = self.pid, "waiting for child failed: {e}");
                Termination::Signal(libc::SIGKILL)
            }
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
