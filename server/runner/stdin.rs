//! Writing to a running exec: its stdin in order and with backpressure, EOF,
//! and signals and resizes, which overtake queued stdin.

use std::os::fd::OwnedFd;

use bytes::Bytes;
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stdin chunks queued for a child; a full queue stops reading from the client.
pub const STDIN_QUEUE: usize = 8;
/// Signals and resizes queued; more than this at once are dropped.
pub const CONTROL_QUEUE: usize = 32;

/// The writing end a session holds (`Execution::input`).
pub struct ExecInput {
    pub(super) data: mpsc::Sender<Bytes>,
    pub(super) control: mpsc::Sender<Control>,
    pub(super) done: CancellationToken,
}

pub enum Control {
    Signal(i32),
    Resize(u16, u16),
}

impl ExecInput {
    /// Queues stdin bytes; false once stdin is closed or the child stopped reading.
    pub async fn write(&self, bytes: Bytes) -> bool {
        self.data.send(bytes).await.is_ok()
    }

    /// Closes stdin (a tty gets its EOF character) once queued bytes are written.
    pub async fn close(&self) {
        // An empty chunk is the EOF marker: the queue keeps it behind the data.
        let _ = self.data.send(Bytes::new()).await;
    }

    /// Sends a signal to the exec's process group (a tty's foreground group).
    pub fn signal(&self, signal: i32) {
        let _ = self.control.try_send(Control::Signal(signal));
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let _ = self.control.try_send(Control::Resize(rows, cols));
    }

    /// Resolves once the exec has ended and its exit has been queued.
    pub async fn finished(&self) {
        self.done.cancelled().await
    }
}

/// Where stdin bytes go: a pipe, or the pty master (shared with stdout; the
/// descriptor kept beside it asks for the tty's foreground group).
pub enum StdinSink {
    Pipe(tokio::process::ChildStdin),
    Pty(pty_process::OwnedWritePty, OwnedFd),
}

/// Writes stdin as it is queued and applies signals and resizes, which never
/// wait behind stdin. Runs until the exec is done or both queues are closed.
pub async fn feed_stdin(
    mut sink: Option<StdinSink>,
    mut data: mpsc::Receiver<Bytes>,
    mut control: mpsc::Receiver<Control>,
    pgid: Pid,
    done: CancellationToken,
) {
    let (mut data_open, mut control_open) = (true, true);
    let mut pending = Bytes::new();
    while data_open || control_open || !pending.is_empty() {
        let writing = !pending.is_empty() && sink.is_some();
        tokio::select! {
            biased;
            () = done.cancelled() => break,
            message = control.recv(), if control_open => match message {
                Some(Control::Signal(signal)) => {
                    let group = foreground_group(sink.as_ref()).unwrap_or(pgid);
                    super::containment::signal_group(group, signal);
                }
                Some(Control::Resize(rows, cols)) => {
                    if let Some(StdinSink::Pty(pty, _)) = &sink {
                        // TIOCSWINSZ: the kernel sends SIGWINCH to the foreground group.
                        let _ = pty.resize(pty_process::Size::new(rows, cols));
                    }
                }
                None => control_open = false,
            },
            written = write_some(sink.as_mut(), &pending), if writing => match written {
                Ok(n) => {
                    let _ = pending.split_to(n);
                }
                // The child stopped reading (EPIPE): drop the rest of stdin.
                Err(_) => {
                    sink = None;
                    pending.clear();
                }
            },
            message = data.recv(), if data_open && pending.is_empty() => match message {
                Some(bytes) if bytes.is_empty() => {
                    close_stdin(&mut sink).await;
                    data_open = false;
                }
                Some(bytes) => {
                    if sink.is_some() {
                        pending = bytes;
                    }
                }
                None => {
                    close_stdin(&mut sink).await;
                    data_open = false;
                }
            },
        }
        if !writing && pending.is_empty() && !data_open && !control_open {
            break;
        }
    }
}

/// One write; cancel-safe, so a signal can overtake a write blocked on a full pipe.
async fn write_some(sink: Option<&mut StdinSink>, bytes: &[u8]) -> std::io::Result<usize> {
    match sink {
        Some(StdinSink::Pipe(pipe)) => pipe.write(bytes).await,
        Some(StdinSink::Pty(pty, _)) => pty.write(bytes).await,
        None => Ok(bytes.len()),
    }
}

/// EOF for stdin: a pipe is closed; a tty gets its EOF character (^D), as a
/// terminal user would type it.
async fn close_stdin(sink: &mut Option<StdinSink>) {
    match sink {
        Some(StdinSink::Pty(pty, _)) => {
            let _ = pty.write_all(&[0x04]).await;
        }
        _ => *sink = None,
    }
}

/// The foreground process group of a tty (a shell's running job), if any.
fn foreground_group(sink: Option<&StdinSink>) -> Option<Pid> {
    let Some(StdinSink::Pty(_, master)) = sink else {
        return None;
    };
    nix::unistd::tcgetpgrp(master)
        .ok()
        .filter(|group| group.as_raw() > 0)
}
