//! The CLI on a pseudo-terminal of the test's own, as a person at a
//! terminal drives it: typed keys, Ctrl-C as a byte, what the screen shows.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Daemon;

/// The CLI on a local pty of our own, as a user's terminal.
pub struct Terminal {
    pty: pty_process::Pty,
    child: tokio::process::Child,
    seen: Vec<u8>,
    /// The REPL's history file: a scratch one, never the real one.
    pub history: std::path::PathBuf,
}

impl Terminal {
    pub fn spawn(daemon: &Daemon, args: &[&str], rows: u16, cols: u16) -> Terminal {
        Terminal::spawn_at(&daemon.addr, args, rows, cols)
    }

    /// The CLI with `--addr addr` (e.g. a legacy listener's).
    pub fn spawn_at(addr: &str, args: &[&str], rows: u16, cols: u16) -> Terminal {
        Terminal::spawn_program(super::REXEC, &[], &[], addr, args, rows, cols)
    }

    /// `program leading... --addr addr args...` with `env` set: a CLI run
    /// through another program (`wine rexec.exe`, tests/windows.rs).
    pub fn spawn_program(
        program: &str,
        leading: &[&str],
        env: &[(&str, &str)],
        addr: &str,
        args: &[&str],
        rows: u16,
        cols: u16,
    ) -> Terminal {
        let (pty, pts) = pty_process::open().unwrap();
        pty.resize(pty_process::Size::new(rows, cols)).unwrap();
        let history = super::scratch_dir("history").join("history");
        let child = pty_process::Command::new(program)
            .args(leading)
            .args(["--addr", addr])
            .args(args)
            .env("TERM", "xterm-test")
            .env("REXEC_HISTORY", &history)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn(pts)
            .unwrap();
        Terminal {
            pty,
            child,
            seen: Vec::new(),
            history,
        }
    }

    /// Reads until `needle` shows up; panics with what was seen after 15 s.
    pub async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(at) = text.find(needle) {
                let upto = at + needle.len();
                self.seen.drain(..upto);
                return text[..upto].to_string();
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.pty.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                other => panic!("waiting for {needle:?}: {other:?}; seen {text:?}"),
            }
        }
    }

    /// Waits for an interactive shell's prompt (`$ ` or, for root, `# `).
    pub async fn expect_prompt(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if text.trim_end_matches(' ').len() < text.len()
                && (text.ends_with("$ ") || text.ends_with("# "))
            {
                self.seen.clear();
                return;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.pty.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                other => panic!("waiting for a prompt: {other:?}; seen {text:?}"),
            }
        }
    }

    /// Passes a typed Enter on as `\r` (no ICRNL): wine's console takes
    /// the `\n` a terminal makes of it for Ctrl-J, and never ends the line.
    pub fn keep_carriage_returns(&self) {
        use nix::sys::termios::{InputFlags, SetArg, tcgetattr, tcsetattr};
        let mut termios = tcgetattr(&self.pty).expect("tcgetattr");
        termios.input_flags.remove(InputFlags::ICRNL);
        tcsetattr(&self.pty, SetArg::TCSANOW, &termios).expect("tcsetattr");
    }

    /// Resizes the terminal, as a person dragging its window.
    pub fn resize(&self, rows: u16, cols: u16) {
        self.pty.resize(pty_process::Size::new(rows, cols)).unwrap();
    }

    /// The CLI's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn type_text(&mut self, text: &str) {
        self.pty.write_all(text.as_bytes()).await.unwrap();
    }

    pub async fn exit_code(&mut self) -> Option<i32> {
        // Keep draining so the CLI never blocks on a full terminal.
        let mut buf = [0u8; 4096];
        let wait = async {
            loop {
                tokio::select! {
                    status = self.child.wait() => return status.unwrap().code(),
                    _ = self.pty.read(&mut buf) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .expect("CLI exits")
    }
}
