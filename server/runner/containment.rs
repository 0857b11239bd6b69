//! What holds every process of one exec, so that all of them can be ended:
//! its own cgroup where rexecd can make one (nothing escapes it), else its
//! process group (which `setsid` escapes). Chosen once at start and named in
//! the start-up log (`containment=cgroup|process-group`).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::cgroup::{CgroupTree, ExecCgroup, Joiner};
use super::types::CpuTime;

/// A cgroup that should be empty after SIGKILL but is not within this long is
/// logged and left; the exec's exit is not held for ever.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// `rexecd --containment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainmentMode {
    /// A cgroup per exec where possible, else the process group.
    Auto,
    /// A cgroup per exec, or rexecd does not start.
    Cgroup,
    /// The process group only.
    ProcessGroup,
}

pub enum Containment {
    Cgroup(CgroupTree),
    ProcessGroup,
}

impl Containment {
    pub fn choose(mode: ContainmentMode) -> Result<Containment, String> {
        if mode == ContainmentMode::ProcessGroup {
            return Ok(Containment::ProcessGroup);
        }
        match CgroupTree::create() {
            Ok(tree) => Ok(Containment::Cgroup(tree)),
            Err(e) if mode == ContainmentMode::Cgroup => Err(format!(
                "--containment cgroup: cannot make exec cgroups: {e} \
                 (under systemd, set Delegate=yes; elsewhere rexecd needs a writable cgroup2 mount)"
            )),
            Err(e) => {
                tracing::info!("no exec cgroups ({e}): containing execs by process group");
                Ok(Containment::ProcessGroup)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Containment::Cgroup(_) => "cgroup",
            Containment::ProcessGroup => "process-group",
        }
    }

    pub fn cgroup_dir(&self) -> Option<&Path> {
        match self {
            Containment::Cgroup(tree) => Some(tree.dir()),
            Containment::ProcessGroup => None,
        }
    }

    /// A cgroup for a new exec, and what its child joins it by.
    pub fn prepare(&self, name: &str) -> std::io::Result<Option<(ExecCgroup, Joiner)>> {
        match self {
            Containment::Cgroup(tree) => tree.exec_cgroup(name).map(Some),
            Containment::ProcessGroup => Ok(None),
        }
    }
}

/// Every process of one exec.
pub struct ExecGroup {
    pgid: Pid,
    cgroup: Option<ExecCgroup>,
    /// When SIGTERM went to all of it; SIGKILL follows a kill grace later.
    terminated_at: Option<Instant>,
}

impl ExecGroup {
    pub fn new(pgid: Pid, cgroup: Option<ExecCgroup>) -> Self {
        ExecGroup {
            pgid,
            cgroup,
            terminated_at: None,
        }
    }

    /// SIGTERM to every process (the first time only).
    pub fn terminate(&mut self) {
        if self.terminated_at.is_some() {
            return;
        }
        self.terminated_at = Some(Instant::now());
        match &self.cgroup {
            Some(cgroup) => {
                cgroup.signal(Signal::SIGTERM);
            }
            None => signal_group(self.pgid, libc::SIGTERM),
        }
    }

    /// When SIGKILL is due: a kill grace after SIGTERM.
    pub fn kill_due(&self, grace: Duration) -> Instant {
        self.terminated_at.unwrap_or_else(Instant::now) + grace
    }

    pub fn kill(&self) {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => signal_group(self.pgid, libc::SIGKILL),
        }
    }

    /// Whether any process of the exec is running. For a process group this
    /// is asked once its leader is reaped (a zombie leader keeps it "alive").
    fn alive(&self) -> bool {
        match &self.cgroup {
            Some(cgroup) => cgroup.populated(),
            None => nix::sys::signal::killpg(self.pgid, None).is_ok(),
        }
    }

    /// Ends whatever is left once the main process is reaped: SIGTERM, then
    /// SIGKILL a kill grace after the first SIGTERM, and returns once nothing
    /// is left (a cgroup) or after a last check (a process group, whose
    /// members may have left it).
    pub async fn end(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        tracing::debug!(pgid = %self.pgid, "ending what is left of the exec");
        self.terminate();
        let due = self.kill_due(grace);
        if !self.wait_empty_until(due).await {
            self.kill();
            if !self.wait_empty_until(Instant::now() + EMPTY_WAIT).await {
                tracing::error!(pgid = %self.pgid, "exec still has processes after SIGKILL");
            }
        }
    }

    /// Polls until empty or `deadline`; true if empty.
    async fn wait_empty_until(&self, deadline: Instant) -> bool {
        let mut pause = Duration::from_millis(1);
        loop {
            if !self.alive() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The exec's CPU time: the whole cgroup's, else what the main process
    /// used and reaped (`main`, read from its zombie).
    pub fn cpu_time(&self, main: CpuTime) -> CpuTime {
        match &self.cgroup {
            Some(cgroup) => cgroup.cpu_time(),
            None => main,
        }
    }

    /// Removes the exec's cgroup; call once `end` has returned.
    pub fn remove(self) {
        if let Some(cgroup) = self.cgroup {
            cgroup.remove();
        }
    }
}

/// A signal to a process group; a vanished group (ESRCH) is no error.
pub fn signal_group(pgid: Pid, signal: i32) {
    if let Ok(signal) = Signal::try_from(signal) {
        let _ = nix::sys::signal::killpg(pgid, signal);
    }
}
