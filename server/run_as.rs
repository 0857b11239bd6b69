//! `--run-as USER`: rexecd stays root only to spawn; every child drops to the
//! user's uid, gid and supplementary groups between fork and exec, with HOME,
//! USER and LOGNAME set as login would.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// The account children run as, looked up once at start.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the password database; rexecd must be root to switch.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "--run-as {name} needs rexecd to start as root (it switches user for each command)"
            ));
        }
        let c_name =
            CString::new(name).map_err(|_| "--run-as: the name contains NUL".to_string())?;
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; strings land in `buffer`.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if rc != 0 {
            return Err(format!(
                "--run-as {name}: cannot read the password database: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if result.is_null() {
            return Err(format!("--run-as {name}: no such user"));
        }
        // SAFETY: getpwnam_r succeeded, so the fields point into `buffer` (or are null).
        let text = |field: *const libc::c_char| unsafe {
            (!field.is_null()).then(|| CStr::from_ptr(field).to_string_lossy().into_owned())
        };
        let home = text(entry.pw_dir).unwrap_or_else(|| "/".into());
        let shell = text(entry.pw_shell)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".into());
        let groups = supplementary_groups(&c_name, entry.pw_gid)
            .map_err(|e| format!("--run-as {name}: cannot list its groups: {e}"))?;
        Ok(RunAs {
            name: name.to_string(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
            groups,
            home: PathBuf::from(home),
            shell: PathBuf::from(shell),
        })
    }

    /// HOME, USER and LOGNAME; a request's own env is applied after, and wins.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("HOME", self.home.display().to_string()),
            ("USER", self.name.clone()),
            ("LOGNAME", self.name.clone()),
        ]
    }

    /// Where a command without a cwd starts: the user's home, as ssh does,
    /// or `/` when it has none (`nobody`'s is /nonexistent).
    pub fn default_cwd(&self) -> &Path {
        if self.home.is_dir() {
            &self.home
        } else {
            Path::new("/")
        }
    }

    /// Runs in the child between fork and exec: groups first, then gid, then
    /// uid (after setuid nothing else may change). Only async-signal-safe calls.
    pub fn switch_in_child(&self) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        move || {
            // SAFETY: plain syscalls on values owned by the closure.
            unsafe {
                if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}

/// The user's groups as initgroups would set them, primary group included.
fn supplementary_groups(name: &CStr, primary: libc::gid_t) -> std::io::Result<Vec<libc::gid_t>> {
    let mut count: libc::c_int = 32;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::gid_t; count.max(1) as usize];
        let mut found = count;
        // SAFETY: `groups` has room for `found` entries; getgrouplist updates `found`.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut found) };
        if rc >= 0 {
            groups.truncate(found.max(0) as usize);
            return Ok(groups);
        }
        // Too small: `found` now says how many there are.
        count = found.max(count.saturating_mul(2));
    }
    Err(std::io::Error::other("group list keeps growing"))
}
