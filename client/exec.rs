//! Runs one exec and writes its output as it arrives.

use rexec::client::{Client, Command, Event, ExitStatus};

use crate::output::Output;

/// Why a call produced no remote exit status; `code` is the CLI's exit code.
#[derive(Debug)]
pub struct Failure {
    /// One line for stderr; `None` when nothing should be said (e.g. a closed pipe).
    pub message: Option<String>,
    pub code: i32,
}

impl Failure {
    pub fn rexec(message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code: rexec::EXIT_REXEC_FAILURE,
        }
    }
}

impl From<rexec::client::Error> for Failure {
    fn from(error: rexec::client::Error) -> Self {
        Failure::rexec(error.to_string())
    }
}

/// Streams one exec to `output` and returns how it ended.
pub async fn run(
    client: &mut Client,
    command: Command,
    output: &mut Output,
) -> Result<ExitStatus, Failure> {
    output.reset();
    let mut events = client.exec(command).await?;
    while let Some(event) = events.next().await? {
        let written = match event {
            Event::Stdout(bytes) => output.stdout(&bytes),
            Event::Stderr(bytes) => output.stderr(&bytes),
            Event::Exit(status) => {
                output
                    .finish()
                    .map_err(|e| Failure::rexec(format!("cannot write output: {e}")))?;
                return Ok(status);
            }
            Event::Started { .. } => Ok(()),
        };
        if let Err(e) = written {
            // Our reader went away (`rexec -- yes | head`): die like a process
            // killed by SIGPIPE; dropping the stream cancels the remote command.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Err(Failure {
                    message: None,
                    code: 128 + 13,
                });
            }
            return Err(Failure::rexec(format!("cannot write output: {e}")));
        }
    }
    Err(Failure::rexec("no exit status"))
}
