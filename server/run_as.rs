//! `--run-as USER`: rexecd stays root only to spawn; every child drops to the
//! user's uid, gid and supplementary groups between fork and exec, with HOME,
//! USER and LOGNAME set as login would.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The account children run as, looked up once at start.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the password database; rexecd must be root to switch.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err(format!(
                "--run-as {name} needs rexecd to start as root (it switches user for each command)"
            ));
        }
        let user = User::from_name(name)
            .map_err(|e| format!("--run-as {name}: cannot read the password database: {e}"))?
            .ok_or_else(|| format!("--run-as {name}: no such user"))?;
        let c_name =
            CString::new(name).map_err(|_| "--run-as: the name contains NUL".to_string())?;
        // The user's groups as initgroups would set them, primary group included.
        let groups = nix::unistd::getgrouplist(&c_name, user.gid)
            .map_err(|e| format!("--run-as {name}: cannot list its groups: {e}"))?;
        let home = if user.dir.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            user.dir
        };
        let shell = if user.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            user.shell
        };
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home,
            shell,
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
    /// or `/` when it has none (`nobody`'s is /nonexistent) or cannot enter it.
    pub fn default_cwd(&self) -> &Path {
        if self.home.is_dir() && self.can_search_path(&self.home) {
            &self.home
        } else {
            Path::new("/")
        }
    }

    /// Whether the user may enter `dir`: search permission on it and on every
    /// directory above it, by owner, group or other bits. Only for a clear
    /// status up front; the child enters the cwd as the user, which is what
    /// decides (ACLs included).
    pub fn can_search_path(&self, dir: &Path) -> bool {
        if self.uid.is_root() {
            return true;
        }
        let Ok(dir) = dir.canonicalize() else {
            return false;
        };
        dir.ancestors().all(|step| {
            std::fs::metadata(step).is_ok_and(|meta| {
                let mode = meta.mode();
                if meta.uid() == self.uid.as_raw() {
                    mode & 0o100 != 0
                } else if self.gid.as_raw() == meta.gid()
                    || self.groups.iter().any(|g| g.as_raw() == meta.gid())
                {
                    mode & 0o010 != 0
                } else {
                    mode & 0o001 != 0
                }
            })
        })
    }

    /// Runs in the child between fork and exec: groups first, then gid, then
    /// uid (after setuid nothing else may change). Only async-signal-safe
    /// calls: the values were copied before the fork.
    pub fn switch(&self) -> std::io::Result<()> {
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setgid(self.gid)?;
        nix::unistd::setuid(self.uid)?;
        Ok(())
    }
}
