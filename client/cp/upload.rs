//! Local files to every host at once. The sources are walked and read once,
//! on one thread; each piece goes to every host's call in turn, so the
//! slowest host sets the pace and memory stays a few chunks per host. Only
//! a complete read ends with `commit`: a local error cancels every call, and
//! a server whose stream ends without `commit` removes what it made.

use rexec::client::{Client, ClientOptions};
use rexec::ending::Ending;
use rexec::files::{self, Digest, Piece, Sent};
use rexec::proto::{UploadCommit, UploadRequest, UploadStart, upload_request};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Plan;
use super::report::{self, Failure, Outcome, Progress};

/// Upload messages queued per host before the reader waits for it.
const QUEUE: usize = 8;

/// A source: a checked local path, or stdin for `-`.
enum Local {
    Path(Box<files::Source>),
    Stdin,
}

pub async fn run(plan: &Plan, options: &ClientOptions, sources: &[String], dest: &str) -> Ending {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => return Ending::failed(format!("cannot read the working directory: {e}")),
    };
    // Every source is checked before any host is called.
    let mut locals = Vec::new();
    for source in sources {
        if source == "-" {
            if sources.len() > 1 {
                return Ending::usage("`-` (stdin) must be the only SRC");
            }
            locals.push(Local::Stdin);
            continue;
        }
        match files::prepare(&cwd, source, plan.recursive) {
            Ok(prepared) => locals.push(Local::Path(Box::new(prepared))),
            Err(status) => {
                eprintln!("rexec: {}", status.message());
                return Ending::Remote(rexec::client::ExitStatus::exited(1));
            }
        }
    }
    let total = locals.iter().try_fold(0u64, |sum, local| match local {
        Local::Path(source) => Some(sum + tree_size(&source.path)),
        Local::Stdin => None,
    });
    let progress = Progress::new(plan.progress, total);
    let start = UploadStart {
        destination: dest.to_string(),
        no_clobber: plan.no_clobber,
        preserve: plan.preserve,
        exact: matches!(locals.as_slice(), [Local::Stdin]),
        digest: plan.digest.into(),
    };
    let mut calls = JoinSet::new();
    let mut senders = Vec::new();
    for (index, host) in plan.hosts.iter().enumerate() {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let first = UploadRequest {
            event: Some(upload_request::Event::Start(start.clone())),
        };
        // Room for it: the queue is new.
        let _ = sender.try_send(first);
        senders.push(Some(sender));
        let (addr, options) = (host.addr.clone(), options.clone());
        calls.spawn(async move {
            let result = async {
                let mut client = Client::connect(&addr, &options).await?;
                client.upload(ReceiverStream::new(receiver)).await
            }
            .await;
            (index, result)
        });
    }
    let reading = {
        let (progress, digest) = (progress.clone(), plan.digest);
        tokio::task::spawn_blocking(move || {
            let mut sent = Sent::default();
            let result = send_all(locals, digest, &mut senders, &mut sent, &progress);
            (result, senders)
        })
    };
    let (read, senders) = match reading.await {
        Ok(done) => done,
        Err(e) => return Ending::failed(format!("the reading thread failed: {e}")),
    };
    if let Err(status) = read {
        // No commit went out, so no server keeps anything.
        calls.shutdown().await;
        drop(senders);
        progress.finish();
        eprintln!("rexec: {}", status.message());
        return Ending::Remote(rexec::client::ExitStatus::exited(1));
    }
    drop(senders);
    let mut outcomes: Vec<Option<Outcome>> = plan.hosts.iter().map(|_| None).collect();
    while let Some(joined) = calls.join_next().await {
        let Ok((index, result)) = joined else {
            continue;
        };
        let outcome = result
            .map(|done| {
                format!(
                    "copied {} to {}",
                    report::amount(done.entries, done.bytes),
                    done.path
                )
            })
            .map_err(Failure::from);
        outcomes[index] = Some((plan.hosts[index].name.clone(), outcome));
    }
    progress.finish();
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    report::finish(&outcomes, plan.fleet)
}

/// Reads every source once, handing each piece to every host still in the
/// copy. Fails on a local error, or when no host is left.
fn send_all(
    locals: Vec<Local>,
    digest: Digest,
    senders: &mut [Option<mpsc::Sender<UploadRequest>>],
    sent: &mut Sent,
    progress: &Progress,
) -> Result<(), Status> {
    let mut emit = |piece: Piece| {
        let data = piece.data_len() as u64;
        for slot in senders.iter_mut() {
            if let Some(sender) = slot
                && sender.blocking_send(piece.clone().into_upload()).is_err()
            {
                // That host's call has ended; its outcome says why.
                *slot = None;
            }
        }
        if senders.iter().all(Option::is_none) {
            return Err(Status::cancelled("every host's upload has ended"));
        }
        progress.add(data);
        Ok(())
    };
    for local in locals {
        let result = match local {
            Local::Path(source) => files::send(*source, files::CHUNK, digest, sent, &mut emit),
            Local::Stdin => files::send_stream(
                "stdin",
                std::io::stdin().lock(),
                files::CHUNK,
                digest,
                sent,
                &mut emit,
            ),
        };
        match result {
            // The calls have ended on their own; their outcomes say why.
            Err(status) if status.code() == tonic::Code::Cancelled => return Ok(()),
            other => other?,
        }
    }
    // Only now may the servers put the upload in place.
    let commit = UploadRequest {
        event: Some(upload_request::Event::Commit(UploadCommit {})),
    };
    for sender in senders.iter().flatten() {
        // A host whose call has ended reports why in its outcome.
        let _ = sender.blocking_send(commit.clone());
    }
    Ok(())
}

/// Bytes of the regular files under `path`, for the progress bar.
fn tree_size(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                Ok(kind) if kind.is_file() => {
                    total += entry.metadata().map_or(0, |m| m.len());
                }
                _ => {}
            }
        }
    }
    total
}
