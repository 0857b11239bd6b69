//! One exec from spawn to its `exit` event: waits for the main process, a
//! timeout or deadline, the client leaving, shutdown or the output limit;
//! ends every process of the exec; gives the pipes their linger; reaps; and
//! audits. The exec's slot is held until all of that is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::child::MainProcess;
use super::containment::ExecGroup;
use super::pump::{BulkPipes, OutputPipe, pump};
use super::types::{Event, ExitReport, Stop};
use crate::audit::{Audit, AuditRecord};
use crate::limits::OutputBudget;

/// Owns one exec from spawn to reap.
pub struct Supervisor {
    pub main: MainProcess,
    pub group: ExecGroup,
    pub tx: mpsc::Sender<Event>,
    /// The timeout or deadline that comes first, and which one it is.
    pub limit: Option<(Duration, Stop)>,
    pub kill_grace: Duration,
    pub linger: Duration,
    pub kill_all: CancellationToken,
    pub audit: Audit,
    pub record: AuditRecord,
    /// Fired once the exit is queued: the stdin feeder and signals stop.
    pub done: CancellationToken,
    /// `--max-output` (or the consumer's limit): past it, output is dropped
    /// and the exec ended.
    pub budget: Arc<OutputBudget>,
    pub bulk_pipes: Arc<BulkPipes>,
    /// One of `--max-concurrent`, released once the exec is over.
    pub _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Supervisor {
    pub async fn run(mut self, stdout: OutputPipe, stderr: Option<OutputPipe>) {
        let started = Instant::now();
        // Readers stop at EOF, or once `stop_reading` fires and their pipe is empty.
        let stop_reading = CancellationToken::new();
        let reader = |pipe, wrap: fn(Bytes) -> Event| {
            tokio::spawn(pump(
                pipe,
                self.tx.clone(),
                wrap,
                stop_reading.clone(),
                self.budget.clone(),
                self.bulk_pipes.clone(),
            ))
        };
        let stdout_reader = reader(Some(stdout), Event::Stdout);
        let stderr_reader = reader(stderr, Event::Stderr);

        let limit = async {
            match self.limit {
                Some((after, why)) => {
                    tokio::time::sleep(after).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        let stopped_by = tokio::select! {
            () = self.main.exited() => None,
            why = limit => Some(why),
            () = self.tx.closed() => Some(Stop::ClientGone),
            () = self.kill_all.cancelled() => Some(Stop::Shutdown),
            () = self.budget.exceeded() => Some(Stop::OutputLimit),
        };
        if let Some(why) = stopped_by {
            tracing::debug!(exec_id = self.record.exec_id(), ?why, "ending exec");
            self.group.terminate();
            let kill_at = self.group.kill_due(self.kill_grace);
            tokio::select! {
                () = self.main.exited() => {}
                () = tokio::time::sleep_until(kill_at.into()) => {
                    self.group.kill();
                    self.main.exited().await;
                }
            }
        }
        let main_cpu = self.main.cpu_time();
        let termination = self.main.reap().await;

        // The main process is gone; a background process may still hold the
        // pipes. Give it the linger, then the rest of the exec is ended.
        let readers = async {
            (
                stdout_reader.await.unwrap_or(0),
                stderr_reader.await.unwrap_or(0),
            )
        };
        tokio::pin!(readers);
        let (stdout_bytes, stderr_bytes) = tokio::select! {
            counts = &mut readers => counts,
            () = tokio::time::sleep(self.linger) => {
                self.group.end(self.kill_grace).await;
                stop_reading.cancel();
                readers.await
            }
        };
        // Nothing of the exec outlives its exit event: a process that closed
        // its pipes (`setsid cmd >/dev/null &`) is ended here.
        self.group.end(self.kill_grace).await;
        let cpu = self.group.cpu_time(main_cpu);
        let Supervisor {
            group,
            audit,
            record,
            done,
            tx,
            budget,
            ..
        } = self;
        let report = ExitReport {
            termination,
            stopped_by,
            duration: started.elapsed(),
            stdout_bytes,
            stderr_bytes,
            truncated: budget.is_exceeded(),
            cpu,
        };
        audit.exec_finished(&record, &report);
        done.cancel();
        let _ = tx.send(Event::Exit(report)).await;
        // The cgroup is empty (`end`); removing it is no part of the exit the
        // client waits for. rmdir may wait out a cgroup the kernel is still
        // releasing: not on the runtime thread. The exec's slot is held
        // until it is gone, and shutdown waits for it.
        let _ = tokio::task::spawn_blocking(move || group.remove()).await;
    }
}
