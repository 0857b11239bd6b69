//! How a remote command ended, over gRPC or the legacy protocol, and the
//! exit code a local program reports for it.

use std::time::Duration;

use crate::proto;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}
