//! The legacy raw-TCP listener: the classic 4-byte-prefix protocol, served from
//! the same runner as gRPC. A `Listener` accepts; a `Handler` serves one
//! connection, one request after the other; an answer is held until its
//! command exits, then sent as its header and the output's chunks.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rexec::legacy::{
    LegacyError, Request, RequestCodec, Response, ResponseCodec, ResponseHeader,
    encode_response_head,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tokio_util::codec::{Encoder, FramedRead};

use crate::runner::Runner;
use crate::runner::types::{Caller, Event, ExecSpec, ExitReport, Program, StdinMode, Termination};
use crate::shutdown::Shutdown;

/// How long a request start that could still be a length prefix (fewer than 4
/// bytes, e.g. a one-byte command) waits for more bytes before it is taken as
/// text. Checked on two ticks, so the wait is between one and two of these.
const SHORT_COMMAND_GRACE: Duration = Duration::from_millis(50);
/// Read buffer: the classic server takes a text command from one read, so one
/// read must be able to hold the largest text command.
const READ_BUFFER_BYTES: usize = rexec::legacy::MAX_TEXT_COMMAND_BYTES;
/// How long a refused connection may take to read its error answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits of the legacy listener (rexecd's `--legacy-*` flags).
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Output held for one answer; past it the output is cut (`truncated`).
    pub max_output_bytes: usize,
    /// A connection that sends no request (or does not read its answer) for
    /// this long is closed; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// Connections served at once; more get an error answer and are closed.
    pub max_connections: usize,
}

pub struct Listener {
    listener: TcpListener,
    runner: Arc<Runner>,
    shutdown: Shutdown,
    config: Arc<LegacyConfig>,
    /// One permit per open connection, held by its handler.
    connections: Arc<Semaphore>,
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        runner: Arc<Runner>,
        shutdown: Shutdown,
        config: LegacyConfig,
    ) -> std::io::Result<Listener> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Listener {
            listener,
            runner,
            shutdown,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config: Arc::new(config),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until shutdown starts draining, then waits for open connections
    /// to finish their current request.
    pub async fn run(self) {
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.shutdown.draining() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!("legacy listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Without it the answer's segments can wait ~40 ms on a delayed ACK.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "legacy: cannot set TCP_NODELAY: {e}");
            }
            match self.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let handler = Handler::new(stream, peer, &self);
                    tokio::spawn(handler.run(permit));
                }
                Err(_) => {
                    tracing::warn!(%peer, limit = self.config.max_connections, "legacy: too many connections");
                    let message = format!(
                        "too many legacy connections (limit {}); try again later",
                        self.config.max_connections
                    );
                    tokio::spawn(refuse(stream, message));
                }
            }
        }
        drop(self.listener);
        let all = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX);
        let _ = self.connections.acquire_many(all).await;
    }
}

async fn refuse(mut stream: TcpStream, message: String) {
    let mut answer = BytesMut::new();
    if ResponseCodec::new()
        .encode(Response::error(message), &mut answer)
        .is_ok()
    {
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(&answer)).await;
    }
}

/// Serves one connection.
struct Handler {
    requests: FramedRead<OwnedReadHalf, RequestCodec>,
    /// Answers go out with TCP_NODELAY in as few writes as the kernel takes
    /// (writev of the header and the output's chunks), so no part waits for
    /// an ACK of the one before.
    writer: OwnedWriteHalf,
    peer: SocketAddr,
    runner: Arc<Runner>,
    shutdown: Shutdown,
    config: Arc<LegacyConfig>,
    /// A request that arrived while the previous one ran (a pipelining client).
    pending: Option<Result<Request, LegacyError>>,
}

impl Handler {
    fn new(stream: TcpStream, peer: SocketAddr, listener: &Listener) -> Handler {
        let (reader, writer) = stream.into_split();
        Handler {
            requests: FramedRead::with_capacity(reader, RequestCodec::new(), READ_BUFFER_BYTES),
            writer,
            peer,
            runner: listener.runner.clone(),
            shutdown: listener.shutdown.clone(),
            config: listener.config.clone(),
            pending: None,
        }
    }

