//! How a run of a rexec tool ends, and the exit code it reports: the one
//! exit-status model of the CLI, its fan-out, its REPL and its benchmark.
//!
//! - the remote command's own code, or 128 + N when signal N killed it (as ssh);
//! - 141 when the reader of our output went away (`rexec -- yes | head`), silently,
//!   as SIGPIPE ends a local command;
//! - 130 when Ctrl-C cancelled the call, as a shell reports SIGINT;
//! - 2 for bad flags or input found before anything ran;
//! - 255 when rexec itself failed (connect, auth, protocol), as ssh does.

use crate::client::ExitStatus;

/// Bad flags or input: nothing ran.
pub const USAGE: u8 = 2;
/// Ctrl-C cancelled the call (128 + SIGINT).
pub const INTERRUPTED: u8 = 128 + 2;
/// Our output's reader went away (128 + SIGPIPE).
pub const READER_GONE: u8 = 128 + 13;
/// rexec itself failed, as ssh's 255.
pub const FAILED: u8 = 255;

/// How a run ended. `Display` is the one line a person reads for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The remote command ended: its code, or 128 + its signal.
    Remote(ExitStatus),
    /// The reader of our output went away: nothing more to say.
    ReaderGone,
    /// Ctrl-C cancelled the call; the server kills the command.
    Interrupted,
    /// Bad flags or input, found before anything ran.
    Usage(String),
    /// rexec itself failed.
    Failed(String),
}

impl Ending {
    /// The exit code a local program reports for this ending.
    pub fn code(&self) -> u8 {
        match self {
            Ending::Remote(status) => status.local_exit_code() as u8,
            Ending::ReaderGone => READER_GONE,
            Ending::Interrupted => INTERRUPTED,
            Ending::Usage(_) => USAGE,
            Ending::Failed(_) => FAILED,
        }
    }

    /// The line to print on stderr, if any: none for a remote ending (the
    /// code says it) or a reader that went away (as SIGPIPE is silent).
    pub fn message(&self) -> Option<String> {
        match self {
            Ending::Remote(_) | Ending::ReaderGone => None,
            other => Some(other.to_string()),
        }
    }

    /// A failed write of output: a closed reader, or a real failure.
    pub fn output(error: std::io::Error) -> Ending {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Ending::ReaderGone
        } else {
            Ending::Failed(format!("cannot write output: {error}"))
        }
    }

    pub fn failed(message: impl Into<String>) -> Ending {
        Ending::Failed(message.into())
    }

    pub fn usage(message: impl Into<String>) -> Ending {
        Ending::Usage(message.into())
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Remote(status) => status.fmt(f),
            Ending::ReaderGone => f.write_str("the reader of the output went away"),
            Ending::Interrupted => f.write_str("interrupted; remote command cancelled"),
            Ending::Usage(message) | Ending::Failed(message) => f.write_str(message),
        }
    }
}

impl From<crate::client::Error> for Ending {
    fn from(error: crate::client::Error) -> Self {
        Ending::Failed(error.to_string())
    }
}

impl From<ExitStatus> for Ending {
    fn from(status: ExitStatus) -> Self {
        Ending::Remote(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: Option<i32>, signal: Option<&str>) -> Ending {
        Ending::Remote(ExitStatus {
            code,
            signal: signal.map(String::from),
            ..ExitStatus::default()
        })
    }

    #[test]
    fn codes_follow_ssh_and_the_shell() {
        assert_eq!(remote(Some(0), None).code(), 0);
        assert_eq!(remote(Some(3), None).code(), 3);
        assert_eq!(remote(Some(256 + 7), None).code(), 7);
        assert_eq!(remote(None, Some("KILL")).code(), 137);
        assert_eq!(remote(None, Some("TERM")).code(), 143);
        assert_eq!(remote(None, Some("NOPE")).code(), 255);
        assert_eq!(remote(None, None).code(), 255);
        assert_eq!(Ending::ReaderGone.code(), 141);
        assert_eq!(Ending::Interrupted.code(), 130);
        assert_eq!(Ending::usage("x").code(), 2);
        assert_eq!(Ending::failed("x").code(), 255);
    }

    #[test]
    fn only_local_endings_have_a_message() {
        assert_eq!(remote(Some(3), None).message(), None);
        assert_eq!(Ending::ReaderGone.message(), None);
        assert_eq!(
            Ending::failed("cannot connect").message().as_deref(),
            Some("cannot connect")
        );
        assert_eq!(remote(Some(3), None).to_string(), "exit 3");
    }
}
