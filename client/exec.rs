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

impl Failure {
    /// A failed write of output. A reader that went away (`rexec -- yes |
    /// head`) ends rexec as SIGPIPE ends a local command: silently, with 141;
    /// dropping the stream then cancels the remote command.
    pub fn output(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Failure {
                message: None,
                code: 128 + 13,
            }
        } else {
            Failure::rexec(format!("cannot write output: {error}"))
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
                output.finish().map_err(Failure::output)?;
                return Ok(status);
            }
            Event::Started { .. } => Ok(()),
        };
        written.map_err(Failure::output)?;
    }
    Err(Failure::rexec("no exit status"))
}
