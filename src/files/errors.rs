//! A failed file operation as the status the Files API documents, with the
//! path and what was being done in its message.

use std::io::{self, ErrorKind};
use std::path::Path;

use tonic::{Code, Status};

/// `cannot create /srv/a.txt: permission denied`, as PERMISSION_DENIED.
pub fn io_status(error: &io::Error, doing: &str, path: &Path) -> Status {
    let message = format!("cannot {doing} {}: {}", path.display(), words(error));
    Status::new(code_of(error), message)
}

fn code_of(error: &io::Error) -> Code {
    #[cfg(unix)]
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG | libc::EMFILE | libc::ENFILE) => {
            return Code::ResourceExhausted;
        }
        Some(libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY | libc::ELOOP | libc::EXDEV) => {
            return Code::FailedPrecondition;
        }
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => return Code::PermissionDenied,
        _ => {}
    }
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            Code::ResourceExhausted
        }
        ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::DirectoryNotEmpty
        | ErrorKind::CrossesDevices
        | ErrorKind::Unsupported => Code::FailedPrecondition,
        ErrorKind::ReadOnlyFilesystem => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidInput | ErrorKind::InvalidFilename => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// The OS message without Rust's ` (os error 13)` suffix, lower-cased first
/// letter, as the CLI's other messages read.
fn words(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_the_documented_codes() {
        let status = |errno| {
            io_status(
                &io::Error::from_raw_os_error(errno),
                "create",
                Path::new("/x"),
            )
        };
        assert_eq!(status(libc::ENOSPC).code(), Code::ResourceExhausted);
        assert_eq!(status(libc::EACCES).code(), Code::PermissionDenied);
        assert_eq!(status(libc::ENOENT).code(), Code::NotFound);
        assert_eq!(status(libc::EEXIST).code(), Code::AlreadyExists);
        assert_eq!(status(libc::ENOTDIR).code(), Code::FailedPrecondition);
        assert_eq!(
            status(libc::EACCES).message(),
            "cannot create /x: permission denied"
        );
    }
}
