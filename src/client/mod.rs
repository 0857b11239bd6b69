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

mod command;
mod error;
mod events;
mod options;
mod status;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

pub use command::Command;
pub use error::{Error, describe_io, describe_status};
pub use events::{Event, Events, Output, SessionInput};
pub use options::ClientOptions;
pub use status::ExitStatus;

use crate::proto::{
    self, files_client::FilesClient, remote_exec_client::RemoteExecClient, session_request,
};
use crate::tls_probe::TlsProbe;
use crate::wrong_port::{self, Tried};

/// HTTP/2 frame size the client advertises. The receiver's setting governs a
/// download, and 1 MiB frames cut per-frame work on big outputs.
const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Session messages queued before `SessionInput` calls wait (backpressure).
const SESSION_QUEUE: usize = 16;

/// A connection to one rexecd; cheap to clone, clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: RemoteExecClient<Channel>,
    /// The Files service, on the same connection.
    files: FilesClient<Channel>,
    /// `Bearer TOKEN`, marked sensitive so it is never logged.
    authorization: Option<MetadataValue<Ascii>>,
    /// For TLS with a given CA: finds out why the server dropped a call.
    tls_probe: Option<Arc<TlsProbe>>,
    /// The address as given (with its port), for messages.
    addr: Arc<str>,
    /// `host:port` dialed, for the wrong-port probe.
    authority: Arc<str>,
    tried: Tried,
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
        let mut uri = crate::address::endpoint_uri(addr).map_err(connect_error)?;
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
                .tls_config(options::tls_config(options))
                .map_err(|e| {
                    // Loading our own --cert is the only way this fails on a certificate.
                    let reason = crate::tls_words::find_own(&e, "--cert")
                        .unwrap_or_else(|| error::root_cause(&e));
                    connect_error(format!("TLS setup failed: {reason}"))
                })?;
        }
        let authority: Arc<str> = authority_of(&uri).into();
        let tried = if tls { Tried::GrpcTls } else { Tried::Grpc };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return Err(diagnose(addr, &authority, tried, &e).await),
        };
        let tls_probe = match (&options.ca_pem, tls) {
            (Some(ca_pem), true) => {
                let host = authority
                    .rsplit_once(':')
                    .map_or(&*authority, |(host, _)| host);
                let server_name = options.tls_server_name.clone().unwrap_or_else(|| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                });
                Some(Arc::new(TlsProbe {
                    authority: authority.to_string(),
                    server_name,
                    ca_pem: ca_pem.clone(),
                    identity_pem: options.identity_pem.clone(),
                }))
            }
            _ => None,
        };
        Ok(Client {
            inner: RemoteExecClient::new(channel.clone()),
            files: FilesClient::new(channel),
            authorization,
            tls_probe,
            addr: addr.as_str().into(),
            authority,
            tried,
        })
    }

    /// A failed call. A transport failure on the first call means the port
    /// did not speak what we spoke: ask the TLS handshake, then the port, why.
    async fn failed(&self, status: tonic::Status) -> Error {
        if let Some(error) = error::not_grpc(&self.addr, &status) {
            return error;
        }
        if std::error::Error::source(&status).is_none() {
            return Error::Status(status);
        }
        if let Some(probe) = &self.tls_probe
            && let Some(words) = probe.run().await
        {
            return Error::Connect {
                addr: self.addr.to_string(),
                reason: format!("TLS: {words}"),
            };
        }
        diagnose(&self.addr, &self.authority, self.tried, &status).await
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
            addr: self.addr.clone(),
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
                addr: self.addr.clone(),
            },
        ))
    }
}

/// File transfers (the `Files` service), on the same connection and credentials.
impl Client {
    /// Sends an upload: `messages` must start with `start`. Ends when the
    /// server has put everything in place, or with its status.
    pub async fn upload<S>(&mut self, messages: S) -> Result<proto::UploadResult, Error>
    where
        S: tokio_stream::Stream<Item = proto::UploadRequest> + Send + 'static,
    {
        let request = self.request(messages);
        match self.files.upload(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failed(status).await),
        }
    }

    /// Starts a download; its messages are read from the stream returned.
    pub async fn download(
        &mut self,
        request: proto::DownloadRequest,
    ) -> Result<tonic::Streaming<proto::DownloadResponse>, Error> {
        let request = self.request(request);
        match self.files.download(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failed(status).await),
        }
    }

    /// The address as given, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// `host:port` of an endpoint URI: what a probe connection dials.
fn authority_of(uri: &str) -> String {
    uri.split_once("://")
        .map_or(uri, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A connection failure in words: what the port turned out to be when a
/// probe can tell, else the innermost cause.
async fn diagnose(
    addr: &str,
    authority: &str,
    tried: Tried,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> Error {
    let advice = if error::reached_port(error) {
        wrong_port::probe(authority)
            .await
            .and_then(|kind| wrong_port::advice(authority, tried, kind))
    } else {
        None
    };
    Error::Connect {
        addr: addr.to_string(),
        reason: advice.unwrap_or_else(|| error::root_cause(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_answer_is_not_grpc() {
        let status = tonic::Status::unimplemented(
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        let words = error::not_grpc("h:1", &status).map(|e| e.to_string());
        let words = words.unwrap_or_default();
        assert!(
            words.contains("cannot connect to h:1: the port answered HTTP 404"),
            "{words}"
        );
        let other = tonic::Status::unimplemented("no such method");
        assert!(error::not_grpc("h:1", &other).is_none());
        assert_eq!(authority_of("https://[::1]:7/x"), "[::1]:7");
    }
}
