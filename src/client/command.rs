//! A command to run and how to run it, built up as a value.

use std::time::Duration;

use bytes::Bytes;

use crate::proto;

/// A command to run: a shell command line or an argv, and how to run it.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub(super) request: proto::ExecRequest,
}

impl Command {
    /// Run by the server's shell (`/bin/sh -c TEXT`).
    pub fn shell(text: impl Into<String>) -> Self {
        Command {
            request: proto::ExecRequest {
                command: text.into(),
                ..Default::default()
            },
        }
    }

    /// Run directly, without a shell; `argv[0]` is looked up in PATH.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            request: proto::ExecRequest {
                argv: argv.into_iter().map(Into::into).collect(),
                ..Default::default()
            },
        }
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.insert(name.into(), value.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.request.cwd = dir.into();
        self
    }

    /// Bytes fed to stdin, which is then closed (for `exec`; a session streams instead).
    pub fn stdin(mut self, bytes: impl Into<Bytes>) -> Self {
        self.request.stdin = bytes.into();
        self
    }

    /// Kill the command after this long; `exit.timed_out` then says so.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout_ms = (timeout.as_millis() as u64).max(1);
        self
    }

    /// Run on a remote pseudo-terminal of this size (sessions only).
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.request.tty = true;
        self.request.tty_size = Some(proto::TtySize {
            rows: rows.into(),
            cols: cols.into(),
        });
        self
    }

    /// The working directory set so far (empty: the server's).
    pub fn current_cwd(&self) -> &str {
        &self.request.cwd
    }

    /// The argv of an argv command (empty for a shell command line).
    pub fn argv_words(&self) -> &[String] {
        &self.request.argv
    }

    /// The environment set so far, sorted by name.
    pub fn env_vars(&self) -> Vec<(&str, &str)> {
        let mut vars: Vec<(&str, &str)> = self
            .request
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.sort_unstable();
        vars
    }

    /// The timeout set so far.
    pub fn current_timeout(&self) -> Option<Duration> {
        (self.request.timeout_ms > 0).then(|| Duration::from_millis(self.request.timeout_ms))
    }

    /// Whether there is anything to run (a command line or an argv).
    pub fn is_empty(&self) -> bool {
        self.request.command.is_empty() && self.request.argv.is_empty()
    }

    /// The shell command line, or `None` for an argv command.
    pub fn shell_text(&self) -> Option<&str> {
        (!self.request.command.is_empty()).then_some(self.request.command.as_str())
    }

    /// The request this command sends (other transports wrap it: NATS).
    pub fn to_request(&self) -> proto::ExecRequest {
        self.request.clone()
    }

    /// Same options, another shell command line.
    pub fn with_shell(&self, text: impl Into<String>) -> Self {
        let mut request = self.request.clone();
        request.command = text.into();
        request.argv.clear();
        Command { request }
    }
}
