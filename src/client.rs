//! The Rust client API: connect to rexecd, run a command, read its events.
//! Callers never name generated types; the `rexec` CLI is built on this.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rexec::client::Error> {
//! use rexec::client::{Client, ClientOptions, Command, Event};
//! let mut client = Client::connect("127.0.0.1:50051", &ClientOptions::default()).await?;
//! let mut events = client.exec(Command::shell("echo hi; exit 3")).await?;
//! while let Some(event) = events.next().await? {
//!     match event {
//!         Event::Stdout(bytes) => print!("{}", String::from_utf8_lossy(&bytes)),
//!         Event::Exit(status) => println!("exit code {:?}", status.code),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::{self, exec_response, remote_exec_client::RemoteExecClient, session_request};
use crate::tls_probe::TlsProbe;
use crate::tls_words::Side;

/// HTTP/2 frame size the client advertises. The receiver's setting governs a
/// download, and 1 MiB frames cut per-frame work on big outputs.
const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Session messages queued before `SessionInput` calls wait (backpressure).
const SESSION_QUEUE: usize = 16;

/// How to reach a server. Build it with `..ClientOptions::default()` so new
/// fields do not break callers.
#[derive(Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Sent as `authorization: Bearer TOKEN` with every call (`rexecd --tokens-file`).
    pub token: Option<String>,
    /// Without `token`, send this user's local token (`crate::local_token`)
    /// to a loopback address: what a default rexecd requires.
    pub local_token: bool,
    /// PEM CA certificate(s) that signed the server's certificate; without
    /// it an https:// server must have a certificate the system trusts.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for servers that require mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host (e.g. connecting by IP to a certificate for a name).
    pub tls_server_name: Option<String>,
}

impl ClientOptions {
    /// Whether a TLS setting was given: an address without a scheme then means https.
    fn wants_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity_pem.is_some() || self.tls_server_name.is_some()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            token: None,
            local_token: true,
            ca_pem: None,
            identity_pem: None,
            tls_server_name: None,
        }
    }
}

// By hand, so that a token never lands in a log line through `{:?}`.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("local_token", &self.local_token)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("identity_pem", &self.identity_pem.is_some())
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

/// What went wrong, as one line (`Display`).
#[derive(Debug)]
pub enum Error {
    /// The connection could not be made.
    Connect { addr: String, reason: String },
    /// The server answered with a gRPC status.
    Status(tonic::Status),
    /// The server broke the protocol (e.g. no exit event).
    Protocol(String),
}

impl Error {
    /// The gRPC status code, when the server sent one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect { addr, reason } => write!(f, "cannot connect to {addr}: {reason}"),
            Error::Status(status) => match crate::tls_words::find(status, Side::Client) {
                Some(words) => write!(f, "TLS: {words}"),
                None => f.write_str(&describe_status(status)),
            },
            Error::Protocol(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

/// A command to run: a shell command line or an argv, and how to run it.
#[derive(Debug, Clone, Default)]
pub struct Command {
    request: proto::ExecRequest,
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

    /// The shell command line, or `None` for an argv command.
    pub fn shell_text(&self) -> Option<&str> {
        (!self.request.command.is_empty()).then_some(self.request.command.as_str())
    }

    /// Same options, another shell command line.
    pub fn with_shell(&self, text: impl Into<String>) -> Self {
        let mut request = self.request.clone();
        request.command = text.into();
        request.argv.clear();
        Command { request }
    }
}

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

/// One event of a running command: `Started`, chunks, then exactly one `Exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started { pid: u32, exec_id: String },
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitStatus),
}

/// The events of one exec or session. Dropping it cancels the command.
pub struct Events {
    stream: tonic::Streaming<proto::ExecResponse>,
    exited: bool,
}

