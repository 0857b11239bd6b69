//! What a running command sends back (`Events`), and the input half of a session.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Error, ExitStatus};
use crate::proto::{self, exec_response, session_request};

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
    pub(super) stream: tonic::Streaming<proto::ExecResponse>,
    pub(super) exited: bool,
    /// The server's address, for an answer that turns out not to be gRPC.
    pub(super) addr: std::sync::Arc<str>,
}

impl Events {
    /// The next event; `None` after `Exit`. A stream that ends without an
    /// exit is an error, so a caller never mistakes a lost connection for success.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let message = self.stream.message().await.map_err(|status| {
                super::error::not_grpc(&self.addr, &status).unwrap_or(Error::Status(status))
            })?;
            let Some(message) = message else {
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
                    // too many gets GOAWAY from the server's HTTP/2 stack. The
                    // command has ended and its exit is known, so trailers that
                    // then fail (a lost connection, an error status) cannot undo it.
                    while let Ok(Some(_)) = self.stream.message().await {}
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
    pub(super) sender: mpsc::Sender<proto::SessionRequest>,
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
