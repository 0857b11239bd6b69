//! `rexec` with no words: one command a line, like the classic socket client,
//! with line editing, history, and a `cd` that sticks.

use rexec::client::{Client, Command};
use rustyline::error::ReadlineError;

use crate::exec;
use crate::output::Output;

/// Reads lines until `quit`, `exit` or end of input; returns the CLI exit code.
pub async fn run(client: &mut Client, template: Command, output: &mut Output) -> i32 {
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
            match resolve_cd(client, request.with_shell(format!("{line} && pwd"))).await {
                Ok(dir) => cwd = dir,
                Err(message) => eprintln!("{message}"),
            }
            continue;
        }
        match exec::run(client, request.with_shell(line), output).await {
            Ok(exit) => {
                let status = exit.local_exit_code();
                if exit.timed_out {
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

async fn resolve_cd(client: &mut Client, command: Command) -> Result<String, String> {
    let output = client
        .output(command)
        .await
        .map_err(|e| format!("rexec: {e}"))?;
    let dir = String::from_utf8_lossy(&output.stdout)
        .trim_end_matches('\n')
        .to_string();
    if output.status.success() && !dir.is_empty() {
        Ok(dir)
    } else {
        Err(String::from_utf8_lossy(&output.stderr)
            .trim_end()
            .to_string())
    }
}
