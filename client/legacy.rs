//! `rexec --legacy`: the CLI over rexecd's legacy raw-TCP listener, with framed
//! requests. That protocol carries only a command line, stdin and a timeout, so
//! `--cwd`, `--env` and `--no-shell` are folded into the command line.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rexec::client::{Command, describe_io};
use rexec::legacy::{Request, RequestCodec, Response, ResponseCodec, ResponseHeader};
use rexec::wrong_port::{self, Tried};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_stream::StreamExt;
use tokio_util::codec::{Encoder, FramedRead};

use crate::Cli;
use crate::exec::Failure;
use crate::output::Output;
use crate::repl::{self, Remote};

/// A connection unused this long is checked for a close by the server first.
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(100);
/// How long that check waits to see the close.
const IDLE_CHECK_WAIT: Duration = Duration::from_millis(2);

/// One connection to a legacy listener; requests go one after the other.
pub struct Connection {
    addr: String,
    connect_timeout: Duration,
    /// When the last request was sent: only a connection idle since may be closed.
    last_used: Instant,
    writer: OwnedWriteHalf,
    responses: FramedRead<OwnedReadHalf, ResponseCodec>,
}

impl Connection {
    /// `addr` is `host:port` of rexecd's `--legacy-listen`.
    pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<Connection, String> {
        let addr = addr.trim();
        if let Some((scheme, _)) = addr.split_once("://") {
            return Err(format!(
                "--legacy takes host:port (the legacy listener's), not a {scheme}:// address"
            ));
        }
        // The legacy listener has no well-known port to fill in.
        if rexec::address::with_default_port(addr) != addr {
            return Err(format!(
                "--legacy needs HOST:PORT of rexecd's --legacy-listen, not '{addr}' without a port"
            ));
        }
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(format!("cannot connect to {addr}: timed out")),
            Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {}", describe_io(&e))),
            Ok(Ok(stream)) => stream,
        };
        // The request is one write; without this a second one could wait on Nagle.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Ok(Connection {
            addr: addr.to_string(),
            connect_timeout,
            last_used: Instant::now(),
            writer,
            responses: FramedRead::new(reader, ResponseCodec::new()),
        })
    }

    /// Whether the server has closed this connection while it waited between
    /// requests (rexecd closes one that sends nothing for
    /// `--legacy-first-request-timeout` or `--legacy-idle-timeout`). Asked
    /// only after a pause; the short wait lets the runtime see the close.
    async fn closed_while_idle(&mut self) -> bool {
        if self.last_used.elapsed() < IDLE_CHECK_AFTER || !self.responses.read_buffer().is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let peek = self.responses.get_mut().peek(&mut byte);
        // EOF or an error before anything was sent: the server closed it.
        matches!(
            tokio::time::timeout(IDLE_CHECK_WAIT, peek).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Sends one framed request and reads its whole answer. A connection the
    /// server closed while idle is opened again first: nothing was sent on it.
    pub async fn call(&mut self, request: Request) -> Result<Response, String> {
        if self.closed_while_idle().await {
            *self = Connection::connect(&self.addr, self.connect_timeout).await?;
        }
        self.last_used = Instant::now();
        let mut frame = BytesMut::new();
        RequestCodec::new()
            .encode(request, &mut frame)
            .map_err(|e| e.to_string())?;
        // A server that refuses the connection answers and closes at once, so a
        // failed write may still have an answer waiting: read it first.
        let written = self.writer.write_all(&frame).await;
        let failure = match self.responses.next().await {
            Some(Ok(response)) => return Ok(response),
            Some(Err(e)) => format!("bad answer from {}: {e}", self.addr),
            None => match written {
                Err(e) => format!("connection to {} lost: {}", self.addr, describe_io(&e)),
                Ok(()) => format!("{} closed the connection without an answer", self.addr),
            },
        };
        Err(self.diagnose().await.unwrap_or(failure))
    }

    /// After a failed call, what the port is when it is not a legacy
    /// listener (e.g. a gRPC port answers with an HTTP/2 SETTINGS frame).
    async fn diagnose(&self) -> Option<String> {
        let kind = wrong_port::probe(&self.addr).await?;
        let advice = wrong_port::advice(&self.addr, Tried::Legacy, kind)?;
        Some(format!("cannot connect to {}: {advice}", self.addr))
    }
}

/// What every request of one `rexec --legacy` run shares.
#[derive(Debug, Clone, Default)]
pub struct Template {
    pub env: Vec<(String, String)>,
    pub timeout_ms: u64,
}

impl Template {
    /// The request for one shell command line run in `cwd` (empty: the server's).
    pub fn request(
        &self,
        command: &str,
        cwd: &str,
        stdin: Option<Bytes>,
    ) -> Result<Request, String> {
        Ok(Request {
            command: command_line(command, cwd, &self.env)?,
            stdin,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// `rexec --legacy`: WORDS as one request, or the REPL without WORDS.
pub async fn run(cli: &Cli, output: &mut Output) -> Result<i32, Failure> {
    let mut connection = Connection::connect(&cli.connect.addr, cli.connect.connect_timeout)
        .await
        .map_err(Failure::rexec)?;
    let template = Template {
        env: cli.env.clone(),
        timeout_ms: cli.timeout.map_or(0, |t| (t.as_millis() as u64).max(1)),
    };
    let cwd = cli.cwd.clone().unwrap_or_default();
    if cli.words.is_empty() {
        let remote = Remote::Legacy(&mut connection, &template);
        return Ok(repl::run(remote, Command::default().cwd(cwd), output).await);
    }
    let command = if cli.no_shell {
        cli.words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        cli.words.join(" ")
    };
    let stdin = std::io::stdin();
    let stdin = if !cli.no_stdin && !stdin.is_terminal() {
        let mut bytes = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::rexec(format!("cannot read stdin: {e}")))?;
        (!bytes.is_empty()).then(|| Bytes::from(bytes))
    } else {
        None
    };
    let request = template
        .request(&command, &cwd, stdin)
        .map_err(|message| Failure {
            message: Some(message),
            code: 2,
        })?;
    let header = exec(&mut connection, request, output).await?;
    if header.timed_out == Some(true) {
        let after = cli
            .timeout
            .map(|t| format!(" after {t:?}"))
            .unwrap_or_default();
        eprintln!("rexec: remote command timed out{after}");
    }
    Ok(exit_code(&header))
}

/// Runs one request and writes its answer: stdout part to stdout, stderr part
/// to stderr. Returns the answer's header.
pub async fn exec(
    connection: &mut Connection,
    request: Request,
    output: &mut Output,
) -> Result<ResponseHeader, Failure> {
    output.reset();
    let response = connection.call(request).await.map_err(Failure::rexec)?;
    if let Some(error) = &response.header.error {
        return Err(Failure::rexec(format!(
            "server refused the request: {error}"
        )));
    }
    let written = output
        .stdout(&response.stdout)
        .and_then(|()| output.stderr(&response.stderr))
        .and_then(|()| output.finish());
    written.map_err(Failure::output)?;
    if response.header.truncated == Some(true) {
        eprintln!("rexec: output cut at the server's --legacy-max-output");
    }
    Ok(response.header)
}

/// Runs a command line in `cwd` and returns its stdout, stderr and whether it
/// exited 0, without writing anything (the REPL's `cd`).
pub async fn capture(
    connection: &mut Connection,
    template: &Template,
    command: &str,
    cwd: &str,
) -> Result<(Vec<u8>, Vec<u8>, bool), String> {
    let request = template.request(command, cwd, None)?;
    let response = connection.call(request).await?;
    if let Some(error) = response.header.error {
        return Err(format!("server refused the request: {error}"));
    }
    let success = exit_code(&response.header) == 0;
    Ok((response.stdout.to_vec(), response.stderr.to_vec(), success))
}

/// The local exit code for an answer, as ssh reports one: the remote code,
/// 128 + signal number, or 255 when there is neither.
pub fn exit_code(header: &ResponseHeader) -> i32 {
    match (header.exit_code, &header.signal) {
        (Some(code), _) => code & 0xff,
        (None, Some(signal)) => {
            rexec::signals::number(signal).map_or(rexec::EXIT_REXEC_FAILURE, |n| 128 + n)
        }
        (None, None) => rexec::EXIT_REXEC_FAILURE,
    }
}

/// The one command line the protocol carries: `cd` into `cwd` (stopping if
/// that fails), export `env`, then `command`.
pub fn command_line(command: &str, cwd: &str, env: &[(String, String)]) -> Result<String, String> {
    let mut line = String::new();
    if !cwd.is_empty() {
        line.push_str(&format!("cd -- {} || exit\n", shell_quote(cwd)));
    }
    for (name, value) in env {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "environment variable name '{name}' cannot be set over --legacy \
                 (letters, digits and _ only)"
            ));
        }
        line.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    line.push_str(command);
    Ok(line)
}

/// Quotes a word for `/bin/sh`: single quotes, with `'` written as `'\''`.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_ssh_rules() {
        let header = |exit_code, signal: Option<&str>| ResponseHeader {
            exit_code,
            signal: signal.map(String::from),
            ..Default::default()
        };
        assert_eq!(exit_code(&header(Some(3), None)), 3);
        assert_eq!(exit_code(&header(Some(256 + 7), None)), 7);
        assert_eq!(exit_code(&header(None, Some("TERM"))), 143);
        assert_eq!(exit_code(&header(None, Some("KILL"))), 137);
        assert_eq!(exit_code(&header(None, Some("NOPE"))), 255);
        assert_eq!(exit_code(&header(None, None)), 255);
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn cwd_and_env_become_a_prefix() {
        let env = vec![("FOO".to_string(), "x y".to_string())];
        assert_eq!(
            command_line("echo $FOO", "/tmp/a b", &env).unwrap(),
            "cd -- '/tmp/a b' || exit\nexport FOO='x y'\necho $FOO"
        );
        assert_eq!(command_line("ls", "", &[]).unwrap(), "ls");
        let bad = vec![("A B".to_string(), "1".to_string())];
        assert!(command_line("ls", "", &bad).is_err());
    }

    #[test]
    fn urls_are_not_legacy_addresses() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(Connection::connect(
            "http://127.0.0.1:1",
            Duration::from_secs(1),
        ));
        assert!(result.err().unwrap().contains("host:port"));
        let result = runtime.block_on(Connection::connect("localhost", Duration::from_secs(1)));
        assert!(result.err().unwrap().contains("HOST:PORT"));
    }
}
