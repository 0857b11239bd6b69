//! Remote files to local ones. Each host's pieces go to a local
//! `rexec::files::Receiver` on a thread of its own, which places them as cp
//! would (a fleet into `DEST/HOST/`, as pslurp does) and keeps nothing of a
//! transfer that failed or was cut off. `-` writes one file to stdout.

use std::io::Write;
use std::path::PathBuf;

use rexec::client::{Client, ClientOptions};
use rexec::ending::Ending;
use rexec::files::{Digest, Hasher, Piece, Receiver};
use rexec::proto::{DownloadRequest, FileType};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Status;

use super::Plan;
use super::report::{self, Failure, Outcome, Progress};
use crate::fanout::files::file_stem;

/// Pieces queued for the writing thread before the download waits.
const QUEUE: usize = 8;

/// Where one host's files go.
#[derive(Clone)]
enum Target {
    /// A local path, placed as cp places it.
    Path {
        base: PathBuf,
        dest: String,
    },
    Stdout,
}

pub async fn run(plan: &Plan, options: &ClientOptions, sources: &[String], dest: &str) -> Ending {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => return Ending::failed(format!("cannot read the working directory: {e}")),
    };
    let to_stdout = dest == "-";
    if to_stdout && (sources.len() > 1 || plan.hosts.len() > 1 || plan.recursive) {
        return Ending::usage("`-` (stdout) takes one file from one host");
    }
    let dest_dir = cwd.join(dest);
    let needs_dir = sources.len() > 1 || plan.hosts.len() > 1;
    if plan.fleet && plan.hosts.len() > 1 {
        // pslurp's layout: DEST/HOST/..., DEST made if missing.
        if let Err(e) = std::fs::create_dir_all(&dest_dir) {
            return Ending::failed(format!("cannot create {}: {e}", dest_dir.display()));
        }
    } else if needs_dir && !to_stdout && !dest_dir.is_dir() {
        return Ending::usage(format!("target {dest} is not a directory"));
    }
    let progress = Progress::new(plan.progress && !to_stdout, None);
    let mut calls = JoinSet::new();
    for (index, host) in plan.hosts.iter().enumerate() {
        let target = if to_stdout {
            Target::Stdout
        } else if plan.fleet && plan.hosts.len() > 1 {
            let base = dest_dir.join(file_stem(&host.name));
            if let Err(e) = std::fs::create_dir_all(&base) {
                return Ending::failed(format!("cannot create {}: {e}", base.display()));
            }
            Target::Path {
                base,
                dest: String::new(),
            }
        } else {
            Target::Path {
                base: cwd.clone(),
                dest: dest.to_string(),
            }
        };
        let job = Job {
            addr: host.addr.clone(),
            options: options.clone(),
            sources: sources.to_vec(),
            recursive: plan.recursive,
            preserve: plan.preserve,
            no_clobber: plan.no_clobber,
            digest: plan.digest,
            target,
            progress: progress.clone(),
        };
        calls.spawn(async move { (index, job.run().await) });
    }
    let mut outcomes: Vec<Option<Outcome>> = plan.hosts.iter().map(|_| None).collect();
    while let Some(joined) = calls.join_next().await {
        let Ok((index, result)) = joined else {
            continue;
        };
        outcomes[index] = Some((plan.hosts[index].name.clone(), result));
    }
    progress.finish();
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    report::finish(&outcomes, plan.fleet)
}

/// One host's downloads, source after source.
struct Job {
    addr: String,
    options: ClientOptions,
    sources: Vec<String>,
    recursive: bool,
    preserve: bool,
    no_clobber: bool,
    digest: Digest,
    target: Target,
    progress: Progress,
}

