//! `rexec` with no words: one command a line, like the classic socket client,
//! with line editing, history, and a `cd` that sticks.

use rexec::client::{Client, Command};
use rustyline::error::ReadlineError;

use crate::exec::{self, Failure};
use crate::legacy;
use crate::output::Output;

/// Where the REPL's lines run: rexecd's gRPC service, or its legacy listener
/// (`rexec --legacy`) with the options that protocol folds into each line.
pub enum Remote<'a> {
    Grpc(&'a mut Client),
    Legacy(&'a mut legacy::Connection, &'a legacy::Template),
}

impl Remote<'_> {
    /// Runs one line, writing its output; returns (local exit code, timed out).
    async fn run_line(
        &mut self,
        command: Command,
        output: &mut Output,
    ) -> Result<(i32, bool), Failure> {
        match self {
            Remote::Grpc(client) => exec::run(client, command, output)
                .await
                .map(|exit| (exit.local_exit_code(), exit.timed_out)),
            Remote::Legacy(connection, template) => {
                let text = command.shell_text().unwrap_or_default();
                let request = template
                    .request(text, command.current_cwd(), None)
                    .map_err(Failure::rexec)?;
                let header = legacy::exec(connection, request, output).await?;
                Ok((legacy::exit_code(&header), header.timed_out == Some(true)))
            }
        }
    }
}

/// Reads lines until `quit`, `exit` or end of input; returns the CLI exit code.
pub async fn run(mut client: Remote<'_>, template: Command, output: &mut Output) -> i32 {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("rexec: cannot start the line editor: {e}");
            return rexec::EXIT_REXEC_FAILURE;
        }
    };
    let history =
        std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".rexec_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let mut cwd = template.current_cwd().to_string();
    let mut code = 0;
    loop {
        let prompt = if cwd.is_empty() {
            "rexec> ".to_string()
        } else {
            format!("rexec {cwd}> ")
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("rexec: cannot read input: {e}");
                code = rexec::EXIT_REXEC_FAILURE;
                break;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if line == "quit" || line == "exit" {
            break;
        }
        let request = template.clone().cwd(cwd.clone());
        if line == "cd" || line.starts_with("cd ") {
            // Resolved remotely (so `~` and relative paths mean the server's), then sent as cwd.
            match resolve_cd(&mut client, request.with_shell(format!("{line} && pwd"))).await {
                Ok(dir) => cwd = dir,
                Err(message) => eprintln!("{message}"),
            }
            continue;
        }
        match client.run_line(request.with_shell(line), output).await {
            Ok((status, timed_out)) => {
                if timed_out {
                    eprintln!("[timed out]");
                } else if status != 0 {
                    eprintln!("[exit {status}]");
                }
            }
            Err(failure) => {
                if let Some(message) = failure.message {
                    eprintln!("rexec: {message}");
                }
                if failure.code == rexec::EXIT_REXEC_FAILURE {
                    code = failure.code;
                    break;
                }
            }
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    code
}

async fn resolve_cd(remote: &mut Remote<'_>, command: Command) -> Result<String, String> {
    let (stdout, stderr, success) = match remote {
        Remote::Grpc(client) => {
            let output = client
                .output(command)
                .await
                .map_err(|e| format!("rexec: {e}"))?;
            (output.stdout, output.stderr, output.status.success())
        }
        Remote::Legacy(connection, template) => {
            let text = command.shell_text().unwrap_or_default();
            legacy::capture(connection, template, text, command.current_cwd())
                .await
                .map_err(|e| format!("rexec: {e}"))?
        }
    };
    let dir = String::from_utf8_lossy(&stdout)
        .trim_end_matches('\n')
        .to_string();
    if success && !dir.is_empty() {
        Ok(dir)
    } else {
        Err(String::from_utf8_lossy(&stderr).trim_end().to_string())
    }
}
