//! The process runner: the one place that spawns, reads pipes, kills and reaps.
//! Both listeners consume its stream of events; nothing else touches processes.
//!
//! - `types`: what an exec is (spec, caller, events, exit report, errors).
//! - `program`: from a request to a program, arguments and a checked cwd.
//! - `spawn`: fork/exec on pipes or a pty, and the child's setup before exec;
//!   `vfork`: a piped exec cloned straight into its cgroup, without a fork.
//! - `pump`: stdout/stderr to the event queue; `stdin`: input and signals.
//! - `containment`, `cgroup`: what holds every process of an exec, and ends it.
//! - `child`: the main process from spawn to reap.
//! - `supervisor`: one exec from start to its exit event.

mod cgroup;
mod child;
mod containment;
mod program;
mod pump;
mod spawn;
mod stdin;
mod supervisor;
pub mod types;
mod vfork;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use containment::{Containment, ContainmentMode};
pub use spawn::mark_inherited_descriptors;
pub use stdin::ExecInput;
use types::{Caller, Event, ExecSpec, RunError, StdinMode, Stop};

use crate::audit::{Audit, AuditRecord};
use crate::limits::{ExecSlots, OutputBudget};
use crate::run_as::RunAs;
use crate::shutdown::Shutdown;
use child::MainProcess;
use containment::ExecGroup;
use pump::BulkPipes;
use stdin::{CONTROL_QUEUE, STDIN_QUEUE};
use supervisor::Supervisor;

/// Chunks buffered between the pipe readers and the consumer. With the pipes
/// themselves this bounds what one exec can hold in server memory: at most
/// 4 MiB of bulk chunks plus the pipe.
const EVENT_QUEUE: usize = 4;
/// Pipes enlarged for bulk output at once (see `pump::BulkPipes`).
const MAX_BULK_PIPES: usize = 16;

/// A spawned exec. Dropping `events` cancels it: every process of it is
/// ended and the main process reaped.
pub struct Execution {
    pub pid: u32,
    pub exec_id: String,
    pub events: mpsc::Receiver<Event>,
    /// Stdin, signals and resizes; `Some` only for `StdinMode::Stream`.
    pub input: Option<ExecInput>,
}

pub struct RunnerConfig {
    pub shell: PathBuf,
    pub default_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub linger: Duration,
    /// Execs running at once (`--max-concurrent`).
    pub max_concurrent: usize,
    /// Stdout and stderr bytes one exec may send (`--max-output`); `None`: no limit.
    pub max_output_bytes: Option<u64>,
    /// Children run as this user (`--run-as`); `None`: as rexecd.
    pub run_as: Option<RunAs>,
    /// A cgroup per exec, or the process group (`--containment`).
    pub containment: Containment,
}

pub struct Runner {
    config: RunnerConfig,
    audit: Audit,
    /// Cancelled when shutdown's grace has passed: every exec is ended.
    kill_all: CancellationToken,
    supervisors: TaskTracker,
    next_exec: AtomicU64,
    id_prefix: String,
    slots: ExecSlots,
    bulk_pipes: Arc<BulkPipes>,
}

