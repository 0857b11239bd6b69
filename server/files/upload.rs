//! The upload thread's loop: client messages in order into a
//! `rexec::files::Receiver`, which writes, verifies and places them.

use std::path::Path;

use rexec::files::{Piece, Received, Receiver};
use rexec::proto::{UploadRequest, upload_request};
use tonic::Status;

use crate::memory::Reservation;

/// What the RPC side hands the upload thread.
pub enum Incoming {
    /// The next client message, with the memory it holds until written.
    Message(UploadRequest, Reservation),
    /// The client half-closed: no message follows.
    Finish,
}

/// Receives messages until `commit` and `Finish`, then puts everything in
/// place. `Finish` without `commit`, or `next` running dry first (the
/// client cut off, the server stopping), drops the receiver, which removes
/// what it made. `summary` says how far it got, for the audit line.
pub fn run(
    base: &Path,
    summary: &mut Received,
    mut next: impl FnMut() -> Option<Incoming>,
) -> Result<Received, Status> {
    let cut_off = || Status::cancelled("the upload was cut off");
    let start = match next().ok_or_else(cut_off)? {
        Incoming::Message(
            UploadRequest {
                event: Some(upload_request::Event::Start(start)),
            },
            _,
        ) => start,
        _ => {
            return Err(Status::invalid_argument(
                "the first upload message must be start",
            ));
        }
    };
    summary.destination = start.destination.clone();
    let mut receiver = Receiver::start(
        base,
        &start.destination,
        start.no_clobber,
        start.preserve,
        start.exact,
        rexec::files::digest_kind(start.digest)?,
    )?;
    let mut committed = false;
    loop {
        *summary = receiver.summary().clone();
        let (request, held) = match next().ok_or_else(cut_off)? {
            Incoming::Message(request, held) => (request, held),
            // A stream that ends without `commit` may be a client that
            // failed midway and closed cleanly: keep nothing.
            Incoming::Finish if !committed => {
                return Err(Status::cancelled(
                    "the upload ended before commit; nothing was kept",
                ));
            }
            Incoming::Finish => break,
        };
        if committed {
            return Err(Status::invalid_argument(
                "only the end of the stream may follow commit",
            ));
        }
        let piece = match request.event {
            Some(upload_request::Event::Entry(entry)) => Piece::Entry(entry),
            Some(upload_request::Event::Data(data)) => Piece::Data(data),
            Some(upload_request::Event::End(end)) => Piece::End(end),
            Some(upload_request::Event::Commit(_)) => {
                committed = true;
                continue;
            }
            Some(upload_request::Event::Start(_)) => {
                return Err(Status::invalid_argument(
                    "start may only be the first upload message",
                ));
            }
            None => continue,
        };
        receiver.piece(piece)?;
        drop(held);
    }
    let received = receiver.finish()?;
    *summary = received.clone();
    Ok(received)
}
