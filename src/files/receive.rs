//! The receiving end of a transfer (rexecd for an upload, rexec for a
//! download): entries in, files out, placed as cp places them. Every file
//! and symlink is made under a temporary name beside its target; a new
//! top-level directory is built under a temporary name. Nothing is renamed
//! into place until `finish`, once the last entry has arrived and every
//! digest matched; a receiver dropped before that removes what it made.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tonic::Status;

use super::Piece;
use super::digest::Hasher;
use super::errors::io_status;
use super::paths::{entry_components, parent_of, resolve, temp_in};
use super::platform;
use crate::proto::{Digest, FileEnd, FileEntry, FileType};

/// How a complete transfer went, for the answer and the audit line.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// The destination as resolved.
    pub destination: String,
    /// The top-level entry's path (the destination directory when several
    /// went into it).
    pub path: String,
    pub entries: u64,
    pub bytes: u64,
    /// The digest every file was checked with.
    pub digest: Option<Digest>,
}

/// Where top-level entries go: inside an existing directory, or as the
/// destination itself.
enum Placement {
    Into(PathBuf),
    As(PathBuf),
}

/// A regular file being received.
struct OpenFile {
    rel: String,
    file: File,
    temp: PathBuf,
    target: PathBuf,
    /// `None` when the sender did not know it (a stream).
    size: Option<u64>,
    written: u64,
    digest: Hasher,
    mode: u32,
    mtime_ns: i64,
}

/// A temporary name and where it goes at the end.
struct Pending {
    temp: PathBuf,
    target: PathBuf,
}

/// A transfer being received; see the module comment.
pub struct Receiver {
    placement: Placement,
    no_clobber: bool,
    preserve: bool,
    digest: Digest,
    top_level: usize,
    /// Directories of this upload by entry path, at their path now
    /// (inside a staged top-level directory until it is renamed).
    dirs: HashMap<String, PathBuf>,
    current: Option<OpenFile>,
    pending: Vec<Pending>,
    /// New top-level directories, built under a temporary name.
    staged: Vec<Pending>,
    /// Directories made inside existing ones, removed if the upload fails.
    created: Vec<PathBuf>,
    /// Modes and times that directories get once everything is in them.
    dir_finish: Vec<(PathBuf, Option<u32>, Option<i64>)>,
    summary: Received,
    done: bool,
}

impl Receiver {
    /// A receiver for `destination` (resolved from `base` when relative),
    /// which decides now where top-level entries go, as cp does: inside it
    /// when it is a directory or ends in `/`, else as it (always as it when
    /// `exact`). Every file's end must carry `digest`.
    pub fn start(
        base: &Path,
        destination: &str,
        no_clobber: bool,
        preserve: bool,
        exact: bool,
        digest: Digest,
    ) -> Result<Receiver, Status> {
        let resolved = resolve(base, destination)?;
        let wants_dir = destination.is_empty() || destination.ends_with('/');
        let placement = match placement(resolved.clone(), wants_dir)? {
            Placement::Into(dir) if exact => Placement::As(dir),
            placement => placement,
        };
        let shown = resolved.display().to_string();
        Ok(Receiver {
            placement,
            no_clobber,
            preserve,
            digest,
            top_level: 0,
            dirs: HashMap::new(),
            current: None,
            pending: Vec::new(),
            staged: Vec::new(),
            created: Vec::new(),
            dir_finish: Vec::new(),
            summary: Received {
                destination: shown.clone(),
                path: shown,
                entries: 0,
                bytes: 0,
                digest: Some(digest),
            },
            done: false,
        })
    }

    /// What has been received so far.
    pub fn summary(&self) -> &Received {
        &self.summary
    }

    /// Takes the next piece of the transfer, in order.
    pub fn piece(&mut self, piece: Piece) -> Result<(), Status> {
        match piece {
            Piece::Entry(entry) => self.entry(entry),
            Piece::Data(data) => self.data(data),
            Piece::End(end) => self.end(end),
        }
    }

    /// Every piece has arrived: checks the transfer is whole and puts
    /// everything in place. On an error what was made is removed.
    pub fn finish(mut self) -> Result<Received, Status> {
        if let Some(open) = &self.current {
            return Err(Status::invalid_argument(format!(
                "the transfer ended inside {}: no end message",
                open.rel
            )));
        }
        if self.top_level == 0 {
            return Err(Status::invalid_argument("the transfer sent no entries"));
        }
        self.commit()?;
        self.done = true;
        Ok(self.summary.clone())
    }

