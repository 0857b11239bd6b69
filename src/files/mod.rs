//! Files and trees as the Files API moves them: entries in walk order, each
//! regular file followed by its data and a digest. Both ends use the same
//! two halves: `send` reads a local file or tree into pieces, `receive`
//! turns pieces into files, placed as cp places them, verified, and
//! renamed into place only when whole. rexecd sends for a download and
//! receives for an upload; rexec the other way round.
//!
//! - `paths`: remote paths, entry paths, temporary names.
//! - `errors`: a failed file operation as a status.
//! - `digest`: the per-file digest, SHA-256 or XXH3-128.
//! - `platform`: modes, times, symlinks and renames on Unix and Windows.

mod digest;
mod errors;
mod paths;
mod platform;
mod receive;
mod send;

use bytes::Bytes;

pub use digest::{Hasher, kind_of as digest_kind, name as digest_name};
pub use errors::io_status;
pub use paths::{TEMP_PREFIX, TEMP_SUFFIX};
pub use receive::{Received, Receiver};
pub use send::{CHUNK, Sent, Source, prepare, send, send_stream};

pub use crate::proto::Digest;
use crate::proto::{
    DownloadResponse, FileEnd, FileEntry, UploadRequest, download_response, upload_request,
};

/// One piece of a transfer, whichever way it goes.
#[derive(Debug, Clone)]
pub enum Piece {
    Entry(FileEntry),
    Data(Bytes),
    End(FileEnd),
}

impl Piece {
    /// Bytes of file data it carries.
    pub fn data_len(&self) -> usize {
        match self {
            Piece::Data(data) => data.len(),
            _ => 0,
        }
    }

    pub fn into_upload(self) -> UploadRequest {
        UploadRequest {
            event: Some(match self {
                Piece::Entry(entry) => upload_request::Event::Entry(entry),
                Piece::Data(data) => upload_request::Event::Data(data),
                Piece::End(end) => upload_request::Event::End(end),
            }),
        }
    }

    pub fn into_download(self) -> DownloadResponse {
        DownloadResponse {
            event: Some(match self {
                Piece::Entry(entry) => download_response::Event::Entry(entry),
                Piece::Data(data) => download_response::Event::Data(data),
                Piece::End(end) => download_response::Event::End(end),
            }),
        }
    }

    /// The piece a download message carries; `None` for an empty message.
    pub fn from_download(message: DownloadResponse) -> Option<Piece> {
        Some(match message.event? {
            download_response::Event::Entry(entry) => Piece::Entry(entry),
            download_response::Event::Data(data) => Piece::Data(data),
            download_response::Event::End(end) => Piece::End(end),
        })
    }
}