    async fn run(mut self, _permit: OwnedSemaphorePermit) {
        tracing::debug!(peer = %self.peer, "legacy: connection open");
        loop {
            let next = match self.pending.take() {
                Some(next) => Some(next),
                None => self.next_request().await,
            };
            let request = match next {
                None => break,
                Some(Err(LegacyError::Io(e))) => {
                    tracing::debug!(peer = %self.peer, "legacy: read failed: {e}");
                    break;
                }
                Some(Err(LegacyError::BadMessage(message))) => {
                    tracing::info!(peer = %self.peer, "legacy: bad request: {message}");
                    self.answer(Response::error(message)).await;
                    break;
                }
                Some(Ok(request)) => request,
            };
            if self.shutdown.is_draining() {
                self.answer(Response::error("server is shutting down"))
                    .await;
                break;
            }
            let Some(response) = self.execute(request).await else {
                break;
            };
            let refused = response.header.error.is_some();
            // Once draining, a connection ends with the answer it was owed.
            if !self.answer(response).await || refused || self.shutdown.is_draining() {
                break;
            }
        }
        tracing::debug!(peer = %self.peer, "legacy: connection closed");
    }

    /// Waits for the next request; `None` on EOF, idle timeout or shutdown.
    async fn next_request(&mut self) -> Option<Result<Request, LegacyError>> {
        let idle = sleep_or_never(self.config.idle_timeout);
        tokio::pin!(idle);
        // Wait for a first byte here, where shutdown may end the wait:
        // nothing is lost between requests.
        if self.requests.read_buffer().is_empty() {
            tokio::select! {
                readable = self.requests.get_ref().readable() => {
                    if readable.is_err() {
                        return None;
                    }
                }
                () = &mut idle => {
                    tracing::debug!(peer = %self.peer, "legacy: idle connection closed");
                    return None;
                }
                () = self.shutdown.draining() => return None,
            }
        }
        let mut undecided_len = None;
        loop {
            tokio::select! {
                next = self.requests.next() => return next,
                () = &mut idle => {
                    tracing::debug!(peer = %self.peer, "legacy: idle connection closed");
                    return None;
                }
                () = tokio::time::sleep(SHORT_COMMAND_GRACE) => {
                    let buffer = self.requests.read_buffer();
                    if !self.requests.decoder().is_undecided(buffer) {
                        undecided_len = None;
                    } else if undecided_len == Some(buffer.len()) {
                        // No byte came to make it a length prefix: it is a short command.
                        let buffer = self.requests.read_buffer_mut();
                        return Some(RequestCodec::short_command(buffer));
                    } else {
                        undecided_len = Some(buffer.len());
                    }
                }
            }
        }
    }

    /// Runs one request to its exit, holding its output up to the limit; `None`
    /// when the client left (the exec is then cancelled).
    async fn execute(&mut self, request: Request) -> Option<Answer> {
        if request.command.trim().is_empty() {
            return Some(Answer::from(Response {
                header: ResponseHeader {
                    exit_code: Some(0),
                    timed_out: Some(false),
                    truncated: Some(false),
                    ..Default::default()
                },
                ..Default::default()
            }));
        }
        let spec = ExecSpec {
            program: Program::Shell(request.command),
            env: Vec::new(),
            cwd: None,
            stdin: request.stdin.map_or(StdinMode::Empty, StdinMode::Bytes),
            timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
            deadline: None,
            tty: None,
            holds_output: true,
            max_output: None,
        };
        let caller = Caller {
            peer: self.peer.to_string(),
            principal: "anonymous".into(),
            listener: "legacy",
        };
        let started = Instant::now();
        let mut execution = match self.runner.start(spec, caller).await {
            Ok(execution) => execution,
            Err(e) => return Some(Response::error(e.to_string()).into()),
        };
        let mut output = OutputBuffer::new(self.config.max_output_bytes);
        loop {
            tokio::select! {
                event = execution.events.recv() => match event {
                    Some(Event::Stdout(chunk)) => output.push_stdout(chunk),
                    Some(Event::Stderr(chunk)) => output.push_stderr(chunk),
                    Some(Event::Exit(report)) => {
                        return Some(output.answer(&report, &execution.exec_id));
                    }
                    None => {
                        return Some(Response::error("the command ended without an exit status").into());
                    }
                },
                // The client may send its next request early; an EOF here means it left.
                next = self.requests.next(), if self.pending.is_none() => match next {
                    None | Some(Err(LegacyError::Io(_))) => {
                        tracing::debug!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: client left; cancelling");
                        return None;
                    }
                    Some(next) => self.pending = Some(next),
                },
            }
            if output.over_discard_allowance() {
                // A command still writing long past the limit is stopped, like a
                // writer whose reader has gone: dropping the events kills its group.
                tracing::info!(peer = %self.peer, exec_id = %execution.exec_id, "legacy: output limit passed; stopping the command");
                let exec_id = execution.exec_id.clone();
                drop(execution);
                return Some(output.stopped_answer(started.elapsed(), &exec_id));
            }
        }
    }

