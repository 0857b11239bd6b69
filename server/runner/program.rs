//! From a request to what `execve` gets: the environment and cwd checked,
//! the program found as execvp would find it, and the login shell named.
//! Errors here come before anything is spawned.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::types::{ExecSpec, Program, RunError};
use crate::run_as::RunAs;

/// The program and its arguments for one exec.
pub struct Resolved {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Checks the request and turns it into program + arguments.
pub fn resolve(
    spec: &ExecSpec,
    shell: &Path,
    run_as: Option<&RunAs>,
) -> Result<Resolved, RunError> {
    check_env(&spec.env)?;
    if let Some(cwd) = &spec.cwd {
        check_cwd(cwd, run_as)?;
    }
    let (program, args) = match &spec.program {
        Program::Shell(command) => {
            if command.contains('\0') {
                return Err(RunError::InvalidArgument(
                    "command contains a NUL byte".into(),
                ));
            }
            (shell.to_path_buf(), vec!["-c".into(), command.clone()])
        }
        Program::LoginShell => (
            run_as.map_or_else(login_shell, |user| user.shell.clone()),
            Vec::new(),
        ),
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
            (program, rest.to_vec())
        }
    };
    crate::limits::check_exec_size(&args, &spec.env)?;
    Ok(Resolved { program, args })
}

fn check_env(env: &[(String, String)]) -> Result<(), RunError> {
    for (name, value) in env {
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
    Ok(())
}

/// The cwd must be a directory the command's user can enter. With `--run-as`
/// the child enters it only after dropping privileges, so a directory only
/// root can reach fails there anyway; this check gives the clear status first.
fn check_cwd(cwd: &Path, run_as: Option<&RunAs>) -> Result<(), RunError> {
    if cwd.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(RunError::InvalidArgument("cwd contains a NUL byte".into()));
    }
    let denied = || RunError::PermissionDenied(format!("cwd not accessible: {}", cwd.display()));
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(RunError::InvalidArgument(format!(
                "cwd is not a directory: {}",
                cwd.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(denied()),
        Err(_) => {
            return Err(RunError::NotFound(format!(
                "cwd not found: {}",
                cwd.display()
            )));
        }
    }
    match run_as {
        Some(user) if !user.can_search_path(cwd) => Err(denied()),
        _ => Ok(()),
    }
}

/// Looks `name` up as execvp would: a name with a slash is a path (relative to
/// the exec's cwd), anything else is searched in PATH.
fn find_program(name: &str, cwd: Option<&Path>, path_var: Option<OsString>) -> Option<PathBuf> {
    let is_executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
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

/// The server user's login shell from the password database, else /bin/sh.
/// Read once: spawns run on several threads, and the database does not change
/// under a running server in any way that matters here.
fn login_shell() -> PathBuf {
    static SHELL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHELL
        .get_or_init(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.shell)
                .filter(|shell| !shell.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("/bin/sh"))
        })
        .clone()
}

/// The server user's home from the password database (else `$HOME`), when it
/// is a directory: where a login shell starts without a run-as user.
pub fn own_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .filter(|dir| dir.is_dir())
}

/// `-bash` for /bin/bash: a leading dash makes a shell a login shell.
pub fn login_arg0(program: &Path) -> String {
    let name = program
        .file_name()
        .map_or_else(|| "sh".into(), |n| n.to_string_lossy().into_owned());
    format!("-{name}")
}
