//! `rexec` with no words: one command a line, like the classic socket client,
//! with line editing, history, and a `cd` that sticks.

use rexec::{ExecRequest, RemoteExecClient};
use rustyline::error::ReadlineError;
use tonic::transport::Channel;

use crate::exec;
use crate::output::Output;

/// Reads lines until `quit`, `exit` or end of input; returns the CLI exit code.
pub async fn run(
    client: &mut RemoteExecClient<Channel>,
    template: ExecRequest,
    output: &mut Output,
) -> i32 {
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
    let mut cwd = template.cwd.clone();
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
        let request = ExecRequest {
            cwd: cwd.clone(),
            ..template.clone()
        };
        if line == "cd" || line.starts_with("cd ") {
            // Resolved remotely (so `~` and relative paths mean the server's), then sent as cwd.
            let request = ExecRequest {
                command: format!("{line} && pwd"),
                ..request
            };
            match resolve_cd(client, request).await {
                Ok(dir) => cwd = dir,
                Err(message) => eprintln!("{message}"),
            }
            continue;
        }
        let request = ExecRequest {
            command: line.to_string(),
            ..request
        };
        match exec::run(client, request, output).await {
            Ok(exit) => {
                let status = rexec::local_exit_code(exit.status.as_ref());
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

async fn resolve_cd(
    client: &mut RemoteExecClient<Channel>,
    request: ExecRequest,
) -> Result<String, String> {
    let response = client
        .exec(request)
        .await
        .map_err(|s| format!("rexec: {}", exec::describe_status(&s)))?;
    let mut stream = response.into_inner();
    let (mut stdout, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| format!("rexec: {}", exec::describe_status(&s)))?
    {
        match message.event {
            Some(rexec::exec_response::Event::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(rexec::exec_response::Event::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(rexec::exec_response::Event::Exit(exit)) => {
                code = Some(rexec::local_exit_code(exit.status.as_ref()))
            }
            _ => {}
        }
    }
    let dir = String::from_utf8_lossy(&stdout)
        .trim_end_matches('\n')
        .to_string();
    match code {
        Some(0) if !dir.is_empty() => Ok(dir),
        _ => Err(String::from_utf8_lossy(&stderr).trim_end().to_string()),
    }
}
