//! Paths of a transfer: remote paths resolved as an exec's cwd would be,
//! entry paths checked so that none leaves the transfer, and the temporary
//! names files are written under before they are renamed into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

/// The longest name one path component may have (Linux NAME_MAX).
const NAME_MAX: usize = 255;
/// Every temporary name starts with this, so an operator can find leftovers
/// of a crash (`find / -name '.rexec-*.part'`).
pub const TEMP_PREFIX: &str = ".rexec-";
pub const TEMP_SUFFIX: &str = ".part";

/// A remote path as the caller wrote it, made absolute from `base` (where
/// an exec without `cwd` would run). Empty means `base` itself.
pub fn resolve(base: &Path, remote: &str) -> Result<PathBuf, Status> {
    if remote.contains('\0') {
        return Err(Status::invalid_argument("a path contains NUL"));
    }
    Ok(if remote.is_empty() {
        base.to_path_buf()
    } else {
        base.join(remote)
    })
}

/// The components of an entry path (`dir/sub/a.txt`): relative, `/`
/// separated, with no empty, `.` or `..` component, so no entry can name
/// anything outside the transfer.
pub fn entry_components(path: &str) -> Result<Vec<&str>, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("entry path {path:?}: {why}"));
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute; entry paths are relative to the transfer"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let components: Vec<&str> = path.split('/').collect();
    for component in &components {
        match *component {
            "" => return Err(bad("empty component")),
            "." | ".." => return Err(bad("`.` and `..` are not allowed")),
            name if name.len() > NAME_MAX => return Err(bad("a name longer than 255 bytes")),
            #[cfg(windows)]
            name if let Some(why) = unsafe_on_windows(name) => return Err(bad(why)),
            _ => {}
        }
    }
    Ok(components)
}

/// Why Windows would not read `name` as one plain name in its directory:
/// `\` and `/` separate paths there, `:` names a drive or a stream, and
/// device names (`NUL`, `COM1.txt`) open a device wherever they are.
#[cfg_attr(unix, allow(dead_code))]
fn unsafe_on_windows(name: &str) -> Option<&'static str> {
    if name.contains(['\\', ':']) {
        return Some("a `\\` or `:`, which Windows reads as part of a path");
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let device = matches!(
        stem.to_ascii_uppercase().as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) || (stem.len() == 4
        && stem.as_bytes()[3].is_ascii_digit()
        && stem.get(..3).is_some_and(|port| {
            port.eq_ignore_ascii_case("COM") || port.eq_ignore_ascii_case("LPT")
        }));
    device.then_some("a Windows device name")
}

/// A fresh temporary name in `dir`; never one that exists, since files are
/// created with O_EXCL and directories with mkdir.
pub fn temp_in(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{:x}-{n:x}-{nanos:x}{TEMP_SUFFIX}",
        std::process::id()
    ))
}

/// `dir/sub` of `dir/sub/a.txt`; `None` for a top-level entry.
pub fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(parent, _)| parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_never_leave_the_transfer() {
        assert_eq!(entry_components("a/b/c.txt").unwrap(), ["a", "b", "c.txt"]);
        assert_eq!(entry_components("..a/b..").unwrap(), ["..a", "b.."]);
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            ".",
            "a//b",
            "a/",
            "./a",
            "a\0b",
        ] {
            assert!(entry_components(bad).is_err(), "{bad:?} accepted");
        }
        assert!(entry_components(&"x".repeat(256)).is_err());
        assert!(entry_components(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn names_windows_would_read_as_paths_or_devices_are_found() {
        for bad in [
            "a\\b", "..\\x", "c:x", "f:stream", "NUL", "nul.txt", "COM1", "lpt9.log", "CON ",
        ] {
            assert!(unsafe_on_windows(bad).is_some(), "{bad:?} passed");
        }
        for good in ["a.txt", "NULL", "COM", "COM10", "console", ".nul", "x"] {
            assert!(unsafe_on_windows(good).is_none(), "{good:?} refused");
        }
    }

    #[test]
    fn remote_paths_resolve_from_the_base() {
        let base = Path::new("/home/u");
        assert_eq!(resolve(base, "").unwrap(), Path::new("/home/u"));
        assert_eq!(resolve(base, "f").unwrap(), Path::new("/home/u/f"));
        assert_eq!(resolve(base, "/tmp/f").unwrap(), Path::new("/tmp/f"));
        assert!(resolve(base, "a\0").is_err());
        assert_eq!(parent_of("a/b/c"), Some("a/b"));
        assert_eq!(parent_of("a"), None);
        let temp = temp_in(Path::new("/d"));
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX));
        assert_ne!(temp, temp_in(Path::new("/d")));
    }
}
