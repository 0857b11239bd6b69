//! What a transfer needs from the file system beyond std: modes, times,
//! opens that do not follow a symlink, symlinks, renames that never
//! replace. rexecd runs on Unix only; the Windows half is for rexec.exe's
//! `cp`. Windows has no mode bits: a file is sent as 0644 (0444 when
//! read-only), a directory as 0755, and of a mode received only the owner's
//! write bit is kept, as the read-only attribute of a file.

use std::fs;
use std::io;
use std::path::Path;

pub use imp::*;

#[cfg(unix)]
mod imp {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use nix::fcntl::{AT_FDCWD, RenameFlags};
    use nix::sys::stat::UtimensatFlags;
    use nix::sys::time::TimeSpec;

    pub fn mode_of(meta: &fs::Metadata) -> u32 {
        meta.mode() & 0o7777
    }

    pub fn mtime_ns(meta: &fs::Metadata) -> i64 {
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    }

    /// A file to read; in a tree, one that became a symlink since it was
    /// listed is refused (ELOOP), not followed.
    pub fn open_to_send(path: &Path, in_tree: bool) -> io::Result<File> {
        let flags = if in_tree { libc::O_NOFOLLOW } else { 0 };
        OpenOptions::new().read(true).custom_flags(flags).open(path)
    }

    /// A new file (never an existing one) with `mode` less the umask.
    pub fn create_file(path: &Path, mode: u32) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(path)
    }

    pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
        fs::DirBuilder::new().mode(mode & 0o777).create(path)
    }

    pub fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
        file.set_permissions(fs::Permissions::from_mode(mode))
    }

    pub fn set_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
    }

    /// Sets the modification time, leaving the access time as it is.
    pub fn set_file_mtime(file: &File, ns: i64) -> io::Result<()> {
        nix::sys::stat::futimens(file, &TimeSpec::UTIME_OMIT, &timespec(ns))
            .map_err(io::Error::from)
    }

    /// As `set_file_mtime`, for a path; a symlink's own time, not its target's.
    pub fn set_path_mtime(path: &Path, ns: i64) -> io::Result<()> {
        nix::sys::stat::utimensat(
            AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &timespec(ns),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
    }

    pub fn symlink(target: &str, at: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, at)
    }

    /// A link's target as the wire carries it; `None` when it is not UTF-8.
    pub fn link_target(path: &Path) -> io::Result<Option<String>> {
        Ok(fs::read_link(path)?.to_str().map(str::to_string))
    }

    /// Renames `from` to `to`; with `no_replace`, fails (EEXIST) rather than
    /// replace anything at `to`, decided by the kernel in the same step.
    pub fn rename(from: &Path, to: &Path, no_replace: bool) -> io::Result<()> {
        let flags = if no_replace {
            RenameFlags::RENAME_NOREPLACE
        } else {
            RenameFlags::empty()
        };
        nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).map_err(io::Error::from)
    }

    /// Gives the owner rwx on a directory, so what is in it can be removed.
    pub fn open_up_dir(dir: &Path) -> io::Result<()> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
    }

    /// The process umask (the kernel applies it to every create; read here
    /// for the final mode of a directory made owner-writable while it filled).
    pub fn umask() -> u32 {
        static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        *UMASK.get_or_init(|| {
            fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix("Umask:"))
                        .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
                })
                .unwrap_or(0o022)
        })
    }

    fn timespec(ns: i64) -> TimeSpec {
        TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
    }
}

#[cfg(windows)]
mod imp {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::fs::OpenOptionsExt;
    use std::path::Path;

    use windows_sys::Win32::Storage::FileSystem::{
        FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT, FILE_WRITE_ATTRIBUTES,
        MoveFileExW,
    };

    pub fn mode_of(meta: &fs::Metadata) -> u32 {
        if meta.is_dir() {
            0o755
        } else if meta.file_type().is_symlink() {
            0o777
        } else if meta.permissions().readonly() {
            0o444
        } else {
            0o644
        }
    }

    pub fn mtime_ns(meta: &fs::Metadata) -> i64 {
        meta.modified().map_or(0, super::unix_ns)
    }

    /// A file to read; in a tree, a symlink (a reparse point) is opened as
    /// itself, not followed.
    pub fn open_to_send(path: &Path, in_tree: bool) -> io::Result<File> {
        let flags = if in_tree {
            FILE_FLAG_OPEN_REPARSE_POINT
        } else {
            0
        };
        OpenOptions::new().read(true).custom_flags(flags).open(path)
    }

