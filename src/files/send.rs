//! The sending end of a transfer (rexecd for a download, rexec for an
//! upload): a file, or a tree walked a directory before what it holds, as
//! entries, data chunks and digests handed to `emit` one at a time, so the
//! receiver's pace sets the reading's.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tonic::Status;

use super::Piece;
use super::digest::Hasher;
use super::errors::io_status;
use super::paths::resolve;
use super::platform;
use crate::proto::{Digest, FileEntry, FileType};

/// Bytes read from a file per data message.
pub const CHUNK: usize = 512 * 1024;

/// How much was sent, for the audit line and the CLI's summary.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    pub entries: u64,
    pub bytes: u64,
    /// Sockets, FIFOs and devices in a tree, which are not sent.
    pub skipped: u64,
}

/// A source checked before anything is sent.
pub struct Source {
    pub path: PathBuf,
    /// The name its entries are sent under (the first path component).
    pub name: String,
    meta: fs::Metadata,
}

impl Source {
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
}

/// The source at `path` (resolved from `base`), with the errors decided
/// before any message: missing, unreadable, or a directory without
/// `recursive`. A symlink named here is followed, as cp and scp do.
pub fn prepare(base: &Path, path: &str, recursive: bool) -> Result<Source, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument("the path to copy is empty"));
    }
    let path = resolve(base, path)?;
    let meta = fs::metadata(&path).map_err(|e| io_status(&e, "read", &path))?;
    if meta.is_dir() && !recursive {
        return Err(Status::failed_precondition(format!(
            "{} is a directory (copy it recursively: cp -r)",
            path.display()
        )));
    }
    if !meta.is_dir() && !meta.is_file() {
        return Err(Status::failed_precondition(format!(
            "{} is not a regular file or directory",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map(PathBuf::from)
        .or_else(|| {
            path.canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(PathBuf::from))
        })
        .and_then(|name| name.to_str().map(str::to_string))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{} has no name to download it under",
                path.display()
            ))
        })?;
    if meta.is_file() {
        // Readable now, so the error is a status rather than a cut stream.
        File::open(&path).map_err(|e| io_status(&e, "read", &path))?;
    } else {
        fs::read_dir(&path).map_err(|e| io_status(&e, "read", &path))?;
    }
    Ok(Source { path, name, meta })
}

/// Sends `source` whole through `emit`, in chunks of `chunk` bytes, each
/// file ended by its `digest`; `sent` counts as it goes, so a failed
/// transfer still says how far it got.
pub fn send(
    source: Source,
    chunk: usize,
    digest: Digest,
    sent: &mut Sent,
    emit: impl FnMut(Piece) -> Result<(), Status>,
) -> Result<(), Status> {
    let mut sender = Sender {
        emit,
        chunk,
        digest,
        sent,
    };
    sender.send_source(source)
}

struct Sender<'a, E> {
    emit: E,
    chunk: usize,
    digest: Digest,
    sent: &'a mut Sent,
}

