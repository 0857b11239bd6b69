//! One download, on its own thread (see `identity`): a file, or a tree
//! walked a directory before what it holds, as entries, data chunks and
//! digests. The stream to the client is a small bounded queue, so a slow
//! client slows the reading, and rexecd holds a few chunks at most.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use rexec::proto::{
    DownloadRequest, DownloadResponse, FileEnd, FileEntry, FileType, download_response,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::errors::io_status;
use super::paths::resolve;

/// Bytes read from a file per data message.
pub const CHUNK: usize = 512 * 1024;

/// How a download went, for the audit line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub path: String,
    pub entries: u64,
    pub bytes: u64,
    /// Sockets, FIFOs and devices in a tree, which are not sent.
    pub skipped: u64,
}

/// What was checked before anything is sent.
pub struct Prepared {
    path: PathBuf,
    name: String,
    meta: fs::Metadata,
}

pub struct Download {
    sender: mpsc::Sender<Result<DownloadResponse, Status>>,
    stop: CancellationToken,
    pub summary: Summary,
}

/// The source, with the statuses decided before any message: missing,
/// unreadable, or a directory without `recursive`.
pub fn prepare(base: &Path, request: &DownloadRequest) -> Result<Prepared, Status> {
    if request.path.is_empty() {
        return Err(Status::invalid_argument("the path to download is empty"));
    }
    let path = resolve(base, &request.path)?;
    let meta = fs::metadata(&path).map_err(|e| io_status(&e, "read", &path))?;
    if meta.is_dir() && !request.recursive {
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
    Ok(Prepared { path, name, meta })
}

impl Download {
    pub fn new(
        sender: mpsc::Sender<Result<DownloadResponse, Status>>,
        stop: CancellationToken,
    ) -> Self {
        Download {
            sender,
            stop,
            summary: Summary::default(),
        }
    }

    /// Sends the whole source; an error ends the stream with its status.
    pub fn run(&mut self, source: Prepared) -> Result<(), Status> {
        self.summary.path = source.path.display().to_string();
        let result = self.send_source(source);
        if let Err(status) = &result {
            // The client may be gone already; then nobody needs the status.
            let _ = self.sender.blocking_send(Err(status.clone()));
        }
        result
    }

    fn send_source(&mut self, source: Prepared) -> Result<(), Status> {
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
                    let target = fs::read_link(&path).map_err(|e| io_status(&e, "read", &path))?;
                    let Some(target) = target.to_str() else {
                        return Err(Status::failed_precondition(format!(
                            "{}: the link target is not UTF-8",
                            path.display()
                        )));
                    };
                    let mut link = entry(&child_rel, FileType::Symlink, &meta);
                    link.link_target = target.to_string();
                    self.send_entry(link)?;
                } else {
                    self.summary.skipped += 1;
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
        let flags = if in_tree { libc::O_NOFOLLOW } else { 0 };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| io_status(&e, "read", path))?;
        let size = meta.len();
        self.send_entry(entry(rel, FileType::File, meta))?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = size;
        while left > 0 {
            let want = CHUNK.min(left as usize);
            let mut chunk = BytesMut::zeroed(want);
            let n = match file.read(&mut chunk) {
                Ok(0) => {
                    return Err(Status::data_loss(format!(
                        "{} shrank while it was being read",
                        path.display()
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_status(&e, "read", path)),
            };
            chunk.truncate(n);
            digest.update(&chunk);
            left -= n as u64;
            self.summary.bytes += n as u64;
            self.send(download_response::Event::Data(chunk.freeze()))?;
        }
        self.send(download_response::Event::End(FileEnd {
            sha256: bytes::Bytes::copy_from_slice(digest.finish().as_ref()),
        }))
    }

    fn send_entry(&mut self, entry: FileEntry) -> Result<(), Status> {
        self.summary.entries += 1;
        self.send(download_response::Event::Entry(entry))
    }

    /// Waits for room in the queue: the client's pace sets the reading's.
    fn send(&self, event: download_response::Event) -> Result<(), Status> {
        if self.stop.is_cancelled() {
            return Err(Status::unavailable("server is shutting down"));
        }
        self.sender
            .blocking_send(Ok(DownloadResponse { event: Some(event) }))
            .map_err(|_| Status::cancelled("the client went away"))
    }
}

fn entry(path: &str, kind: FileType, meta: &fs::Metadata) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        r#type: kind.into(),
        mode: meta.mode() & 0o7777,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        size: if kind == FileType::File { meta.len() } else { 0 },
        link_target: String::new(),
    }
}