impl Job {
    async fn run(self) -> Result<String, Failure> {
        let mut client = Client::connect(&self.addr, &self.options).await?;
        let (mut entries, mut bytes, mut placed) = (0, 0, Vec::new());
        for source in &self.sources {
            let request = DownloadRequest {
                path: source.clone(),
                recursive: self.recursive,
                digest: self.digest.into(),
            };
            let mut stream = client.download(request).await?;
            let (pieces, receiving) = mpsc::channel::<Option<Piece>>(QUEUE);
            let target = self.target.clone();
            let (no_clobber, preserve, digest) = (self.no_clobber, self.preserve, self.digest);
            let writer = tokio::task::spawn_blocking(move || {
                write_pieces(target, no_clobber, preserve, digest, receiving)
            });
            // The stream's end is `None`: only then does the writer put
            // files in place. An error drops `pieces` without it.
            let streamed: Result<(), Failure> = async {
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            let Some(piece) = Piece::from_download(message) else {
                                continue;
                            };
                            self.progress.add(piece.data_len() as u64);
                            if pieces.send(Some(piece)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => {
                            let _ = pieces.send(None).await;
                            return Ok(());
                        }
                        Err(status) => return Err(Failure::from(status)),
                    }
                }
            }
            .await;
            drop(pieces);
            let written = writer
                .await
                .map_err(|e| Failure::Transfer(format!("the writing thread failed: {e}")))?;
            streamed?;
            let (n, b, path) = written.map_err(|s| Failure::Transfer(s.message().to_string()))?;
            entries += n;
            bytes += b;
            placed.push(path);
        }
        Ok(format!(
            "copied {} to {}",
            report::amount(entries, bytes),
            placed.join(" ")
        ))
    }
}

/// The writing thread: pieces into a receiver (or stdout) until the
/// stream's end (`None`), then in place.
fn write_pieces(
    target: Target,
    no_clobber: bool,
    preserve: bool,
    digest: Digest,
    mut pieces: mpsc::Receiver<Option<Piece>>,
) -> Result<(u64, u64, String), Status> {
    let (base, dest) = match target {
        Target::Stdout => return write_stdout(digest, pieces),
        Target::Path { base, dest } => (base, dest),
    };
    let mut receiver = Receiver::start(&base, &dest, no_clobber, preserve, false, digest)?;
    loop {
        match pieces.blocking_recv() {
            Some(Some(piece)) => receiver.piece(piece)?,
            Some(None) => break,
            None => return Err(Status::cancelled("the download was cut off")),
        }
    }
    let received = receiver.finish()?;
    Ok((received.entries, received.bytes, received.path))
}

/// `cp :FILE -`: one regular file's bytes to stdout, its digest checked at
/// the end (the bytes are out by then: a mismatch is an error, exit 1).
fn write_stdout(
    digest: Digest,
    mut pieces: mpsc::Receiver<Option<Piece>>,
) -> Result<(u64, u64, String), Status> {
    let mut stdout = std::io::stdout().lock();
    let mut digest = Some(Hasher::new(digest));
    let (mut entries, mut bytes) = (0, 0);
    loop {
        match pieces.blocking_recv() {
            Some(Some(Piece::Entry(entry))) => {
                entries += 1;
                if entries > 1 || entry.r#type != FileType::File as i32 {
                    return Err(Status::failed_precondition(format!(
                        "{} is not one regular file: `-` takes one",
                        entry.path
                    )));
                }
            }
            Some(Some(Piece::Data(data))) => {
                if let Some(digest) = &mut digest {
                    digest.update(&data);
                }
                bytes += data.len() as u64;
                stdout
                    .write_all(&data)
                    .map_err(|e| Status::internal(format!("cannot write stdout: {e}")))?;
            }
            Some(Some(Piece::End(end))) => match digest.take() {
                Some(digest) => digest.check(&end, "stdout")?,
                None => {
                    return Err(Status::invalid_argument("a second end for one file"));
                }
            },
            Some(None) => break,
            None => return Err(Status::cancelled("the download was cut off")),
        }
    }
    stdout
        .flush()
        .map_err(|e| Status::internal(format!("cannot write stdout: {e}")))?;
    Ok((entries, bytes, "stdout".into()))
}
