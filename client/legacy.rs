//! `rexec --legacy`: the CLI over rexecd's legacy raw-TCP listener, with framed
//! requests. That protocol carries only a command line, stdin and a timeout, so
//! `--cwd`, `--env` and `--no-shell` are folded into the command line; the
//! REPL runs over it through `repl::Remote`.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rexec::client::{Command, ExitStatus, Output as Captured, describe_io};
use rexec::ending::Ending;
use rexec::legacy::{Request, RequestCodec, Response, ResponseCodec};
use rexec::wrong_port::{self, Tried};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_stream::StreamExt;
use tokio_util::codec::{Encoder, FramedRead};

use crate::interrupt::Interrupts;
use crate::output::Output;
use crate::quote::shell_quote;
use crate::repl;

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
    /// A call was given up midway (Ctrl-C): its answer would come next, so
    /// the next call goes over a new connection.
    abandoned: bool,
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
            abandoned: false,
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
        if self.abandoned || self.closed_while_idle().await {
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

/// `rexec --legacy`: `command` as one request, or the REPL when it has
/// nothing to run. Local stdin that is not a terminal is sent with it, unless
/// `send_stdin` is false (`-n`).
pub async fn run(
    addr: &str,
    connect_timeout: Duration,
    command: &Command,
    send_stdin: bool,
    output: &mut Output,
) -> Ending {
    let mut connection = match Connection::connect(addr, connect_timeout).await {
        Ok(connection) => connection,
        Err(message) => return Ending::Failed(message),
    };
    if command.is_empty() {
        return repl::run(&mut connection, command.clone(), output).await;
    }
    let stdin = std::io::stdin();
    let stdin = if send_stdin && !stdin.is_terminal() {
        let mut bytes = Vec::new();
        if let Err(e) = stdin.lock().read_to_end(&mut bytes) {
            return Ending::failed(format!("cannot read stdin: {e}"));
        }
        (!bytes.is_empty()).then(|| Bytes::from(bytes))
    } else {
        None
    };
    let request = match request(command, stdin) {
        Ok(request) => request,
        Err(message) => return Ending::Usage(message),
    };
    match exec(&mut connection, request, output).await {
        Ok(status) => Ending::Remote(status),
        Err(ending) => ending,
    }
}

/// The one request the protocol carries for `command`: its cwd, env and
/// argv folded into a command line, its timeout, and `stdin`.
pub fn request(command: &Command, stdin: Option<Bytes>) -> Result<Request, String> {
    Ok(Request {
        command: command_line(command)?,
        stdin,
        timeout_ms: command
            .current_timeout()
            .map_or(0, |t| (t.as_millis() as u64).max(1)),
    })
}

/// Runs one request and writes its answer: stdout part to stdout, stderr part
/// to stderr. Returns how the command ended.
pub async fn exec(
    connection: &mut Connection,
    request: Request,
    output: &mut Output,
) -> Result<ExitStatus, Ending> {
    output.reset();
    let response = connection.call(request).await.map_err(Ending::Failed)?;
    if let Some(error) = &response.header.error {
        return Err(Ending::failed(format!(
            "server refused the request: {error}"
        )));
    }
    let written = output
        .stdout(&response.stdout)
        .and_then(|()| output.stderr(&response.stderr))
        .and_then(|()| output.finish());
    written.map_err(Ending::output)?;
    if response.header.truncated == Some(true) {
        eprintln!("rexec: output cut at the server's --legacy-max-output");
    }
    Ok(ExitStatus::from(&response.header))
}

/// The REPL over a legacy connection. The protocol cannot carry a signal, so
/// Ctrl-C abandons the call (the server kills a command whose client left)
/// and the next line goes over a new connection.
impl repl::Remote for Connection {
    async fn run(
        &mut self,
        command: Command,
        output: &mut Output,
        interrupts: &mut Interrupts,
    ) -> Result<ExitStatus, Ending> {
        let request = request(&command, None).map_err(Ending::Usage)?;
        interrupts.reset().await;
        let finished = tokio::select! {
            ended = exec(self, request, output) => Some(ended),
            _ = interrupts.next() => None,
        };
        if let Some(ended) = finished {
            return ended;
        }
        let _ = output.finish();
        // Closing the socket now is what tells the server to kill the command.
        match Connection::connect(&self.addr, self.connect_timeout).await {
            Ok(fresh) => *self = fresh,
            Err(_) => self.abandoned = true,
        }
        Err(Ending::Interrupted)
    }

    async fn capture(&mut self, command: Command) -> Result<Captured, Ending> {
        let request = request(&command, None).map_err(Ending::Usage)?;
        let response = self.call(request).await.map_err(Ending::Failed)?;
        if let Some(error) = response.header.error {
            return Err(Ending::failed(format!(
                "server refused the request: {error}"
            )));
        }
        Ok(Captured {
            status: ExitStatus::from(&response.header),
            stdout: response.stdout.to_vec(),
            stderr: response.stderr.to_vec(),
        })
    }
}

/// The one command line the protocol carries for `command`: `cd` into its
/// cwd (stopping if that fails), export its env, then its command line (an
/// argv is quoted word by word).
pub fn command_line(command: &Command) -> Result<String, String> {
    let mut line = String::new();
    let cwd = command.current_cwd();
    if !cwd.is_empty() {
        line.push_str(&format!("cd -- {} || exit\n", shell_quote(cwd)));
    }
    for (name, value) in command.env_vars() {
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
    match command.shell_text() {
        Some(text) => line.push_str(text),
        None => {
            let words: Vec<String> = command
                .argv_words()
                .iter()
                .map(|w| shell_quote(w))
                .collect();
            line.push_str(&words.join(" "));
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_env_and_argv_become_one_command_line() {
        let command = Command::shell("echo $FOO")
            .cwd("/tmp/a b")
            .env("FOO", "x y");
        assert_eq!(
            command_line(&command).unwrap(),
            "cd -- '/tmp/a b' || exit\nexport FOO='x y'\necho $FOO"
        );
        assert_eq!(command_line(&Command::shell("ls")).unwrap(), "ls");
        let argv = Command::argv(["printf", "%s\\n", "it's"]);
        assert_eq!(command_line(&argv).unwrap(), r"'printf' '%s\n' 'it'\''s'");
        assert!(command_line(&Command::shell("ls").env("A B", "1")).is_err());
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
