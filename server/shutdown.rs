//! Shutdown in two steps: `draining` (refuse new execs, health NOT_SERVING) at
//! the first SIGINT/SIGTERM, then `kill_all` once the grace has passed or a
//! second signal arrives.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    kill_all: CancellationToken,
    /// Every exec's supervisor; the daemon exits only once all have reaped.
    execs: TaskTracker,
}

impl Shutdown {
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves at the first shutdown signal.
    pub async fn draining(&self) {
        self.draining.cancelled().await
    }

    /// Cancelled when running execs must be killed.
    pub fn kill_all_token(&self) -> CancellationToken {
        self.kill_all.clone()
    }

    pub async fn killing(&self) {
        self.kill_all.cancelled().await
    }

    /// Tracks an exec's supervisor until it has reaped its process.
    pub fn exec_tracker(&self) -> TaskTracker {
        self.execs.clone()
    }

    /// Waits until every tracked exec has finished; no new ones start after this.
    pub async fn execs_finished(&self) {
        self.execs.close();
        self.execs.wait().await
    }

    /// Installs the SIGINT/SIGTERM handlers now (before the readiness line, so
    /// an early signal drains instead of killing the daemon outright) and
    /// returns the task that waits for them: draining at the first, `kill_all`
    /// after `grace` or at once on a second.
    pub fn watch_signals(self, grace: Duration) -> std::io::Result<impl Future<Output = ()>> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutdown signal: draining"
            );
            self.draining.cancel();
            tokio::select! {
                () = tokio::time::sleep(grace) => tracing::info!("shutdown grace over: killing running execs"),
                _ = interrupt.recv() => tracing::info!("second signal: killing running execs"),
                _ = terminate.recv() => tracing::info!("second signal: killing running execs"),
            }
            self.kill_all.cancel();
        })
    }
}
