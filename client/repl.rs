//! `rexec` with no words: one command a line, like the classic socket client,
//! with line editing, history, a `cd` that sticks, and Ctrl-C that stops the
//! running command rather than the REPL. A failed line is reported and the
//! REPL goes on; only end of input, `quit` or `exit` end it.

use std::path::PathBuf;

use rexec::client::{Client, Command, ExitStatus, Output as Captured};
use rexec::ending::Ending;
use rustyline::error::ReadlineError;

use crate::interrupt::Interrupts;
use crate::output::Output;
use crate::session::{self, SessionOptions};

/// Where the REPL's lines run: rexecd's gRPC service here, its legacy
/// listener in `legacy.rs`.
pub trait Remote {
    /// Runs one line, writing its output as it arrives; Ctrl-C interrupts
    /// it (twice: cancels it, `Ending::Interrupted`).
    async fn run(
        &mut self,
        command: Command,
        output: &mut Output,
        interrupts: &mut Interrupts,
    ) -> Result<ExitStatus, Ending>;

    /// Runs one line and returns what it printed, writing nothing (`cd`'s `pwd`).
    async fn capture(&mut self, command: Command) -> Result<Captured, Ending>;
}

impl Remote for Client {
    async fn run(
        &mut self,
        command: Command,
        output: &mut Output,
        interrupts: &mut Interrupts,
    ) -> Result<ExitStatus, Ending> {
        // A session, so that Ctrl-C can reach the command as INT. Its stdin
        // is closed: the REPL's own input is the lines.
        let options = SessionOptions {
            stream_stdin: false,
            tty: false,
        };
        session::run(self, command, options, output, interrupts).await
    }

    async fn capture(&mut self, command: Command) -> Result<Captured, Ending> {
        Ok(self.output(command).await?)
    }
}

/// Where history is kept: `$REXEC_HISTORY`; else on Windows
/// `%APPDATA%\rexec\history`, where Windows programs keep a user's state;
/// else `$XDG_STATE_HOME/rexec/history`, else `~/.local/state/rexec/history`
/// (beside the local token).
fn history_path() -> Option<PathBuf> {
    history_path_in(
        |name| std::env::var_os(name).filter(|v| !v.is_empty()),
        cfg!(windows),
    )
}

fn history_path_in(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    windows: bool,
) -> Option<PathBuf> {
    if let Some(path) = var("REXEC_HISTORY") {
        return Some(PathBuf::from(path));
    }
    if windows {
        return var("APPDATA").map(|dir| PathBuf::from(dir).join("rexec").join("history"));
    }
    let state = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".local/state")))?;
    Some(state.join("rexec/history"))
}

/// The directory of a line that is only `cd [DIR]`, which the REPL keeps
/// for later lines; `None` for anything else (`cd /tmp && ls` runs as typed).
fn bare_cd(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("cd")?;
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    // Anything that makes it more than one simple command.
    if rest.contains([';', '&', '|', '<', '>', '(', ')', '`', '\n']) {
        return None;
    }
    Some(rest.trim())
}

/// Reads lines until `quit`, `exit` or end of input; returns how the REPL ended.
pub async fn run(remote: &mut impl Remote, template: Command, output: &mut Output) -> Ending {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => return Ending::failed(format!("cannot start the line editor: {e}")),
    };
    let mut interrupts = match Interrupts::new() {
        Ok(interrupts) => interrupts,
        Err(e) => return Ending::failed(format!("cannot take over Ctrl-C: {e}")),
    };
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    // Where lines run: the template's cwd (`--cwd`, or the server's), then each `cd`.
    let home = template.current_cwd().to_string();
    let mut cwd = home.clone();
    let ending = loop {
        let prompt = if cwd.is_empty() {
            "rexec> ".to_string()
        } else {
            format!("rexec {cwd}> ")
        };
        // Read on a blocking thread, so the runtime meanwhile drives the
        // connection: a cancelled call's reset goes out now, not after the line.
        let read = tokio::task::spawn_blocking(move || {
            let line = editor.readline(&prompt);
            (editor, line)
        })
        .await;
        let line = match read {
            Ok((back, line)) => {
                editor = back;
                line
            }
            Err(e) => return Ending::failed(format!("the line editor failed: {e}")),
        };
        let line = match line {
            Ok(line) => line,
            // Ctrl-C at the prompt drops the line, as shells do.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ending::Remote(ExitStatus::exited(0)),
            Err(e) => break Ending::failed(format!("cannot read input: {e}")),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if line == "quit" || line == "exit" {
            break Ending::Remote(ExitStatus::exited(0));
        }
        let request = template.clone().cwd(cwd.clone());
        if let Some(dir) = bare_cd(line) {
            match change_dir(remote, request, dir).await {
                Ok(dir) => cwd = dir,
                Err(message) => eprintln!("rexec: {message}"),
            }
            continue;
        }
        match remote
            .run(request.with_shell(line), output, &mut interrupts)
            .await
        {
            Ok(status) if status.success() && !status.timed_out => {}
            Ok(status) => eprintln!("[{status}]"),
            Err(Ending::ReaderGone) => break Ending::ReaderGone,
            Err(ending) => {
                eprintln!("rexec: {ending}");
                if !cwd.is_empty() && cwd != home && !dir_exists(remote, &template, &cwd).await {
                    eprintln!("rexec: {cwd} is gone; lines run in {} again", where_(&home));
                    cwd = home.clone();
                }
            }
        }
    };
    if let Some(path) = &history {
        if let Some(dir) = path.parent() {
            let _ = create_private_dir(dir);
        }
        let _ = editor.save_history(path);
    }
    ending
}