    /// Where an entry goes, with its parent directory checked to be one of
    /// this upload's (so nothing is ever written through a symlink the
    /// upload itself made).
    fn target_of(&mut self, path: &str) -> Result<(PathBuf, bool), Status> {
        let components = entry_components(path)?;
        let name = components[components.len() - 1];
        match parent_of(path) {
            Some(parent) => match self.dirs.get(parent) {
                Some(dir) => Ok((dir.join(name), false)),
                None => Err(Status::invalid_argument(format!(
                    "entry {path}: its directory {parent} was not sent before it"
                ))),
            },
            None => {
                self.top_level += 1;
                match &self.placement {
                    Placement::Into(dir) => {
                        let target = dir.join(name);
                        self.summary.path = if self.top_level == 1 {
                            target.display().to_string()
                        } else {
                            dir.display().to_string()
                        };
                        Ok((target, true))
                    }
                    Placement::As(dest) if self.top_level == 1 => Ok((dest.clone(), true)),
                    _ => Err(Status::failed_precondition(format!(
                        "{} is not a directory: several entries need one",
                        self.summary.destination
                    ))),
                }
            }
        }
    }

    fn entry(&mut self, entry: FileEntry) -> Result<(), Status> {
        if let Some(open) = &self.current {
            return Err(Status::invalid_argument(format!(
                "entry {} came before the end of {}",
                entry.path, open.rel
            )));
        }
        let (target, top) = self.target_of(&entry.path)?;
        self.summary.entries += 1;
        match FileType::try_from(entry.r#type) {
            Ok(FileType::File) => self.open_file(entry, target),
            Ok(FileType::Directory) => self.directory(entry, target, top),
            Ok(FileType::Symlink) => self.symlink(entry, target),
            _ => Err(Status::invalid_argument(format!(
                "entry {}: type {} is not a file, directory or symlink",
                entry.path, entry.r#type
            ))),
        }
    }

