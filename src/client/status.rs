//! How a remote command ended, over gRPC or the legacy protocol, and the
//! exit code a local program reports for it.

use std::time::Duration;

use crate::proto;

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal name ("KILL", "TERM"), when a signal killed it.
    pub signal: Option<String>,
    pub timed_out: bool,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
    /// CPU time of the whole exec (every process it ran, where the server
    /// has a cgroup per exec), user and system.
    pub cpu_user: Duration,
    pub cpu_system: Duration,
}

impl ExitStatus {
    /// A normal exit with `code`, nothing else known.
    pub fn exited(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            ..ExitStatus::default()
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The exit code a local program should report, as ssh does: the remote
    /// code, or 128 + the signal number.
    pub fn local_exit_code(&self) -> i32 {
        match (&self.code, &self.signal) {
            (Some(code), _) => code & 0xff,
            (None, Some(signal)) => {
                crate::signals::number(signal).map_or(crate::EXIT_REXEC_FAILURE, |n| 128 + n)
            }
            (None, None) => crate::EXIT_REXEC_FAILURE,
        }
    }
}

/// "exit 3", "killed by signal TERM", "exit 0"; "(timed out)" after a
/// timeout. The one way any tool says how a command ended.
impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.signal) {
            (Some(code), _) => write!(f, "exit {code}")?,
            (None, Some(signal)) => write!(f, "killed by signal {signal}")?,
            (None, None) => f.write_str("no exit status")?,
        }
        if self.timed_out {
            f.write_str(" (timed out)")?;
        }
        Ok(())
    }
}

/// A legacy answer's header says as much as it carries: code or signal,
/// timeout, truncation, duration.
impl From<&crate::legacy::ResponseHeader> for ExitStatus {
    fn from(header: &crate::legacy::ResponseHeader) -> Self {
        ExitStatus {
            code: header.exit_code,
            signal: header.signal.clone(),
            timed_out: header.timed_out == Some(true),
            truncated: header.truncated == Some(true),
            duration: Duration::from_millis(header.duration_ms.unwrap_or(0)),
            stdout_bytes: header.stdout_size.unwrap_or(0),
            stderr_bytes: header.stderr_size.unwrap_or(0),
            ..ExitStatus::default()
        }
    }
}

impl From<proto::Exit> for ExitStatus {
    fn from(exit: proto::Exit) -> Self {
        let (code, signal) = match exit.status {
            Some(proto::exit::Status::Code(code)) => (Some(code), None),
            Some(proto::exit::Status::Signal(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        ExitStatus {
            code,
            signal,
            timed_out: exit.timed_out,
            duration: Duration::from_millis(exit.duration_ms),
            stdout_bytes: exit.stdout_bytes,
            stderr_bytes: exit.stderr_bytes,
            truncated: exit.truncated,
            cpu_user: Duration::from_micros(exit.cpu_user_us),
            cpu_system: Duration::from_micros(exit.cpu_system_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_ssh() {
        let mut status = ExitStatus::from(proto::Exit {
            status: Some(proto::exit::Status::Code(3)),
            ..Default::default()
        });
        assert_eq!(status.local_exit_code(), 3);
        status.code = None;
        status.signal = Some("KILL".into());
        assert_eq!(status.local_exit_code(), 137);
        status.signal = Some("BOGUS".into());
        assert_eq!(status.local_exit_code(), 255);
    }

    #[test]
    fn statuses_read_as_words() {
        let status = |code, signal: Option<&str>, timed_out| ExitStatus {
            code,
            signal: signal.map(String::from),
            timed_out,
            ..ExitStatus::default()
        };
        assert_eq!(status(Some(3), None, false).to_string(), "exit 3");
        assert_eq!(
            status(None, Some("TERM"), true).to_string(),
            "killed by signal TERM (timed out)"
        );
        assert_eq!(status(None, None, false).to_string(), "no exit status");
    }

    #[test]
    fn legacy_headers_become_statuses() {
        let header = crate::legacy::ResponseHeader {
            signal: Some("KILL".into()),
            timed_out: Some(true),
            ..Default::default()
        };
        let status = ExitStatus::from(&header);
        assert_eq!(status.local_exit_code(), 137);
        assert!(status.timed_out);
    }
}
