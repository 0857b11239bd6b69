//! A legacy answer: held until its command exits (the header carries the
//! sizes), charged to the memory budget while held, then written out as its
//! header and the output's chunks, many per writev.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rexec::legacy::{LegacyError, Response, ResponseHeader, encode_response_head};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use super::dialect::{self, Dialect, Framing};

use crate::memory::Reservation;
use crate::runner::types::{ExitReport, Termination};

/// An answer as it goes out: the header, then stdout's and stderr's chunks
/// as the runner read them, never copied into one buffer.
pub struct Answer {
    header: ResponseHeader,
    stdout: Vec<Bytes>,
    stderr: Vec<Bytes>,
    /// The budget the held output takes, given back once it is written.
    pub held: Option<Reservation>,
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
            held: None,
        }
    }
}

impl Answer {
    pub fn is_refusal(&self) -> bool {
        self.header.error.is_some()
    }

    /// The bytes of the answer in `framing`, the body's chunks stdout first.
    /// A refusal in a dialect without a header becomes the body's text.
    pub fn into_wire(self, framing: Framing) -> Result<Wire, LegacyError> {
        let (stdout, stderr) = match (&self.header.error, framing) {
            (Some(message), Framing::Compat(_)) => (vec![dialect::error_text(message)], vec![]),
            _ => (self.stdout, self.stderr),
        };
        let stdout_len: usize = stdout.iter().map(Bytes::len).sum();
        let stderr_len: usize = stderr.iter().map(Bytes::len).sum();
        let body = stdout.into_iter().chain(stderr);
        let mut head = BytesMut::new();
        match framing {
            Framing::Prefixed => {
                encode_response_head(self.header, stdout_len, stderr_len, &mut head)?;
            }
            Framing::Compat(Dialect::FixedHeader) => {
                head.extend_from_slice(&dialect::fixed_header(stdout_len + stderr_len));
            }
            Framing::Compat(Dialect::LengthReady) => {
                let length = dialect::ascii_length(stdout_len + stderr_len);
                return Ok(Wire {
                    first: VecDeque::from([length]),
                    after_ready: Some(coalesce(BytesMut::new(), body)),
                });
            }
            Framing::Compat(Dialect::Raw | Dialect::Udp) => {}
        }
        Ok(Wire {
            first: coalesce(head, body),
            after_ready: None,
        })
    }
}

/// An answer as it goes out.
pub struct Wire {
    /// Written first.
    pub first: VecDeque<Bytes>,
    /// `length-ready`: the body, written once the client has sent `recv_ready`.
    pub after_ready: Option<VecDeque<Bytes>>,
}

/// The head and the body's chunks, in one buffer when small (one write, one
/// packet), else as they are; empty chunks are left out.
fn coalesce(mut head: BytesMut, body: impl Iterator<Item = Bytes> + Clone) -> VecDeque<Bytes> {
    let body_len: usize = body.clone().map(|chunk| chunk.len()).sum();
    if head.len() + body_len <= SMALL_ANSWER {
        for chunk in body {
            head.extend_from_slice(&chunk);
        }
        return if head.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([head.freeze()])
        };
    }
    let mut segments = VecDeque::from([head.freeze()]);
    segments.extend(body.filter(|chunk| !chunk.is_empty()));
    segments.retain(|segment| !segment.is_empty());
    segments
}