impl<E: FnMut(Piece) -> Result<(), Status>> Sender<'_, E> {
    fn send_source(&mut self, source: Source) -> Result<(), Status> {
        if source.meta.is_file() {
            // Followed, as cp and scp follow a symlink named on the command line.
            return self.send_file(&source.name, &source.path, &source.meta, false);
        }
        self.send_entry(entry(&source.name, FileType::Directory, &source.meta))?;
        let mut stack = vec![(source.path, source.name)];
        while let Some((dir, rel)) = stack.pop() {
            let mut children: Vec<_> = fs::read_dir(&dir)
                .map_err(|e| io_status(&e, "read", &dir))?
                .collect::<Result<_, _>>()
                .map_err(|e| io_status(&e, "read", &dir))?;
            children.sort_by_key(|child| child.file_name());
            let mut subdirs = Vec::new();
            for child in children {
                let path = child.path();
                let Some(name) = child.file_name().to_str().map(str::to_string) else {
                    return Err(Status::failed_precondition(format!(
                        "{}: the name is not UTF-8, which the Files API cannot carry",
                        path.display()
                    )));
                };
                let child_rel = format!("{rel}/{name}");
                let meta = fs::symlink_metadata(&path).map_err(|e| io_status(&e, "read", &path))?;
                let kind = meta.file_type();
                if kind.is_dir() {
                    self.send_entry(entry(&child_rel, FileType::Directory, &meta))?;
                    subdirs.push((path, child_rel));
                } else if kind.is_file() {
                    self.send_file(&child_rel, &path, &meta, true)?;
                } else if kind.is_symlink() {
                    let target =
                        platform::link_target(&path).map_err(|e| io_status(&e, "read", &path))?;
                    let Some(target) = target else {
                        return Err(Status::failed_precondition(format!(
                            "{}: the link target is not UTF-8",
                            path.display()
                        )));
                    };
                    let mut link = entry(&child_rel, FileType::Symlink, &meta);
                    link.link_target = target;
                    self.send_entry(link)?;
                } else {
                    self.sent.skipped += 1;
                }
            }
            // Depth first, in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    fn send_file(
        &mut self,
        rel: &str,
        path: &Path,
        meta: &fs::Metadata,
        in_tree: bool,
    ) -> Result<(), Status> {
        // A tree member that became a symlink since it was listed is not followed.
        let mut file =
            platform::open_to_send(path, in_tree).map_err(|e| io_status(&e, "read", path))?;
        let size = meta.len();
        self.send_entry(entry(rel, FileType::File, meta))?;
        let mut digest = Hasher::new(self.digest);
        let mut left = size;
        while left > 0 {
            let want = self.chunk.min(left as usize);
            // Read into spare capacity: no zeroing of what the read overwrites.
            let mut chunk = Vec::with_capacity(want);
            let n = match (&mut file).take(want as u64).read_to_end(&mut chunk) {
                Ok(0) => {
                    return Err(Status::data_loss(format!(
                        "{} shrank while it was being read",
                        path.display()
                    )));
                }
                Ok(n) => n,
                Err(e) => return Err(io_status(&e, "read", path)),
            };
            digest.update(&chunk);
            left -= n as u64;
            self.sent.bytes += n as u64;
            (self.emit)(Piece::Data(chunk.into()))?;
        }
        (self.emit)(Piece::End(digest.end()))
    }

    fn send_entry(&mut self, entry: FileEntry) -> Result<(), Status> {
        self.sent.entries += 1;
        (self.emit)(Piece::Entry(entry))
    }
}

fn entry(path: &str, kind: FileType, meta: &fs::Metadata) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        r#type: kind.into(),
        mode: platform::mode_of(meta),
        mtime_ns: platform::mtime_ns(meta),
        size: if kind == FileType::File {
            meta.len()
        } else {
            0
        },
        link_target: String::new(),
        size_unknown: false,
    }
}

/// Sends what `reader` yields until its end as one regular file named
/// `name`, of a size not known in advance (`rexec cp - :PATH`), mode 0644.
pub fn send_stream(
    name: &str,
    mut reader: impl Read,
    chunk: usize,
    digest: Digest,
    sent: &mut Sent,
    mut emit: impl FnMut(Piece) -> Result<(), Status>,
) -> Result<(), Status> {
    let mtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    sent.entries += 1;
    emit(Piece::Entry(FileEntry {
        path: name.to_string(),
        r#type: FileType::File.into(),
        mode: 0o644,
        mtime_ns,
        size: 0,
        link_target: String::new(),
        size_unknown: true,
    }))?;
    let mut digest = Hasher::new(digest);
    loop {
        let mut buffer = BytesMut::zeroed(chunk);
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Status::internal(format!("cannot read stdin: {e}"))),
        };
        buffer.truncate(n);
        digest.update(&buffer);
        sent.bytes += n as u64;
        emit(Piece::Data(buffer.freeze()))?;
    }
    emit(Piece::End(digest.end()))
}