fn where_(dir: &str) -> &str {
    if dir.is_empty() {
        "the server's directory"
    } else {
        dir
    }
}

/// The directory `cd DIR` leads to, resolved remotely so that `~`, `-` and
/// relative paths mean what they mean there; the error to show otherwise.
async fn change_dir(
    remote: &mut impl Remote,
    request: Command,
    dir: &str,
) -> Result<String, String> {
    let text = if dir.is_empty() {
        "cd >/dev/null && pwd".to_string()
    } else {
        format!("cd {dir} >/dev/null && pwd")
    };
    let captured = remote
        .capture(request.with_shell(text))
        .await
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&captured.stdout);
    let resolved = stdout.trim_end_matches('\n');
    if captured.status.success() && !resolved.is_empty() && !resolved.contains('\n') {
        return Ok(resolved.to_string());
    }
    // The remote shell's own words ("can't cd to /x"), else the status.
    let stderr = String::from_utf8_lossy(&captured.stderr);
    match stderr.trim().lines().last() {
        Some(why) => Err(why.to_string()),
        None => Err(format!("cd {dir}: {}", captured.status)),
    }
}

/// Whether `dir` still exists remotely (asked from the template's cwd).
async fn dir_exists(remote: &mut impl Remote, template: &Command, dir: &str) -> bool {
    let test = format!("test -d {}", crate::quote::shell_quote(dir));
    match remote.capture(template.with_shell(test)).await {
        Ok(captured) => captured.status.success(),
        // Unreachable now: say nothing, keep the cwd.
        Err(_) => true,
    }
}

/// Creates `dir` and its parents, readable by this user only (history holds commands).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lives_where_each_system_keeps_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let everything = env(&[
            ("APPDATA", "C:/Users/u/AppData/Roaming"),
            ("HOME", "/home/u"),
            ("XDG_STATE_HOME", "/state"),
        ]);
        let windows = PathBuf::from("C:/Users/u/AppData/Roaming")
            .join("rexec")
            .join("history");
        assert_eq!(history_path_in(everything, true), Some(windows));
        assert_eq!(
            history_path_in(everything, false),
            Some(PathBuf::from("/state/rexec/history"))
        );
        assert_eq!(
            history_path_in(env(&[("HOME", "/home/u")]), false),
            Some(PathBuf::from("/home/u/.local/state/rexec/history"))
        );
        assert_eq!(history_path_in(env(&[("HOME", "/home/u")]), true), None);
        let chosen = env(&[("REXEC_HISTORY", "/h"), ("APPDATA", "C:/x")]);
        assert_eq!(history_path_in(chosen, true), Some(PathBuf::from("/h")));
    }

    #[test]
    fn only_a_lone_cd_sticks() {
        assert_eq!(bare_cd("cd"), Some(""));
        assert_eq!(bare_cd("cd /tmp"), Some("/tmp"));
        assert_eq!(bare_cd("cd  'a dir' "), Some("'a dir'"));
        assert_eq!(bare_cd("cd ~"), Some("~"));
        assert_eq!(bare_cd("cd /tmp && ls"), None);
        assert_eq!(bare_cd("cd /tmp; ls"), None);
        assert_eq!(bare_cd("cd $(mktemp -d)"), None);
        assert_eq!(bare_cd("cdrecord -v"), None);
        assert_eq!(bare_cd("ls"), None);
    }
}