    pub fn create_file(path: &Path, _mode: u32) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    pub fn create_dir(path: &Path, _mode: u32) -> io::Result<()> {
        fs::create_dir(path)
    }

    /// The owner's write bit as the read-only attribute.
    pub fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
        let mut permissions = file.metadata()?.permissions();
        permissions.set_readonly(mode & 0o200 == 0);
        file.set_permissions(permissions)
    }

    /// Windows ignores the read-only attribute of a directory: nothing to do.
    pub fn set_dir_mode(_dir: &Path, _mode: u32) -> io::Result<()> {
        Ok(())
    }

    pub fn set_file_mtime(file: &File, ns: i64) -> io::Result<()> {
        file.set_modified(super::from_unix_ns(ns))
    }

    /// As `set_file_mtime`, for a path: a directory, or a symlink itself.
    pub fn set_path_mtime(path: &Path, ns: i64) -> io::Result<()> {
        OpenOptions::new()
            .access_mode(FILE_WRITE_ATTRIBUTES)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)?
            .set_modified(super::from_unix_ns(ns))
    }

    /// A link to a directory when the target (from the link's directory) is
    /// one now, else to a file: Windows links have a kind, Unix ones do not.
    /// Making one needs the privilege (an administrator, or Developer Mode).
    /// The wire's `/` becomes `\`, which is all Windows resolves in a link.
    pub fn symlink(target: &str, at: &Path) -> io::Result<()> {
        let target = target.replace('/', "\\");
        let points_at = at.parent().unwrap_or(Path::new("")).join(&target);
        if points_at.is_dir() {
            std::os::windows::fs::symlink_dir(&target, at)?;
        } else {
            std::os::windows::fs::symlink_file(&target, at)?;
        }
        // Wine 8 answers success and makes nothing: say so, not "not found"
        // when the link is renamed into place.
        match fs::symlink_metadata(at) {
            Ok(_) => Ok(()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this system reported a symbolic link made but made none",
            )),
        }
    }

    /// A link's target as the wire carries it: `/` separated.
    pub fn link_target(path: &Path) -> io::Result<Option<String>> {
        Ok(fs::read_link(path)?
            .to_str()
            .map(|target| target.replace('\\', "/")))
    }

    /// Renames `from` to `to`; with `no_replace`, fails rather than replace
    /// anything at `to` (MoveFileExW without MOVEFILE_REPLACE_EXISTING).
    pub fn rename(from: &Path, to: &Path, no_replace: bool) -> io::Result<()> {
        if !no_replace {
            return fs::rename(from, to);
        }
        let wide = |path: &Path| -> Vec<u16> {
            path.as_os_str()
                .encode_wide()
                .chain(std::iter::once(0))
                .collect()
        };
        let (from, to) = (wide(from), wide(to));
        // SAFETY: both are NUL-terminated UTF-16 strings that outlive the call.
        match unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), 0) } {
            0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }

    /// Clears the read-only attribute, so what is in a directory can go.
    #[allow(
        clippy::permissions_set_readonly_false,
        reason = "Windows: no mode bits to widen"
    )]
    pub fn open_up_dir(dir: &Path) -> io::Result<()> {
        let mut permissions = fs::metadata(dir)?.permissions();
        permissions.set_readonly(false);
        fs::set_permissions(dir, permissions)
    }

    pub fn umask() -> u32 {
        0
    }
}

/// Nanoseconds since the Unix epoch, negative before it.
#[cfg_attr(unix, allow(dead_code))]
fn unix_ns(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i64,
        Err(before) => -(before.duration().as_nanos() as i64),
    }
}

#[cfg_attr(unix, allow(dead_code))]
fn from_unix_ns(ns: i64) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    let magnitude = std::time::Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        epoch + magnitude
    } else {
        epoch - magnitude
    }
}

/// Removes a staged tree. A directory left without owner write or search
/// (a source mode of 0o555) is opened up first, so the tree always goes.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    if fs::remove_dir_all(dir).is_ok() {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        if fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) {
            let _ = open_up_dir(&next);
            if let Ok(entries) = fs::read_dir(&next) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_nanoseconds() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000] {
            assert_eq!(unix_ns(from_unix_ns(ns)), ns);
        }
    }
}
