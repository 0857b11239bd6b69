//! Helpers of the Files tests: a rexecd in its own working directory,
//! leftover temporaries, and the generated Files client with the messages
//! an outside program would send.

use std::path::{Path, PathBuf};

use rexec::proto::files_client::FilesClient;
use rexec::proto::{
    Digest, FileEnd, FileEntry, FileType, UploadCommit, UploadRequest, UploadStart,
    upload_request::Event,
};

use super::{AddToken, Daemon, scratch_dir};

/// A rexecd whose working directory (where relative remote paths resolve)
/// is a fresh scratch directory, returned with it.
pub fn daemon_in(tag: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let dir = scratch_dir(tag);
    let cwd = dir.clone();
    let daemon = Daemon::start_configured(args, move |command| {
        command.current_dir(cwd);
    });
    (daemon, dir)
}

/// Every `.rexec-*.part` temporary under `dir`, at any depth.
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".rexec-") {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    found
}

/// The generated client, with the local token: what another program sees.
pub async fn files_client(
    daemon: &Daemon,
) -> FilesClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddToken>>
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FilesClient::with_interceptor(channel, super::add_local_token as AddToken)
}

pub fn start(destination: &str) -> UploadRequest {
    start_with(destination, Digest::Sha256 as i32)
}

/// `start` asking for the digest numbered `digest` (any number: an unknown
/// one is what an outsider might send).
pub fn start_with(destination: &str, digest: i32) -> UploadRequest {
    UploadRequest {
        event: Some(Event::Start(UploadStart {
            destination: destination.to_string(),
            digest,
            ..Default::default()
        })),
    }
}

pub fn entry(path: &str, kind: FileType, size: u64) -> UploadRequest {
    UploadRequest {
        event: Some(Event::Entry(FileEntry {
            path: path.to_string(),
            r#type: kind as i32,
            mode: 0o644,
            size,
            ..Default::default()
        })),
    }
}

pub fn data(bytes: &[u8]) -> UploadRequest {
    UploadRequest {
        event: Some(Event::Data(bytes.to_vec().into())),
    }
}

pub fn end(sha256: &[u8]) -> UploadRequest {
    UploadRequest {
        event: Some(Event::End(FileEnd {
            sha256: sha256.to_vec().into(),
            ..Default::default()
        })),
    }
}

/// A `FileEnd` with an XXH3-128 (canonical, big-endian), for uploads that
/// asked for that digest.
pub fn end_xxh3(xxh3_128: &[u8]) -> UploadRequest {
    UploadRequest {
        event: Some(Event::End(FileEnd {
            xxh3_128: xxh3_128.to_vec().into(),
            ..Default::default()
        })),
    }
}

pub fn commit() -> UploadRequest {
    UploadRequest {
        event: Some(Event::Commit(UploadCommit {})),
    }
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}