impl Events {
    /// The next event; `None` after `Exit`. A stream that ends without an
    /// exit is an error, so a caller never mistakes a lost connection for success.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let Some(message) = self.stream.message().await? else {
                return if self.exited {
                    Ok(None)
                } else {
                    Err(Error::Protocol(
                        "connection closed before the command's exit status arrived".into(),
                    ))
                };
            };
            let event = match message.event {
                Some(exec_response::Event::Started(s)) => Event::Started {
                    pid: s.pid,
                    exec_id: s.exec_id,
                },
                Some(exec_response::Event::Stdout(bytes)) => Event::Stdout(bytes),
                Some(exec_response::Event::Stderr(bytes)) => Event::Stderr(bytes),
                Some(exec_response::Event::Exit(exit)) => {
                    self.exited = true;
                    // Read the stream to its end (the status trailers): a stream
                    // dropped unfinished is reset, and a connection that resets
                    // too many gets GOAWAY from the server's HTTP/2 stack.
                    while self.stream.message().await?.is_some() {}
                    Event::Exit(exit.into())
                }
                None => continue,
            };
            return Ok(Some(event));
        }
    }
}

/// Everything a command printed, and how it ended (see [`Client::output`]).
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// The writing half of a session: stdin, EOF, signals, window size.
#[derive(Clone)]
pub struct SessionInput {
    sender: mpsc::Sender<proto::SessionRequest>,
}

impl SessionInput {
    async fn send(&self, event: session_request::Event) -> Result<(), Error> {
        self.sender
            .send(proto::SessionRequest { event: Some(event) })
            .await
            .map_err(|_| Error::Protocol("session closed".into()))
    }

    /// Writes to the command's stdin; waits while the server is behind.
    pub async fn stdin(&self, bytes: impl Into<Bytes>) -> Result<(), Error> {
        self.send(session_request::Event::Stdin(bytes.into())).await
    }

    /// Closes the command's stdin; output keeps flowing until it exits.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.send(session_request::Event::StdinEof(true)).await
    }

    /// Sends a signal by name ("INT", "TERM" ...) to the command's process group.
    pub async fn signal(&self, name: impl Into<String>) -> Result<(), Error> {
        self.send(session_request::Event::Signal(name.into())).await
    }

    /// Tells the remote terminal its new size (tty sessions).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        self.send(session_request::Event::Resize(proto::TtySize {
            rows: rows.into(),
            cols: cols.into(),
        }))
        .await
    }
}

/// A connection to one rexecd; cheap to clone, clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: RemoteExecClient<Channel>,
    /// `Bearer TOKEN`, marked sensitive so it is never logged.
    authorization: Option<MetadataValue<Ascii>>,
    /// For TLS with a given CA: finds out why the server dropped a call.
    tls_probe: Option<std::sync::Arc<TlsProbe>>,
}

