//! One host's output on its way to the sink, per mode: whole lines sent as
//! they complete, held for `--group`, or kept for the `--json` record and
//! `--gather`.

use std::time::Duration;

use base64::Engine;
use encoding_rs::Decoder;
use rexec::client::ExitStatus;
use tokio::sync::mpsc;

use super::gather::Kept;
use super::lines::LineBuffer;
use super::sink::{Message, Parts, Stream};
use super::{Job, MAX_GROUP_HOLD, MAX_JSON_STREAM, Mode};
use crate::output::decode;

/// The sink is gone: nothing more can be shown.
pub struct SinkClosed;

/// One host's output on its way to the sink, per mode: whole lines sent as
/// they complete, held for `--group`, or kept for the `--json` record and
/// `--gather`.
pub struct Collector {
    host: usize,
    mode: Mode,
    /// `--gather`: the kept output goes to the sink at the end.
    gather: bool,
    decoders: Option<(Decoder, Decoder)>,
    lines: (LineBuffer, LineBuffer),
    /// `--group`: whole lines not yet sent, and their size.
    held: Parts,
    held_bytes: usize,
    /// `--json` and `--gather`: everything each stream printed, up to
    /// [`MAX_JSON_STREAM`] each.
    kept: Kept,
}

/// What is left to send once a host is done.
pub struct Finished {
    /// Held lines and partial lines (with a newline added).
    pub parts: Parts,
    /// The `--json` record.
    pub record: Option<String>,
    /// `--gather`: the host's whole output.
    pub kept: Option<Kept>,
}

impl Collector {
    pub fn new(host: usize, job: &Job) -> Collector {
        Collector {
            host,
            mode: job.mode,
            gather: job.gather,
            decoders: job.encoding.map(|e| (e.new_decoder(), e.new_decoder())),
            lines: Default::default(),
            held: Vec::new(),
            held_bytes: 0,
            kept: Kept::default(),
        }
    }

    pub async fn push(
        &mut self,
        stream: Stream,
        chunk: &[u8],
        sender: &mpsc::Sender<Message>,
    ) -> Result<(), SinkClosed> {
        let decoded;
        let chunk = match self.decoder(stream) {
            Some(decoder) => {
                decoded = decode(decoder, chunk, false);
                decoded.as_bytes()
            }
            None => chunk,
        };
        if self.keeps() {
            self.keep(stream, chunk);
            return Ok(());
        }
        let buffer = match stream {
            Stream::Stdout => &mut self.lines.0,
            Stream::Stderr => &mut self.lines.1,
        };
        let Some(lines) = buffer.push(chunk) else {
            return Ok(());
        };
        if self.mode == Mode::Lines {
            let message = Message::Lines {
                host: self.host,
                parts: vec![(stream, lines)],
            };
            return sender.send(message).await.map_err(|_| SinkClosed);
        }
        self.hold(stream, lines);
        if self.held_bytes > MAX_GROUP_HOLD {
            let message = Message::Lines {
                host: self.host,
                parts: std::mem::take(&mut self.held),
            };
            self.held_bytes = 0;
            return sender.send(message).await.map_err(|_| SinkClosed);
        }
        Ok(())
    }

    /// Whether output is kept whole rather than sent as lines.
    fn keeps(&self) -> bool {
        matches!(self.mode, Mode::Json { .. } | Mode::Gather)
    }

    fn keep(&mut self, stream: Stream, chunk: &[u8]) {
        let (kept, truncated) = match stream {
            Stream::Stdout => (&mut self.kept.stdout, &mut self.kept.stdout_truncated),
            Stream::Stderr => (&mut self.kept.stderr, &mut self.kept.stderr_truncated),
        };
        let room = MAX_JSON_STREAM.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        *truncated |= chunk.len() > room;
    }

    fn decoder(&mut self, stream: Stream) -> Option<&mut Decoder> {
        self.decoders.as_mut().map(|(out, err)| match stream {
            Stream::Stdout => out,
            Stream::Stderr => err,
        })
    }

    /// Appends lines, merging with the last part of the same stream.
    fn hold(&mut self, stream: Stream, lines: Vec<u8>) {
        self.held_bytes += lines.len();
        match self.held.last_mut() {
            Some((last, held)) if *last == stream => held.extend_from_slice(&lines),
            _ => self.held.push((stream, lines)),
        }
    }

