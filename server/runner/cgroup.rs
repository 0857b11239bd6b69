//! cgroup v2 per exec. rexecd makes `rexec/rexecd-PID-START/` under its own
//! cgroup (delegated by systemd's `Delegate=yes`, or the cgroup2 mount a
//! hybrid host has beside v1) and one `exec-N/` in it per exec; the child
//! joins it between fork and exec, so nothing it starts can leave it by
//! `setsid` or a double fork. The owner's pid and start time in the name let
//! a later rexecd tell a dead owner's leftovers from a live neighbour's.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::types::CpuTime;

/// The folder under the base cgroup that every rexecd there shares.
const SHARED_DIR: &str = "rexec";
/// Name prefix of one rexecd's folder: `rexecd-PID-STARTTIME`.
const OWNER_PREFIX: &str = "rexecd-";
/// How long crash cleanup waits for a dead owner's exec to empty.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// This rexecd's folder of exec cgroups.
pub struct CgroupTree {
    dir: PathBuf,
}

impl CgroupTree {
    /// Makes this rexecd's folder, after cleaning up those of dead owners.
    /// Any error means cgroups cannot be used here (no cgroup2, no delegation,
    /// read-only in a container) and the caller falls back.
    pub fn create() -> io::Result<CgroupTree> {
        let base = own_cgroup_dir()?;
        let shared = base.join(SHARED_DIR);
        match fs::create_dir(&shared) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        clean_up_dead_owners(&shared);
        let me = Pid::this();
        let start = start_time(me)?;
        let dir = shared.join(format!("{OWNER_PREFIX}{me}-{start}"));
        fs::create_dir(&dir)?;
        // A cgroup we cannot put a process in is no use: check with a probe.
        let tree = CgroupTree { dir };
        let (probe, _) = tree.exec_cgroup("probe")?;
        probe.remove();
        Ok(tree)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty cgroup for one exec, and the handle its child joins it by.
    pub fn exec_cgroup(&self, name: &str) -> io::Result<(ExecCgroup, Joiner)> {
        let dir = self.dir.join(name);
        fs::create_dir(&dir)?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(procs) => Ok((ExecCgroup { dir }, Joiner(OwnedFd::from(procs)))),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for CgroupTree {
    /// Every exec has been reaped by now (shutdown waits for them); a cgroup
    /// that could not be removed stays for the next start to clean up.
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// One exec's cgroup.
pub struct ExecCgroup {
    dir: PathBuf,
}

/// The exec cgroup's `cgroup.procs`, open (close-on-exec) for the child to
/// write itself into between fork and exec.
pub struct Joiner(OwnedFd);

impl std::os::fd::AsRawFd for Joiner {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Joiner {
    /// In the child: joins the cgroup ("0" names the writer). One write(2),
    /// async-signal-safe.
    pub fn join(&self) -> io::Result<()> {
        nix::unistd::write(&self.0, b"0")?;
        Ok(())
    }
}

impl ExecCgroup {
    /// Whether any process is in it (or in a cgroup it made below itself).
    pub fn populated(&self) -> bool {
        populated(&self.dir)
    }

    /// `signal` to every process in it, those in cgroups below included.
    pub fn signal(&self, signal: Signal) -> usize {
        signal_tree(&self.dir, signal)
    }

    /// SIGKILL to every process in it at once, forks in flight included
    /// (`cgroup.kill`, Linux 5.14); by pid on older kernels.
    pub fn kill(&self) {
        let killed = fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
            .and_then(|mut file| file.write_all(b"1"));
        if killed.is_err() {
            signal_tree(&self.dir, Signal::SIGKILL);
        }
    }

    /// User and system CPU time of every process that ran in it.
    pub fn cpu_time(&self) -> CpuTime {
        let text = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_micros)
        };
        CpuTime {
            user: field("user_usec "),
            system: field("system_usec "),
        }
    }

    /// Removes it once empty; cgroups the exec made below it go first.
    pub fn remove(self) {
        remove_tree(&self.dir);
    }
}

/// rexecd's own cgroup as a directory: the cgroup2 mount point plus the path
/// in `/proc/self/cgroup`'s `0::` line.
fn own_cgroup_dir() -> io::Result<PathBuf> {
    let not_found = |what: &str| io::Error::new(io::ErrorKind::NotFound, what.to_string());
    let cgroups = fs::read_to_string("/proc/self/cgroup")?;
    let own = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| not_found("no cgroup v2 entry in /proc/self/cgroup"))?;
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER"
    let (root, mount_point) = mounts
        .lines()
        .find_map(|line| {
            let (fields, fs_part) = line.split_once(" - ")?;
            if fs_part.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split_whitespace().skip(3);
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .ok_or_else(|| not_found("no cgroup2 mount"))?;
    let relative = own
        .strip_prefix(root.trim_end_matches('/'))
        .ok_or_else(|| not_found("own cgroup is outside the cgroup2 mount"))?;
    Ok(Path::new(&mount_point).join(relative.trim_start_matches('/')))
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field
/// 22): with the pid it names one process for ever, pid reuse or not.
fn start_time(pid: Pid) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    after_name
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat"))
}

/// Whether the owner named by a `rexecd-PID-START` folder is still running.
fn owner_alive(name: &str) -> bool {
    let Some((pid, start)) = name
        .strip_prefix(OWNER_PREFIX)
        .and_then(|rest| rest.split_once('-'))
    else {
        // Not a name we make: leave it alone.
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return true;
    };
    start_time(Pid::from_raw(pid)).is_ok_and(|now| now == start)
}

/// Kills and removes the exec cgroups of rexecds that are gone (SIGKILL, OOM,
/// power loss), one log line each; a live owner's are never touched.
fn clean_up_dead_owners(shared: &Path) {
    let Ok(entries) = fs::read_dir(shared) else {
        return;
    };
    for owner in entries.flatten() {
        let name = owner.file_name().to_string_lossy().into_owned();
        if !owner.path().is_dir() || owner_alive(&name) {
            continue;
        }
        for exec in fs::read_dir(owner.path()).into_iter().flatten().flatten() {
            let dir = exec.path();
            if !dir.is_dir() {
                continue;
            }
            let processes = count_tree(&dir);
            let _ = fs::write(dir.join("cgroup.kill"), b"1");
            if processes > 0 {
                signal_tree(&dir, Signal::SIGKILL);
            }
            let deadline = std::time::Instant::now() + CLEANUP_WAIT;
            while populated(&dir) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            remove_tree(&dir);
            tracing::warn!(
                cgroup = %dir.display(),
                processes,
                "killed what an exec of a rexecd that is no longer running left behind"
            );
        }
        let _ = fs::remove_dir(owner.path());
    }
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|line| line == "populated 1"))
}

/// Pids in `dir`'s cgroup.procs and in every cgroup below it.
fn pids_in_tree(dir: &Path, found: &mut Vec<Pid>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        found.extend(
            procs
                .lines()
                .filter_map(|line| line.parse().ok())
                .map(Pid::from_raw),
        );
    }
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            pids_in_tree(&child.path(), found);
        }
    }
}