impl Runner {
    pub fn new(config: RunnerConfig, audit: Audit, shutdown: &Shutdown) -> Arc<Self> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Arc::new(Runner {
            slots: ExecSlots::new(config.max_concurrent),
            config,
            audit,
            kill_all: shutdown.kill_all_token(),
            supervisors: shutdown.exec_tracker(),
            next_exec: AtomicU64::new(1),
            id_prefix: format!("{epoch:x}-{:x}", std::process::id()),
            bulk_pipes: BulkPipes::new(MAX_BULK_PIPES),
        })
    }

    /// The `--max-concurrent` slots, which file transfers share with execs.
    pub fn slots(&self) -> ExecSlots {
        self.slots.clone()
    }

    /// Validates `spec`, spawns it in its own cgroup (or process group) and
    /// starts streaming. Nothing runs unless this returns `Ok`.
    ///
    /// fork/exec blocks the calling thread until the child has exec'd, so it
    /// runs on the blocking pool: spawns overlap each other and never stall
    /// the runtime threads that move output. Dropping the returned future
    /// does not leak a child: the blocking task finishes, and the `Execution`
    /// it built is dropped, which cancels the exec like a client leaving.
    pub async fn start(
        self: &Arc<Self>,
        spec: ExecSpec,
        caller: Caller,
    ) -> Result<Execution, RunError> {
        let runner = Arc::clone(self);
        tokio::task::spawn_blocking(move || runner.start_blocking(spec, caller))
            .await
            .unwrap_or_else(|e| Err(RunError::Internal(format!("spawn task failed: {e}"))))
    }

    /// `start` on the current thread; needs the runtime's context (pipes and
    /// the supervisor register with it).
    fn start_blocking(&self, spec: ExecSpec, caller: Caller) -> Result<Execution, RunError> {
        let slot = self.slots.try_acquire()?;
        let run_as = self.config.run_as.as_ref();
        let resolved = program::resolve(&spec, &self.config.shell, run_as)?;
        let number = self.next_exec.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("{}-{number}", self.id_prefix);
        let (cgroup, joiner) = self
            .config
            .containment
            .prepare(&format!("exec-{number}"))
            .map_err(|e| {
                RunError::ResourceExhausted(format!("cannot make the exec's cgroup: {e}"))
            })?
            .unzip();
        let spawned = match spawn::spawn(&resolved, &spec, run_as, joiner) {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    cgroup.remove();
                }
                return Err(e);
            }
        };
        let spawn::Spawned {
            child,
            mut stdout,
            mut stderr,
            stdin,
        } = spawned;
        stdout.held = spec.holds_output;
        if let Some(stderr) = &mut stderr {
            stderr.held = spec.holds_output;
        }
        let pid = child
            .id()
            .ok_or_else(|| RunError::Internal("child exited before its pid was read".into()))?;
        let pgid = Pid::from_raw(pid as i32);

        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let done = CancellationToken::new();
        let (data_tx, data_rx) = mpsc::channel(STDIN_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let input = match &spec.stdin {
            StdinMode::Empty => None,
            StdinMode::Bytes(bytes) => {
                // Room is guaranteed: the queue is new and holds two messages.
                let _ = data_tx.try_send(bytes.clone());
                let _ = data_tx.try_send(Bytes::new());
                None
            }
            StdinMode::Stream => Some(ExecInput {
                data: data_tx.clone(),
                control: control_tx.clone(),
                done: done.clone(),
            }),
        };
        drop((data_tx, control_tx));
        self.supervisors.spawn(stdin::feed_stdin(
            stdin,
            data_rx,
            control_rx,
            pgid,
            done.clone(),
        ));

        let max_output = match (self.config.max_output_bytes, spec.max_output) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let supervisor = Supervisor {
            main: MainProcess::new(child, pid),
            group: ExecGroup::new(pgid, cgroup),
            tx,
            limit: first_limit(spec.timeout.or(self.config.default_timeout), spec.deadline),
            kill_grace: self.config.kill_grace,
            linger: self.config.linger,
            kill_all: self.kill_all.clone(),
            audit: self.audit.clone(),
            record: AuditRecord::new(&exec_id, &caller, &spec, pid),
            done,
            budget: OutputBudget::new(max_output),
            bulk_pipes: self.bulk_pipes.clone(),
            _slot: slot,
        };
        crate::metrics::get().exec_started();
        self.supervisors.spawn(supervisor.run(stdout, stderr));
        Ok(Execution {
            pid,
            exec_id,
            events,
            input,
        })
    }
}

/// The timeout or the deadline, whichever ends the exec first; on a tie the
/// request's own `timeout_ms` is named.
fn first_limit(timeout: Option<Duration>, deadline: Option<Duration>) -> Option<(Duration, Stop)> {
    match (timeout, deadline) {
        (Some(t), Some(d)) if d < t => Some((d, Stop::Deadline)),
        (Some(t), _) => Some((t, Stop::Timeout)),
        (None, Some(d)) => Some((d, Stop::Deadline)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_timeout_and_deadline_wins() {
        let s = Duration::from_secs;
        assert_eq!(first_limit(None, None), None);
        assert_eq!(first_limit(Some(s(5)), None), Some((s(5), Stop::Timeout)));
        assert_eq!(first_limit(None, Some(s(5))), Some((s(5), Stop::Deadline)));
        assert_eq!(
            first_limit(Some(s(5)), Some(s(1))),
            Some((s(1), Stop::Deadline))
        );
        assert_eq!(
            first_limit(Some(s(1)), Some(s(5))),
            Some((s(1), Stop::Timeout))
        );
        assert_eq!(
            first_limit(Some(s(1)), Some(s(1))),
            Some((s(1), Stop::Timeout))
        );
    }
}