impl Client {
    /// Connects to `host[:port]`, `[::1]:port`, `http://host:port` or
    /// `https://host:port` (port 50051 when none is named). A TLS option in `options` makes a bare `host:port` https.
    pub async fn connect(addr: &str, options: &ClientOptions) -> Result<Client, Error> {
        // `host` alone means rexecd's port, as for fan-out hosts (not 80).
        let addr = &crate::address::with_default_port(addr.trim());
        let connect_error = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let mut uri = endpoint_uri(addr).map_err(connect_error)?;
        if options.wants_tls() && !addr.contains("://") {
            uri = uri.replacen("http://", "https://", 1);
        }
        let tls = uri.starts_with("https://");
        if options.wants_tls() && !tls {
            return Err(connect_error(
                "TLS options (CA, certificate, server name) need an https:// address".into(),
            ));
        }
        let token = match &options.token {
            Some(token) => Some(token.clone()),
            None if options.local_token => crate::local_token::for_address(addr),
            None => None,
        };
        let authorization = match &token {
            Some(token) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {}", token.trim()).parse().map_err(|_| {
                        connect_error("the token has characters a header cannot carry".into())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| connect_error(format!("invalid address: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .max_frame_size(MAX_FRAME_SIZE);
        if tls {
            endpoint = endpoint
                .tls_config(tls_config(options))
                .map_err(|e| connect_error(format!("TLS setup failed: {}", root_cause(&e))))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(root_cause(&e)))?;
        let tls_probe = match (&options.ca_pem, tls) {
            (Some(ca_pem), true) => {
                let authority = uri
                    .split_once("://")
                    .map_or(uri.as_str(), |(_, rest)| rest)
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(host, _)| host);
                let server_name = options.tls_server_name.clone().unwrap_or_else(|| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                });
                Some(std::sync::Arc::new(TlsProbe {
                    authority,
                    server_name,
                    ca_pem: ca_pem.clone(),
                    identity_pem: options.identity_pem.clone(),
                }))
            }
            _ => None,
        };
        Ok(Client {
            inner: RemoteExecClient::new(channel),
            authorization,
            tls_probe,
        })
    }

    /// A failed call; over TLS, a transport failure is looked into.
    async fn failed(&self, status: tonic::Status) -> Error {
        if let Some(probe) = &self.tls_probe
            && std::error::Error::source(&status).is_some()
            && let Some(words) = probe.run().await
        {
            return Error::Connect {
                addr: probe.authority.clone(),
                reason: format!("TLS: {words}"),
            };
        }
        Error::Status(status)
    }

    /// A request carrying the credentials, if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Starts a command; its stdin is `Command::stdin` or empty.
    pub async fn exec(&mut self, command: Command) -> Result<Events, Error> {
        let request = self.request(command.request);
        let stream = match self.inner.exec(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        Ok(Events {
            stream,
            exited: false,
        })
    }

    /// Runs a command to the end and collects its output, like
    /// `std::process::Command::output`.
    pub async fn output(&mut self, command: Command) -> Result<Output, Error> {
        let mut events = self.exec(command).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = events.next().await? {
            match event {
                Event::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                Event::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                Event::Exit(status) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                    });
                }
                Event::Started { .. } => {}
            }
        }
        Err(Error::Protocol("no exit status".into()))
    }

    /// Starts an interactive session: stdin streams through the returned
    /// `SessionInput`; dropping every input half-closes (EOF on stdin).
    pub async fn session(&mut self, command: Command) -> Result<(SessionInput, Events), Error> {
        let (sender, receiver) = mpsc::channel(SESSION_QUEUE);
        let start = proto::SessionRequest {
            event: Some(session_request::Event::Start(command.request)),
        };
        sender
            .send(start)
            .await
            .map_err(|_| Error::Protocol("session closed".into()))?;
        let request = self.request(ReceiverStream::new(receiver));
        let stream = match self.inner.session(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        Ok((
            SessionInput { sender },
            Events {
                stream,
                exited: false,
            },
        ))
    }
}

/// Accepts `host:port`, `[::1]:port`, `http://host:port` and `https://host:port`.
pub fn endpoint_uri(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("empty address: use host:port".into());
    }
    match addr.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(addr.to_string()),
        Some((scheme, _)) => Err(format!(
            "unsupported address scheme '{scheme}://': use host:port, http://host:port or https://host:port"
        )),
        None => Ok(format!("http://{addr}")),
    }
}

/// rustls settings: the given CA, else the system's roots; the client
/// identity for mTLS; the server name to check.
fn tls_config(options: &ClientOptions) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    config = match &options.ca_pem {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &options.identity_pem {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &options.tls_server_name {
        config = config.domain_name(name.clone());
    }
    config
}

/// The innermost error, as "connection refused" rather than a transport chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    if let Some(words) = crate::tls_words::find(error, Side::Client) {
        return format!("TLS: {words}");
    }
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    if let Some(io) = current.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        let text = match io.kind() {
            ConnectionRefused => "connection refused",
            TimedOut => "timed out",
            HostUnreachable => "host unreachable",
            NetworkUnreachable => "network unreachable",
            _ => return io.to_string(),
        };
        return text.to_string();
    }
    let text = current.to_string();
    if text.contains("timed out") {
        "timed out".into()
    } else {
        text
    }
}

/// A status as one line: "not found: program not found: foo".
pub fn describe_status(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut words = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    let message = status.message().trim();
    if message.is_empty() {
        words
    } else {
        format!("{words}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_http_addresses() {
        assert_eq!(
            endpoint_uri("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_uri("http://h:1").unwrap(), "http://h:1");
        assert_eq!(endpoint_uri("https://h:1").unwrap(), "https://h:1");
        assert_eq!(endpoint_uri("[::1]:7").unwrap(), "http://[::1]:7");
        assert!(endpoint_uri("ftp://h:1").is_err());
        assert!(endpoint_uri("").is_err());
    }

    #[test]
    fn statuses_read_as_one_line() {
        let status = tonic::Status::not_found("program not found: foo");
        assert_eq!(
            describe_status(&status),
            "not found: program not found: foo"
        );
        assert_eq!(
            describe_status(&tonic::Status::invalid_argument("")),
            "invalid argument"
        );
    }

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