fn count_tree(dir: &Path) -> usize {
    let mut pids = Vec::new();
    pids_in_tree(dir, &mut pids);
    pids.len()
}

fn signal_tree(dir: &Path, signal: Signal) -> usize {
    let mut pids = Vec::new();
    pids_in_tree(dir, &mut pids);
    for pid in &pids {
        // A process that exited meanwhile gives ESRCH: nothing to do.
        let _ = nix::sys::signal::kill(*pid, signal);
    }
    pids.len()
}

/// rmdir, deepest first; a cgroup still emptying (EBUSY) gets a few tries.
fn remove_tree(dir: &Path) {
    // Most execs make no cgroups of their own: one rmdir, no listing.
    if fs::remove_dir(dir).is_ok() {
        return;
    }
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&child.path());
        }
    }
    for attempt in 0..20 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 19 => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(cgroup = %dir.display(), "cannot remove exec cgroup: {e}");
                return;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_names_this_process() {
        let me = Pid::this();
        let start = start_time(me).unwrap();
        assert!(owner_alive(&format!("{OWNER_PREFIX}{me}-{start}")));
        assert!(!owner_alive(&format!("{OWNER_PREFIX}{me}-{}", start + 1)));
        assert!(
            owner_alive("something-else"),
            "foreign names are left alone"
        );
    }
}