/// Waits for the `length-ready` client's `recv_ready`, taking bytes already
/// read (`buffered`) first; what follows it stays in `buffered`. Anything
/// else, EOF, or no byte for `idle` is an error saying which.
pub async fn await_ready<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffered: &mut BytesMut,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    loop {
        let seen = buffered.len().min(dialect::READY.len());
        if buffered[..seen] != dialect::READY[..seen] {
            let got = String::from_utf8_lossy(&buffered[..seen]).into_owned();
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("expected recv_ready before the body, got {got:?}"),
            ));
        }
        if seen == dialect::READY.len() {
            buffered.advance(seen);
            return Ok(());
        }
        let read = reader.read_buf(buffered);
        let read = match idle {
            Some(idle) => tokio::time::timeout(idle, read)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
            None => read.await?,
        };
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Writes every segment in order, many per writev. A client that takes no
/// byte for `idle` is given up on (TimedOut); a slow but steady one is not.
pub async fn write_segments(
    writer: &mut OwnedWriteHalf,
    mut segments: VecDeque<Bytes>,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    while !segments.is_empty() {
        let mut written = {
            let slices: Vec<IoSlice<'_>> = segments
                .iter()
                .take(MAX_IOVECS)
                .map(|segment| IoSlice::new(segment))
                .collect();
            let write = writer.write_vectored(&slices);
            match idle {
                Some(idle) => tokio::time::timeout(idle, write)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
                None => write.await?,
            }
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

/// One command's output, held until its exit because the answer's header must
/// carry the sizes. Past the limit, or once the memory budget gives no more,
/// output is counted and dropped.
pub struct OutputBuffer {
    /// The runner's chunks, kept as they came.
    stdout: Vec<Bytes>,
    stderr: Vec<Bytes>,
    kept: usize,
    max_output_bytes: usize,
    discarded: usize,
    /// What the kept chunks take from the memory budget.
    held: Reservation,
    /// The budget refused more: nothing later is kept, so the answer has no hole.
    out_of_budget: bool,
}

impl OutputBuffer {
    pub fn new(max_output_bytes: usize, held: Reservation) -> Self {
        OutputBuffer {
            stdout: Vec::new(),
            stderr: Vec::new(),
            kept: 0,
            max_output_bytes,
            discarded: 0,
            held,
            out_of_budget: false,
        }
    }

    pub fn out_of_budget(&self) -> bool {
        self.out_of_budget
    }

    pub fn push_stdout(&mut self, chunk: Bytes) {
        if let Some(kept) = self.keep(chunk) {
            self.stdout.push(kept);
        }
    }

    pub fn push_stderr(&mut self, chunk: Bytes) {
        if let Some(kept) = self.keep(chunk) {
            self.stderr.push(kept);
        }
    }

    /// What of `chunk` fits under the limit; the rest is counted as discarded.
    fn keep(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        let mut room = self.max_output_bytes.saturating_sub(self.kept);
        if self.out_of_budget {
            room = 0;
        } else if room > 0 && !chunk.is_empty() {
            let wanted = chunk.len().min(room);
            room = self.held.grow_up_to(wanted).unwrap_or(0);
            self.out_of_budget = room < wanted;
        }
        if chunk.len() > room {
            self.discarded += chunk.len() - room;
            chunk.truncate(room);
        }
        self.kept += chunk.len();
        (!chunk.is_empty()).then_some(chunk)
    }

    /// Past the limit a command may finish on its own while it writes up to
    /// as much again (or 1 MiB); the runner stops it beyond that (its
    /// `ExecSpec::max_output`, so the stop is audited as `output_limit`).
    pub fn runner_limit(max_output_bytes: usize) -> u64 {
        let allowance = max_output_bytes.max(1024 * 1024);
        max_output_bytes.saturating_add(allowance) as u64
    }

    /// Only when the memory budget cut the answer short of the limit can more
    /// than the allowance be discarded before the runner's limit stops the
    /// command; then it is stopped here.
    pub fn over_discard_allowance(&self) -> bool {
        self.discarded > self.max_output_bytes.max(1024 * 1024)
    }

    pub fn answer(self, report: &ExitReport, exec_id: &str) -> Answer {
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
    pub fn stopped_answer(self, duration: Duration, exec_id: &str) -> Answer {
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

    /// Stdout then stderr in one buffer: a body with no header (a datagram).
    pub fn into_body(self) -> Bytes {
        let mut body = BytesMut::with_capacity(self.kept);
        for chunk in self.stdout.iter().chain(&self.stderr) {
            body.extend_from_slice(chunk);
        }
        body.freeze()
    }

    fn into_answer(self, mut header: ResponseHeader, exec_id: &str) -> Answer {
        header.truncated = Some(self.discarded > 0 || header.truncated == Some(true));
        header.exec_id = Some(exec_id.to_string());
        Answer {
            header,
            stdout: self.stdout,
            stderr: self.stderr,
            held: Some(self.held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBudget;
    use rexec::legacy::ResponseCodec;
    use tokio_util::codec::Encoder;

    #[test]
    fn output_past_the_budget_is_cut_and_given_back_once_written() {
        let budget = MemoryBudget::new(8);
        let mut output = OutputBuffer::new(100, budget.none());
        output.push_stdout(Bytes::from_static(b"12345"));
        output.push_stderr(Bytes::from_static(b"abcde"));
        output.push_stdout(Bytes::from_static(b"6"));
        assert!(output.out_of_budget());
        assert_eq!(output.stdout.concat(), b"12345", "nothing after the cut");
        assert_eq!(output.stderr.concat(), b"abc");
        assert_eq!(budget.in_use(), 8);
        let mut answer = output.stopped_answer(Duration::ZERO, "x");
        assert_eq!(answer.header.truncated, Some(true));
        drop(answer.held.take());
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn output_past_the_limit_is_cut_in_arrival_order() {
        let mut output = OutputBuffer::new(10, MemoryBudget::new(0).none());
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

    fn joined(segments: &VecDeque<Bytes>) -> Vec<u8> {
        segments.iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn out_err() -> Answer {
        Answer::from(Response {
            header: ResponseHeader::default(),
            stdout: Bytes::from_static(b"out\n"),
            stderr: Bytes::from_static(b"err\n"),
        })
    }

    #[test]
    fn each_dialect_frames_stdout_then_stderr_its_own_way() {
        let raw = out_err().into_wire(Framing::Compat(Dialect::Raw)).unwrap();
        assert_eq!(joined(&raw.first), b"out\nerr\n");
        assert!(raw.after_ready.is_none());

        let ready = out_err()
            .into_wire(Framing::Compat(Dialect::LengthReady))
            .unwrap();
        assert_eq!(joined(&ready.first), b"8");
        assert_eq!(joined(&ready.after_ready.unwrap()), b"out\nerr\n");

        let fixed = out_err()
            .into_wire(Framing::Compat(Dialect::FixedHeader))
            .unwrap();
        let fixed = joined(&fixed.first);
        assert_eq!(&fixed[..100], &dialect::fixed_header(8)[..]);
        assert_eq!(&fixed[100..], b"out\nerr\n");

        // Nothing at all for an empty body in raw; a refusal is the body's text.
        let empty = Answer::from(Response::default());
        assert!(
            empty
                .into_wire(Framing::Compat(Dialect::Raw))
                .unwrap()
                .first
                .is_empty()
        );
        let refusal = Answer::from(Response::error("busy"));
        let wire = refusal
            .into_wire(Framing::Compat(Dialect::FixedHeader))
            .unwrap();
        assert_eq!(&joined(&wire.first)[100..], b"rexecd: busy\n");
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
                held: None,
            }
            .into_wire(Framing::Prefixed)
            .unwrap()
            .first;
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
