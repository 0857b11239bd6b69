//! The gRPC `Files` service: uploads and downloads of files and trees, with
//! the same credentials, slots, drain and audit as exec. Each transfer runs
//! on a thread of its own, as the `--run-as` user when there is one.
//!
//! - `identity`: the thread's filesystem identity.
//! - `upload`: the thread's side of an upload; the file work itself is
//!   `rexec::files`, shared with the CLI.

mod identity;
mod upload;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Instant;

use rexec::proto::files_server::Files;
use rexec::proto::{
    DownloadRequest, DownloadResponse, UploadRequest, UploadResult, upload_request,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{Audit, Transfer};
use crate::limits::ExecSlots;
use crate::memory::MemoryBudget;
use crate::run_as::RunAs;
use crate::service::{caller_of, status_from};
use crate::shutdown::Shutdown;
use upload::Incoming;

/// Messages queued between the RPC and a transfer's thread, each way.
const QUEUE: usize = 4;

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

pub struct FilesService {
    /// Where relative paths resolve: an exec's default cwd.
    base: PathBuf,
    run_as: Option<RunAs>,
    slots: ExecSlots,
    shutdown: Shutdown,
    audit: Audit,
    /// Upload chunks in flight are charged here (`--memory-budget`).
    memory: MemoryBudget,
}

impl FilesService {
    pub fn new(
        run_as: Option<RunAs>,
        slots: ExecSlots,
        shutdown: Shutdown,
        audit: Audit,
        memory: MemoryBudget,
    ) -> std::io::Result<Self> {
        let base = match &run_as {
            Some(user) => user.default_cwd().to_path_buf(),
            None => std::env::current_dir()?,
        };
        Ok(FilesService {
            base,
            run_as,
            slots,
            shutdown,
            audit,
            memory,
        })
    }

    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        if self.shutdown.is_draining() {
            return Err(Status::unavailable("server is shutting down"));
        }
        self.slots.try_acquire().map_err(status_from)
    }
}

