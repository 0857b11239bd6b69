//! Commands as a `Session`: local stdin streamed as it is read, EOF
//! forwarded, Ctrl-C sent as INT (a second cancels the call), and with `-t` a
//! remote terminal driven in raw mode. One-shot commands and REPL lines run here.

use std::io::{IsTerminal, Read};

use rexec::client::{Client, Command, Event, ExitStatus, SessionInput};
use rexec::ending::Ending;
use tokio::sync::mpsc;

use crate::interrupt::{Interrupts, Press};
use crate::local_tty::{self, RawMode};
use crate::output::Output;

/// Bytes read from local stdin at a time.
const STDIN_CHUNK: usize = 64 * 1024;

pub struct SessionOptions {
    /// Stream local stdin; otherwise the command's stdin is closed at once.
    pub stream_stdin: bool,
    /// Ask for a remote pseudo-terminal (and put ours in raw mode).
    pub tty: bool,
}

pub async fn run(
    client: &mut Client,
    mut command: Command,
    options: SessionOptions,
    output: &mut Output,
    interrupts: &mut Interrupts,
) -> Result<ExitStatus, Ending> {
    let local_tty = options.tty && std::io::stdin().is_terminal();
    if options.tty {
        let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
        command = command.tty(rows, cols);
        if let Ok(term) = std::env::var("TERM") {
            command = command.env("TERM", term);
        }
    }
    // Raw mode lasts exactly as long as this guard, whatever way we leave.
    let _raw = if local_tty {
        Some(RawMode::enable()?)
    } else {
        None
    };
    output.reset();
    let (input, mut events) = client.session(command).await?;
    if options.stream_stdin {
        tokio::spawn(forward_stdin(input.clone()));
    } else {
        // The command may already have finished and the session closed: its
        // exit is still to be read below, so this cannot fail the call.
        let _ = input.close_stdin().await;
    }
    if local_tty {
        tokio::spawn(local_tty::forward_resizes(input.clone()));
    }

    interrupts.reset().await;
    loop {
        let event = tokio::select! {
            event = events.next() => event?,
            press = interrupts.next() => {
                if press == Press::Again {
                    // Dropping the session cancels it; the server kills the group.
                    let _ = output.finish();
                    return Err(Ending::Interrupted);
                }
                let _ = input.signal("INT").await;
                continue;
            }
        };
        let written = match event {
            Some(Event::Stdout(bytes)) => output.stdout(&bytes),
            Some(Event::Stderr(bytes)) => output.stderr(&bytes),
            Some(Event::Exit(status)) => {
                output.finish().map_err(Ending::output)?;
                return Ok(status);
            }
            Some(Event::Started { .. }) => Ok(()),
            None => return Err(Ending::failed("no exit status")),
        };
        written.map_err(Ending::output)?;
    }
}

/// Reads local stdin on its own thread (a blocking read cannot be cancelled;
/// the thread ends with the process) and streams it, then sends EOF.
async fn forward_stdin(input: SessionInput) {
    let (chunks_tx, mut chunks) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if chunks_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    while let Some(chunk) = chunks.recv().await {
        if input.stdin(chunk).await.is_err() {
            return;
        }
    }
    let _ = input.close_stdin().await;
}