    /// Sends one answer; false if the client cannot take it.
    async fn answer(&mut self, answer: impl Into<Answer>) -> bool {
        let segments = match answer.into().into_segments() {
            Ok(segments) => segments,
            Err(e) => {
                tracing::error!(peer = %self.peer, "legacy: cannot encode the answer: {e}");
                return false;
            }
        };
        let write = write_segments(&mut self.writer, segments);
        let written = match self.config.idle_timeout {
            // A client that stops reading its answer is idle too.
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "legacy: cannot send the answer: {e}");
                false
            }
        }
    }
}

/// An answer as it goes out: the header, then stdout's and stderr's chunks
/// as the runner read them, never copied into one buffer.
struct Answer {
    header: ResponseHeader,
    stdout: Vec<Bytes>,
    stderr: Vec<Bytes>,
}

/// Answers up to this size are copied into one buffer: one write, one packet.
const SMALL_ANSWER: usize = 64 * 1024;
/// Buffers per writev; Linux takes up to 1024.
const MAX_IOVECS: usize = 64;

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Answer {
            header: response.header,
            stdout: vec![response.stdout],
            stderr: vec![response.stderr],
        }
    }
}

impl Answer {
    /// The prefix and header, then the body's chunks, stdout first.
    fn into_segments(self) -> Result<VecDeque<Bytes>, LegacyError> {
        let stdout_len: usize = self.stdout.iter().map(Bytes::len).sum();
        let stderr_len: usize = self.stderr.iter().map(Bytes::len).sum();
        let mut head = BytesMut::new();
        encode_response_head(self.header, stdout_len, stderr_len, &mut head)?;
        let body = self.stdout.into_iter().chain(self.stderr);
        if head.len() + stdout_len + stderr_len <= SMALL_ANSWER {
            for chunk in body {
                head.extend_from_slice(&chunk);
            }
            return Ok(VecDeque::from([head.freeze()]));
        }
        let mut segments = VecDeque::from([head.freeze()]);
        segments.extend(body.filter(|chunk| !chunk.is_empty()));
        Ok(segments)
    }
}

