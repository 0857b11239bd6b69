//! The default credential: a per-user token in a 0600 file in a 0700
//! directory (`rexec::local_token::path`), made on first start and kept, so
//! every rexecd of one user, and every client of that user, agrees on it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::auth::MIN_TOKEN_LEN;

/// Random bytes in a new token (shown as hex).
const TOKEN_BYTES: usize = 32;

/// The token in `path`, made first when there is none. A file or directory
/// that another user owns or could read is refused, never repaired: someone
/// may have planted it to learn or choose the token.
pub fn load_or_create(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| format!("{shown} has no directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    check_private(
        dir,
        &std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?,
        true,
    )?;
    // Two rexecds starting at once: the first link wins, the other reads it.
    for _ in 0..3 {
        match read_existing(path)? {
            Some(token) => return Ok(token),
            None => {
                if let Some(token) = create(dir, path)? {
                    return Ok(token);
                }
            }
        }
    }
    Err(format!(
        "{shown} keeps appearing and vanishing; is another program removing it?"
    ))
}

fn read_existing(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {shown}: {e} (a symlink is refused)")),
    };
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    check_private(path, &meta, false)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{shown} does not hold a token (one word of at least {MIN_TOKEN_LEN} printable \
             characters); remove it and rexecd makes a new one"
        ));
    }
    Ok(Some(token.to_string()))
}

/// Writes a new token to a private temporary file, then links it into
/// place: the token file is never seen half-written, and never replaced.
fn create(dir: &Path, path: &Path) -> Result<Option<String>, String> {
    let token = new_token()?;
    let temporary = dir.join(format!(".token.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("cannot write {}: {e}", temporary.display()));
    }
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "made a new local token");
            Ok(Some(token))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

fn check_private(path: &Path, meta: &std::fs::Metadata, directory: bool) -> Result<(), String> {
    let shown = path.display();
    let kind_ok = if directory {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    if !kind_ok {
        let kind = if directory {
            "directory"
        } else {
            "regular file"
        };
        return Err(format!("{shown} is not a {kind} (a symlink is refused)"));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{shown} belongs to uid {}, not to this user (uid {me}); refusing to use it",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let want = if directory { 700 } else { 600 };
        return Err(format!(
            "{shown} is accessible by group or others (mode {mode:04o}); chmod {want} {shown}"
        ));
    }
    Ok(())
}

/// 32 random bytes in hex: also `rexecd init`'s token.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `local:NAME` for the audit log: the user this rexecd runs as.
pub fn principal() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; strings land in `buffer`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !entry.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name points into `buffer`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        return format!("local:{}", name.to_string_lossy());
    }
    format!("local:uid={uid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rexec-lt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn made_once_then_read_back_private() {
        let dir = scratch("once");
        let path = dir.join("rexec/token");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), 2 * TOKEN_BYTES);
        assert_eq!(load_or_create(&path).unwrap(), first);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn readable_by_others_or_a_symlink_is_refused() {
        let dir = scratch("open");
        let path = dir.join("rexec/token");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&path).unwrap_err();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(load_or_create(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let error = load_or_create(&path).unwrap_err();
        assert!(error.contains("chmod 700"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
