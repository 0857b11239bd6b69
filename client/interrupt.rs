//! Ctrl-C as a stream: one listener made up front and kept, so a SIGINT that
//! arrives while output is being written waits to be read instead of being
//! lost (a `ctrl_c()` future made anew on each turn misses those).

use std::time::{Duration, Instant};

/// A second Ctrl-C within this window cancels the call instead of signalling.
pub const DOUBLE_INTERRUPT: Duration = Duration::from_secs(2);

pub struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
    #[cfg(windows)]
    signal: tokio::signal::windows::CtrlC,
    /// When the last Ctrl-C of the current call arrived.
    last: Option<Instant>,
}

/// What a Ctrl-C means for the running call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    /// The first: pass it on (INT to the remote group).
    First,
    /// Another within [`DOUBLE_INTERRUPT`]: give up on the call.
    Again,
}

impl Interrupts {
    /// Takes over Ctrl-C for the life of the process: from here on it no
    /// longer kills rexec, each press is read from [`Interrupts::next`].
    pub fn new() -> std::io::Result<Interrupts> {
        Ok(Interrupts {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
            #[cfg(windows)]
            signal: tokio::signal::windows::ctrl_c()?,
            last: None,
        })
    }

    /// Waits for the next Ctrl-C. Cancel-safe: a press that arrives while the
    /// caller does something else is kept for the next call.
    pub async fn next(&mut self) -> Press {
        // `None` only if the signal driver is gone; then never return.
        if self.signal.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        let again = self.last.is_some_and(|t| t.elapsed() < DOUBLE_INTERRUPT);
        self.last = Some(Instant::now());
        if again { Press::Again } else { Press::First }
    }

    /// Starts a new call: presses before now count for nothing.
    pub async fn reset(&mut self) {
        // The timeout polls `recv` once before its timer: a pending press is taken.
        let _ = tokio::time::timeout(Duration::ZERO, self.signal.recv()).await;
        self.last = None;
    }
}