/// Writes every segment in order, many per writev.
async fn write_segments(
    writer: &mut OwnedWriteHalf,
    mut segments: VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !segments.is_empty() {
        let mut written = {
            let slices: Vec<IoSlice<'_>> = segments
                .iter()
                .take(MAX_IOVECS)
                .map(|segment| IoSlice::new(segment))
                .collect();
            writer.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while let Some(front) = segments.front_mut() {
            if written < front.len() {
                front.advance(written);
                break;
            }
            written -= front.len();
            segments.pop_front();
        }
    }
    Ok(())
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// One command's output, held until its exit because the answer's header must
/// carry the sizes. Past the limit, output is counted and dropped.
struct OutputBuffer {
    /// The runner's chunks, kept as they came.
    stdout: Vec<Bytes>,
    stderr: Vec<Bytes>,
    kept: usize,
    max_output_bytes: usize,
    discarded: usize,
}

impl OutputBuffer {
    fn new(max_output_bytes: usize) -> Self {
        OutputBuffer {
            stdout: Vec::new(),
            stderr: Vec::new(),
            kept: 0,
            max_output_bytes,
            discarded: 0,
        }
    }

    fn push_stdout(&mut self, chunk: Bytes) {
        if let Some(kept) = self.keep(chunk) {
            self.stdout.push(kept);
        }
    }

    fn push_stderr(&mut self, chunk: Bytes) {
        if let Some(kept) = self.keep(chunk) {
            self.stderr.push(kept);
        }
    }

    /// What of `chunk` fits under the limit; the rest is counted as discarded.
    fn keep(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        let room = self.max_output_bytes.saturating_sub(self.kept);
        if chunk.len() > room {
            self.discarded += chunk.len() - room;
            chunk.truncate(room);
        }
        self.kept += chunk.len();
        (!chunk.is_empty()).then_some(chunk)
    }

    /// Past the limit the command may finish on its own while it writes up to
    /// as much again (or 1 MiB); beyond that it is stopped.
    fn over_discard_allowance(&self) -> bool {
        self.discarded > self.max_output_bytes.max(1024 * 1024)
    }

    fn answer(self, report: &ExitReport, exec_id: &str) -> Answer {
        let (exit_code, signal) = match report.termination {
            Termination::Code(code) => (Some(code), None),
            Termination::Signal(signal) => (None, Some(rexec::signals::name(signal))),
        };
        self.into_answer(
            ResponseHeader {
                exit_code,
                signal,
                timed_out: Some(report.timed_out()),
                duration_ms: Some(report.duration.as_millis() as u64),
                // The runner's --max-output may cut before our own cap does.
                truncated: Some(report.truncated),
                ..Default::default()
            },
            exec_id,
        )
    }

    /// The answer for a command stopped past the output limit: its group got
    /// SIGTERM, so that is what the header reports.
    fn stopped_answer(self, duration: Duration, exec_id: &str) -> Answer {
        self.into_answer(
            ResponseHeader {
                signal: Some(rexec::signals::name(libc::SIGTERM)),
                timed_out: Some(false),
                duration_ms: Some(duration.as_millis() as u64),
                ..Default::default()
            },
            exec_id,
        )
    }

    fn into_answer(self, mut header: ResponseHeader, exec_id: &str) -> Answer {
        header.truncated = Some(self.discarded > 0 || header.truncated == Some(true));
        header.exec_id = Some(exec_id.to_string());
        Answer {
            header,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Parses a byte count for flags: `65536`, `64KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`...).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size '{text}': expected e.g. 1048576, 64KiB, 64MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit '{other}' in '{text}': use KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999999G").is_err());
    }

    #[test]
    fn output_past_the_limit_is_cut_in_arrival_order() {
        let mut output = OutputBuffer::new(10);
        output.push_stdout(Bytes::from_static(b"123456"));
        output.push_stderr(Bytes::from_static(b"abcdef"));
        output.push_stdout(Bytes::from_static(b"789"));
        assert_eq!(output.stdout.concat(), b"123456");
        assert_eq!(output.stderr.concat(), b"abcd");
        assert_eq!(output.discarded, 5);
        assert!(!output.over_discard_allowance());
        let response = output.stopped_answer(Duration::ZERO, "x");
        assert_eq!(response.header.truncated, Some(true));
        assert_eq!(response.header.signal.as_deref(), Some("TERM"));
    }

    /// The segments, joined, are exactly what the codec writes for the same answer.
    #[test]
    fn segments_carry_the_codec_encoding() {
        for size in [0, 10, SMALL_ANSWER, 3 * SMALL_ANSWER + 7] {
            let stdout: Vec<Bytes> = (0..size)
                .step_by(1000)
                .map(|start| Bytes::from(vec![b'o'; 1000.min(size - start)]))
                .collect();
            let stderr = vec![Bytes::from_static(b"warning"), Bytes::new()];
            let header = ResponseHeader {
                exit_code: Some(3),
                ..Default::default()
            };
            let mut expected = BytesMut::new();
            ResponseCodec::new()
                .encode(
                    Response {
                        header: header.clone(),
                        stdout: stdout.concat().into(),
                        stderr: stderr.concat().into(),
                    },
                    &mut expected,
                )
                .unwrap();
            let segments = Answer {
                header,
                stdout,
                stderr,
            }
            .into_segments()
            .unwrap();
            assert_eq!(
                segments.len() == 1,
                expected.len() <= SMALL_ANSWER,
                "size {size}"
            );
            let joined: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(joined, &expected[..], "size {size}");
        }
    }
}
