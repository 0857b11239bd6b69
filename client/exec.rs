//! Runs one `Exec` call and writes its output as it arrives.

use rexec::{ExecRequest, Exit, RemoteExecClient, exec_response};
use tonic::transport::Channel;

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

/// Streams one exec to `output` and returns its exit report.
pub async fn run(
    client: &mut RemoteExecClient<Channel>,
    request: ExecRequest,
    output: &mut Output,
) -> Result<Exit, Failure> {
    output.reset();
    let mut stream = client
        .exec(request)
        .await
        .map_err(|s| Failure::rexec(describe_status(&s)))?
        .into_inner();
    let mut exit = None;
    loop {
        let message = stream
            .message()
            .await
            .map_err(|s| Failure::rexec(describe_status(&s)))?;
        let Some(message) = message else { break };
        let written = match message.event {
            Some(exec_response::Event::Stdout(bytes)) => output.stdout(&bytes),
            Some(exec_response::Event::Stderr(bytes)) => output.stderr(&bytes),
            Some(exec_response::Event::Exit(report)) => {
                exit = Some(report);
                Ok(())
            }
            Some(exec_response::Event::Started(_)) | None => Ok(()),
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
    output
        .finish()
        .map_err(|e| Failure::rexec(format!("cannot write output: {e}")))?;
    exit.ok_or_else(|| Failure::rexec("connection closed before the command's exit status arrived"))
}

/// A status as one line: "not found: program not found: foo".
pub fn describe_status(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut words = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    let message = status.message().trim();
    if message.is_empty() {
        words
    } else {
        format!("{words}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let status = tonic::Status::not_found("program not found: foo");
        assert_eq!(
            describe_status(&status),
            "not found: program not found: foo"
        );
        assert_eq!(
            describe_status(&tonic::Status::invalid_argument("")),
            "invalid argument"
        );
    }
}