    /// What is left to send once the host is done: held lines and partial
    /// lines (with a newline added), or the JSON record, and the kept output.
    pub fn finish(
        mut self,
        name: &str,
        status: Option<&ExitStatus>,
        error: Option<&str>,
        elapsed: Duration,
    ) -> Finished {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(decoder) = self.decoder(stream) {
                let rest = decode(decoder, &[], true).into_bytes();
                match self.keeps() {
                    true => self.keep(stream, &rest),
                    false => {
                        let buffer = match stream {
                            Stream::Stdout => &mut self.lines.0,
                            Stream::Stderr => &mut self.lines.1,
                        };
                        if let Some(lines) = buffer.push(&rest) {
                            self.hold(stream, lines);
                        }
                    }
                }
            }
        }
        let record = match self.mode {
            Mode::Json { base64 } => Some(json_record(JsonHost {
                name,
                status,
                error,
                elapsed,
                stdout: &self.kept.stdout,
                stderr: &self.kept.stderr,
                truncated: self.kept.stdout_truncated || self.kept.stderr_truncated,
                base64,
            })),
            _ => None,
        };
        if let Some(rest) = self.lines.0.finish() {
            self.hold(Stream::Stdout, rest);
        }
        if let Some(rest) = self.lines.1.finish() {
            self.hold(Stream::Stderr, rest);
        }
        Finished {
            parts: self.held,
            record,
            kept: self.gather.then_some(self.kept),
        }
    }
}

struct JsonHost<'a> {
    name: &'a str,
    status: Option<&'a ExitStatus>,
    error: Option<&'a str>,
    elapsed: Duration,
    stdout: &'a [u8],
    stderr: &'a [u8],
    truncated: bool,
    base64: bool,
}

/// One line of `--json`, fields in this order. `exit` is the remote code
/// (null when a signal killed the command or the host failed); `duration_ms`
/// is this host's wall time, connecting included.
#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    host: &'a str,
    exit: Option<i32>,
    signal: Option<&'a str>,
    timed_out: bool,
    stdout: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stdout_base64: bool,
    stderr: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stderr_base64: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    duration_ms: u64,
    /// CPU time of the host's exec, every process it ran (null if it failed).
    cpu_user_us: Option<u64>,
    cpu_system_us: Option<u64>,
    error: Option<&'a str>,
}

/// The `--json` record of a host that never started: `"error": "not run"`.
pub fn not_run_record(name: &str) -> String {
    json_record(JsonHost {
        name,
        status: None,
        error: Some(super::summary::NOT_RUN),
        elapsed: Duration::ZERO,
        stdout: &[],
        stderr: &[],
        truncated: false,
        base64: false,
    })
}

fn json_record(host: JsonHost<'_>) -> String {
    let (stdout, stdout_base64) = text_or_base64(host.stdout, host.base64);
    let (stderr, stderr_base64) = text_or_base64(host.stderr, host.base64);
    let record = JsonRecord {
        host: host.name,
        exit: host.status.and_then(|s| s.code),
        signal: host.status.and_then(|s| s.signal.as_deref()),
        timed_out: host.status.is_some_and(|s| s.timed_out),
        stdout,
        stdout_base64,
        stderr,
        stderr_base64,
        truncated: host.truncated,
        duration_ms: host.elapsed.as_millis() as u64,
        cpu_user_us: host.status.map(|s| s.cpu_user.as_micros() as u64),
        cpu_system_us: host.status.map(|s| s.cpu_system.as_micros() as u64),
        error: host.error,
    };
    serde_json::to_string(&record).unwrap_or_else(|e| {
        let error = format!("cannot encode JSON: {e}");
        serde_json::json!({ "host": host.name, "error": error }).to_string()
    })
}

/// The bytes as text; when they are not UTF-8, base64 if asked (and `true`),
/// else text with U+FFFD for each bad sequence.
pub fn text_or_base64(bytes: &[u8], base64: bool) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), false),
        Err(_) if base64 => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            true,
        ),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_base64_only_when_asked_and_needed() {
        assert_eq!(text_or_base64(b"hi\n", true), ("hi\n".into(), false));
        assert_eq!(text_or_base64(b"\xff\n", true), ("/wo=".into(), true));
        assert_eq!(
            text_or_base64(b"\xff\n", false),
            ("\u{fffd}\n".into(), false)
        );
    }
}