#[tonic::async_trait]
impl Files for FilesService {
    type DownloadStream = DownloadStream;

    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResult>, Status> {
        let caller = caller_of(&request);
        let started = Instant::now();
        let permit = match self.admit() {
            Ok(permit) => permit,
            Err(status) => {
                self.audit
                    .refused(&caller.peer, &caller.principal, caller.listener, &status);
                return Err(status);
            }
        };
        let mut inbound = request.into_inner();
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let (done, result) = oneshot::channel();
        let (base, audit, tracked) = (
            self.base.clone(),
            self.audit.clone(),
            self.shutdown.exec_tracker().token(),
        );
        identity::spawn_as(self.run_as.clone(), "rexec-upload", move |switched| {
            let mut summary = rexec::files::Received::default();
            let outcome = switched
                .map_err(|e| Status::internal(format!("cannot switch user: {e}")))
                .and_then(|()| upload::run(&base, &mut summary, || receiver.blocking_recv()));
            audit.transfer(&Transfer {
                caller: &caller,
                direction: "upload",
                // Where the entries went once placed; the destination asked before.
                path: match summary.path.is_empty() {
                    true => &summary.destination,
                    false => &summary.path,
                },
                entries: summary.entries,
                bytes: summary.bytes,
                digest: summary.digest,
                duration: started.elapsed(),
                result: outcome.as_ref().err(),
            });
            drop((permit, tracked));
            let _ = done.send(outcome);
        })
        .map_err(|e| Status::resource_exhausted(format!("cannot start a transfer: {e}")))?;
        let mut result = result;
        let mut cut = None;
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                outcome = &mut result => return answer(outcome),
                () = self.shutdown.killing() => {
                    cut = Some(Status::unavailable("server is shutting down"));
                    break;
                }
            };
            let incoming = match message {
                Ok(Some(message)) => {
                    let size = match &message.event {
                        Some(upload_request::Event::Data(data)) => data.len(),
                        _ => 0,
                    };
                    match self.memory.reserve(size) {
                        Ok(held) => Incoming::Message(message, held),
                        Err(exhausted) => {
                            cut = Some(Status::resource_exhausted(exhausted.to_string()));
                            break;
                        }
                    }
                }
                Ok(None) => Incoming::Finish,
                Err(status) => {
                    cut = crate::limits::request_too_large(&status);
                    break;
                }
            };
            let finish = matches!(incoming, Incoming::Finish);
            tokio::select! {
                sent = sender.send(incoming) => if sent.is_err() || finish { break },
                outcome = &mut result => return answer(outcome),
            }
        }
        // Dropping the sender before `Finish` makes the thread remove what it made.
        drop(sender);
        let outcome = answer(result.await);
        match cut {
            Some(status) => Err(status),
            None => outcome,
        }
    }

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let caller = caller_of(&request);
        let started = Instant::now();
        let refused = |status: Status| {
            self.audit
                .refused(&caller.peer, &caller.principal, caller.listener, &status);
            status
        };
        let permit = self.admit().map_err(refused)?;
        let request = request.into_inner();
        let (sender, receiver) = mpsc::channel(QUEUE);
        let (ready, prepared) = oneshot::channel();
        let (base, audit, tracked, stop) = (
            self.base.clone(),
            self.audit.clone(),
            self.shutdown.exec_tracker().token(),
            self.shutdown.kill_all_token(),
        );
        let audit_caller = caller.clone();
        identity::spawn_as(self.run_as.clone(), "rexec-download", move |switched| {
            let asked = rexec::files::digest_kind(request.digest);
            let source = switched
                .map_err(|e| Status::internal(format!("cannot switch user: {e}")))
                .and_then(|()| asked.clone())
                .and_then(|digest| {
                    rexec::files::prepare(&base, &request.path, request.recursive)
                        .map(|source| (source, digest))
                });
            let (source, digest) = match source {
                Ok(prepared) => {
                    let _ = ready.send(Ok(()));
                    prepared
                }
                Err(status) => {
                    audit.transfer(&Transfer {
                        caller: &audit_caller,
                        direction: "download",
                        path: &request.path,
                        entries: 0,
                        bytes: 0,
                        digest: asked.ok(),
                        duration: started.elapsed(),
                        result: Some(&status),
                    });
                    let _ = ready.send(Err(status));
                    return;
                }
            };
            let path = source.path.display().to_string();
            let mut summary = rexec::files::Sent::default();
            // Waits for room in the queue: the client's pace sets the reading's.
            let chunk = rexec::files::CHUNK;
            let outcome = rexec::files::send(source, chunk, digest, &mut summary, |piece| {
                if stop.is_cancelled() {
                    return Err(Status::unavailable("server is shutting down"));
                }
                sender
                    .blocking_send(Ok(piece.into_download()))
                    .map_err(|_| Status::cancelled("the client went away"))
            });
            if let Err(status) = &outcome {
                // The client may be gone already; then nobody needs the status.
                let _ = sender.blocking_send(Err(status.clone()));
            }
            audit.transfer(&Transfer {
                caller: &audit_caller,
                direction: "download",
                path: &path,
                entries: summary.entries,
                bytes: summary.bytes,
                digest: Some(digest),
                duration: started.elapsed(),
                result: outcome.as_ref().err(),
            });
            drop((permit, tracked));
        })
        .map_err(|e| Status::resource_exhausted(format!("cannot start a transfer: {e}")))
        .map_err(refused)?;
        match prepared.await {
            Ok(Ok(())) => Ok(Response::new(Box::pin(ReceiverStream::new(receiver)))),
            // Its transfer line is written.
            Ok(Err(status)) => Err(status),
            Err(_) => Err(refused(Status::internal("the transfer thread ended"))),
        }
    }
}

fn answer(
    outcome: Result<Result<rexec::files::Received, Status>, oneshot::error::RecvError>,
) -> Result<Response<UploadResult>, Status> {
    match outcome {
        Ok(Ok(summary)) => Ok(Response::new(UploadResult {
            entries: summary.entries,
            bytes: summary.bytes,
            path: summary.path,
        })),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::internal("the transfer thread ended")),
    }
}