    /// A file or symlink may replace what is at `target` unless that is a
    /// directory, or `no_clobber` was asked.
    fn check_replaceable(&self, target: &Path) -> Result<(), Status> {
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => Err(Status::failed_precondition(format!(
                "cannot overwrite directory {} with a non-directory",
                target.display()
            ))),
            Ok(_) if self.no_clobber => Err(Status::already_exists(format!(
                "{} exists (no-clobber)",
                target.display()
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_status(&e, "reach", target)),
        }
    }

    fn open_file(&mut self, entry: FileEntry, target: PathBuf) -> Result<(), Status> {
        self.check_replaceable(&target)?;
        let dir = target.parent().unwrap_or(Path::new("/"));
        let temp = temp_in(dir);
        let file = platform::create_file(&temp, entry.mode)
            .map_err(|e| io_status(&e, "create a file in", dir))?;
        self.current = Some(OpenFile {
            rel: entry.path,
            file,
            temp,
            target,
            size: (!entry.size_unknown).then_some(entry.size),
            written: 0,
            digest: Hasher::new(self.digest),
            mode: entry.mode & 0o7777,
            mtime_ns: entry.mtime_ns,
        });
        Ok(())
    }

    fn data(&mut self, data: Bytes) -> Result<(), Status> {
        let Some(open) = &mut self.current else {
            return Err(Status::invalid_argument(
                "data came with no regular file entry before it",
            ));
        };
        if let Some(size) = open.size
            && open.written + data.len() as u64 > size
        {
            return Err(Status::data_loss(format!(
                "{}: more bytes than its size ({size})",
                open.rel
            )));
        }
        open.file
            .write_all(&data)
            .map_err(|e| io_status(&e, "write", &open.target))?;
        open.digest.update(&data);
        open.written += data.len() as u64;
        self.summary.bytes += data.len() as u64;
        Ok(())
    }

    fn end(&mut self, end: FileEnd) -> Result<(), Status> {
        let Some(open) = self.current.take() else {
            return Err(Status::invalid_argument(
                "end came with no regular file entry before it",
            ));
        };
        // Kept for removal if anything below fails.
        self.pending.push(Pending {
            temp: open.temp.clone(),
            target: open.target.clone(),
        });
        if let Some(size) = open.size
            && open.written != size
        {
            return Err(Status::data_loss(format!(
                "{}: {} bytes arrived of {size}: the file was not kept",
                open.rel, open.written
            )));
        }
        open.digest.check(&end, &open.rel).map_err(|status| {
            Status::data_loss(format!("{}: the file was not kept", status.message()))
        })?;
        if self.preserve {
            platform::set_file_mode(&open.file, open.mode)
                .map_err(|e| io_status(&e, "set the mode of", &open.target))?;
            platform::set_file_mtime(&open.file, open.mtime_ns)
                .map_err(|e| io_status(&e, "set the time of", &open.target))?;
        }
        Ok(())
    }

    fn directory(&mut self, entry: FileEntry, target: PathBuf, top: bool) -> Result<(), Status> {
        let mode = entry.mode & 0o7777;
        let mtime = self.preserve.then_some(entry.mtime_ns);
        let at = match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                // Merged into, as cp -r does; its mode changes only with -p.
                if self.preserve {
                    self.dir_finish.push((target.clone(), Some(mode), mtime));
                }
                target
            }
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "cannot overwrite non-directory {} with a directory",
                    target.display()
                )));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let made = if top {
                    temp_in(target.parent().unwrap_or(Path::new("/")))
                } else {
                    target.clone()
                };
                // Owner rwx while it fills; its own mode once it is full.
                platform::create_dir(&made, 0o700 | mode)
                    .map_err(|e| io_status(&e, "create directory", &target))?;
                if top {
                    self.staged.push(Pending {
                        temp: made.clone(),
                        target,
                    });
                } else {
                    self.created.push(made.clone());
                }
                let final_mode = if self.preserve {
                    Some(mode)
                } else {
                    (mode & 0o700 != 0o700).then_some(mode & 0o777 & !platform::umask())
                };
                if final_mode.is_some() || mtime.is_some() {
                    self.dir_finish.push((made.clone(), final_mode, mtime));
                }
                made
            }
            Err(e) => return Err(io_status(&e, "reach", &target)),
        };
        self.dirs.insert(entry.path, at);
        Ok(())
    }

    fn symlink(&mut self, entry: FileEntry, target: PathBuf) -> Result<(), Status> {
        if entry.link_target.is_empty() || entry.link_target.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "symlink {}: its target must be a non-empty path without NUL",
                entry.path
            )));
        }
        self.check_replaceable(&target)?;
        let temp = temp_in(target.parent().unwrap_or(Path::new("/")));
        platform::symlink(&entry.link_target, &temp)
            .map_err(|e| io_status(&e, "create symlink", &target))?;
        self.pending.push(Pending {
            temp: temp.clone(),
            target: target.clone(),
        });
        if self.preserve {
            platform::set_path_mtime(&temp, entry.mtime_ns)
                .map_err(|e| io_status(&e, "set the time of", &target))?;
        }
        Ok(())
    }

    /// Everything arrived and checked: files and links into place, then
    /// directory modes and times (deepest first), then new top-level trees.
    fn commit(&mut self) -> Result<(), Status> {
        let no_replace = self.no_clobber;
        let rename = |from: &Path, to: &Path| {
            platform::rename(from, to, no_replace).map_err(|e| io_status(&e, "put in place", to))
        };
        while let Some(first) = self.pending.first() {
            rename(&first.temp, &first.target)?;
            self.pending.remove(0);
        }
        for (dir, mode, mtime) in self.dir_finish.iter().rev() {
            if let Some(mode) = mode {
                platform::set_dir_mode(dir, *mode)
                    .map_err(|e| io_status(&e, "set the mode of", dir))?;
            }
            if let Some(mtime) = mtime {
                platform::set_path_mtime(dir, *mtime)
                    .map_err(|e| io_status(&e, "set the time of", dir))?;
            }
        }
        while let Some(first) = self.staged.first() {
            rename(&first.temp, &first.target)?;
            self.staged.remove(0);
        }
        self.created.clear();
        Ok(())
    }
}

/// A receiver dropped before `finish` succeeded (an error, a transfer cut
/// off) removes its temporary files, links and trees, and the directories
/// it made inside existing ones.
impl Drop for Receiver {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(open) = self.current.take() {
            let _ = fs::remove_file(&open.temp);
        }
        for pending in self.pending.drain(..) {
            let _ = fs::remove_file(&pending.temp);
        }
        for dir in self.created.drain(..).rev() {
            let _ = fs::remove_dir(&dir);
        }
        for staged in self.staged.drain(..) {
            let _ = platform::remove_tree(&staged.temp);
        }
    }
}

/// Where top-level entries go, from what the destination is now.
fn placement(destination: PathBuf, wants_dir: bool) -> Result<Placement, Status> {
    Ok(match fs::metadata(&destination) {
        Ok(meta) if meta.is_dir() => Placement::Into(destination),
        Ok(_) if wants_dir => {
            return Err(Status::failed_precondition(format!(
                "{} is not a directory",
                destination.display()
            )));
        }
        Ok(_) => Placement::As(destination),
        Err(e) if e.kind() == ErrorKind::NotFound && !wants_dir => {
            let parent = destination.parent().unwrap_or(Path::new("/"));
            match fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => Placement::As(destination),
                Ok(_) => {
                    return Err(Status::failed_precondition(format!(
                        "{} is not a directory",
                        parent.display()
                    )));
                }
                Err(e) => return Err(io_status(&e, "reach", parent)),
            }
        }
        Err(e) => return Err(io_status(&e, "reach", &destination)),
    })
}
