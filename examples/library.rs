//! Runs a command on rexecd through the `rexec::client` library and exits with
//! its code: `cargo run --release --example library -- ADDR 'COMMAND'`.

use std::io::Write;
use std::process::ExitCode;

use rexec::client::{Client, ClientOptions, Command, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(command)) = (args.next(), args.next()) else {
        eprintln!("usage: library ADDR 'COMMAND'");
        return ExitCode::from(2);
    };
    match run(&addr, &command).await {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("library: {e}");
            ExitCode::from(255)
        }
    }
}

async fn run(addr: &str, command: &str) -> Result<i32, rexec::client::Error> {
    let mut client = Client::connect(addr, &ClientOptions::default()).await?;
    let mut events = client.exec(Command::shell(command)).await?;
    let mut code = 255;
    while let Some(event) = events.next().await? {
        match event {
            Event::Started { pid, .. } => eprintln!("[started pid {pid}]"),
            Event::Stdout(bytes) => {
                let _ = std::io::stdout().write_all(&bytes);
            }
            Event::Stderr(bytes) => {
                let _ = std::io::stderr().write_all(&bytes);
            }
            Event::Exit(status) => code = status.local_exit_code(),
        }
    }
    // A session: stdin streamed, EOF, then the output.
    let (input, mut events) = client.session(Command::shell("sort")).await?;
    input.stdin("b\na\n").await?;
    input.close_stdin().await?;
    while let Some(event) = events.next().await? {
        if let Event::Stdout(bytes) = event {
            eprint!("[sorted] {}", String::from_utf8_lossy(&bytes));
        }
    }
    Ok(code)
}
