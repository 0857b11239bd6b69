//! Whose rights a transfer uses. With `--run-as USER`, each transfer runs on
//! a thread of its own whose filesystem identity is the user's: fsuid, fsgid
//! and supplementary groups, set with the raw system calls, which change only
//! the calling thread (glibc's wrappers would change every thread of
//! rexecd). A non-root fsuid also drops the thread's override capabilities,
//! so the kernel checks every open, create and rename as it would for the
//! user's own processes. The thread ends with the transfer; it never goes
//! back to a pool with the user's identity.

use std::io;
use std::thread::JoinHandle;

use crate::run_as::RunAs;

/// Runs `work` on a new thread, as `run_as` when given, else as rexecd.
pub fn spawn_as<T, F>(run_as: Option<RunAs>, name: &str, work: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce(Result<(), io::Error>) -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let switched = match &run_as {
                Some(user) => become_user(user),
                None => Ok(()),
            };
            work(switched)
        })
}

/// Sets this thread's groups, fsgid and fsuid to the user's, and checks
/// that they took.
fn become_user(user: &RunAs) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = user.groups.iter().map(|g| g.as_raw()).collect();
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    // SAFETY: raw system calls with plain integers and a valid slice; they
    // change only the calling thread's credentials.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // Either call returns the previous id, and an invalid id changes
        // nothing: asking with -1 reads the id now in force.
        let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if fsuid != uid || fsgid != gid {
            return Err(io::Error::other(format!(
                "cannot take the identity of {} (fsuid {fsuid}, fsgid {fsgid})",
                user.name
            )));
        }
    }
    Ok(())
}
