//! The legacy wire protocol of the classic socket exercise, spoken by
//! `rexecd --legacy-listen` and `rexec --legacy` (docs/ARCHITECTURE.md, "The contract": legacy listener).
//!
//! Response: `[i32 LE header length][JSON header][data_size bytes: stdout, then stderr]`.
//! Request, told apart per request: unframed (raw command text, what one read
//! returned) or framed (the same prefix, a JSON header `{"cmd", "stdin_size",
//! "timeout_ms"}`, then `stdin_size` bytes of stdin). Text that is HTTP
//! (`http`) is never a command.

pub mod http;

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// Largest header, request or response. Keeping it under 8 KiB is what makes a
/// framed request recognisable: its second byte is below 0x20, its third and
/// fourth are 0, and no text command starts like that.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest unframed command: what the classic server takes from one read.
pub const MAX_TEXT_COMMAND_BYTES: usize = 64 * 1024;
/// Text shorter than this is a command as one read returned it, as the
/// classic server takes it. Longer text waits for a pause in the bytes (the
/// caller's short-command grace), so a long command cut into TCP segments
/// runs whole, and one over `MAX_TEXT_COMMAND_BYTES` is refused whole.
pub const LONG_TEXT_BYTES: usize = 1024;
/// Framed stdin grows the read buffer by at most this much at a time: what a
/// header declares is not allocated before the bytes arrive.
const STDIN_GROWTH_BYTES: usize = 64 * 1024;
/// Largest stdin of a framed request; the same bound as a gRPC request.
pub const MAX_STDIN_BYTES: usize = 64 * 1024 * 1024;
/// Longest error text put in a response header, so it stays far below the cap.
const MAX_ERROR_TEXT: usize = 1024;
const PREFIX_BYTES: usize = 4;

/// One command to run, from either request form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Shell command text; empty means "answer with `data_size` 0".
    pub command: String,
    /// Fed to the command's stdin; `None` gives an empty stdin.
    pub stdin: Option<Bytes>,
    /// 0 means the server default.
    pub timeout_ms: u64,
}

/// The JSON header of a framed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestHeader {
    cmd: String,
    #[serde(default)]
    stdin_size: u64,
    #[serde(default)]
    timeout_ms: u64,
}

/// The JSON header of a response. Old clients read `data_size` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// Body length: `stdout_size + stderr_size`. Set by the encoder from the body.
    pub data_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wire name of the signal that ended the command ("TERM", "KILL").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// The output went past the server's limit and was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// Set on a refused request; the server closes the connection after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One answer: header and the two streams, which travel as one body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub header: ResponseHeader,
    pub stdout: Bytes,
    pub stderr: Bytes,
}

impl Response {
    /// The answer to a refused request: `{"error": "...", "data_size": 0}`.
    pub fn error(message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Response {
            header: ResponseHeader {
                error: Some(message),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Why a request or response could not be decoded.
#[derive(Debug)]
pub enum LegacyError {
    /// The peer sent something that is not the protocol; answer and close.
    BadMessage(String),
    /// The peer spoke HTTP (a browser sent it here, or a misdirected HTTP
    /// client): run nothing and close without an answer.
    Http(&'static str),
    Io(std::io::Error),
}

impl fmt::Display for LegacyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LegacyError::BadMessage(m) => f.write_str(m),
            LegacyError::Http(why) => write!(f, "not the legacy protocol: the request {why}"),
            LegacyError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LegacyError {}

impl From<std::io::Error> for LegacyError {
    fn from(e: std::io::Error) -> Self {
        LegacyError::Io(e)
    }
}

fn bad(message: impl Into<String>) -> LegacyError {
    LegacyError::BadMessage(message.into())
}

/// What the first bytes of a request say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestForm {
    /// A length prefix under the header cap: a framed request of this header length.
    Framed(usize),
    /// Raw command text (or garbage, which decoding rejects).
    Text,
    /// Fewer than 4 bytes that could still begin a prefix, e.g. a one-byte command.
    Undecided,
}

/// The detection rule: a framed request's second byte is below 0x20 and its
/// third and fourth bytes are 0; text never has a NUL, so any byte that breaks
/// the pattern decides "text" as soon as it is seen.
pub fn request_form(bytes: &[u8]) -> RequestForm {
    if bytes.get(1).is_some_and(|&b| b >= 0x20)
        || bytes.get(2).is_some_and(|&b| b != 0)
        || bytes.get(3).is_some_and(|&b| b != 0)
    {
        return RequestForm::Text;
    }
    match bytes {
        [low, high, 0, 0, ..] => RequestForm::Framed(usize::from(*low) | usize::from(*high) << 8),
        _ => RequestForm::Undecided,
    }
}

/// Requests, both forms (server decodes; `rexec --legacy` encodes, always framed).
#[derive(Debug, Default)]
pub struct RequestCodec {
    /// A framed header already read, waiting for its stdin.
    awaiting_stdin: Option<(RequestHeader, usize)>,
}

impl RequestCodec {
    pub fn new() -> Self {
        RequestCodec::default()
    }

    /// Whether the buffer holds the start of a request that later bytes must
    /// decide: under 4 bytes that could begin a length prefix, the start of
    /// an HTTP request line, or long text that may go on. A caller that sees
    /// no more bytes come takes it with [`RequestCodec::short_command`].
    pub fn is_undecided(&self, buf: &BytesMut) -> bool {
        self.awaiting_stdin.is_none()
            && !buf.is_empty()
            && match request_form(buf) {
                RequestForm::Undecided => true,
                RequestForm::Framed(_) => false,
                RequestForm::Text => text_may_continue(buf),
            }
    }

    /// A framed header has been read and its stdin is still arriving.
    pub fn reading_stdin(&self) -> bool {
        self.awaiting_stdin.is_some()
    }

    /// Takes everything buffered as one unframed command. Text that is still
    /// the start of an HTTP request line is refused, never run.
    pub fn short_command(buf: &mut BytesMut) -> Result<Request, LegacyError> {
        if http::probe(buf) == http::HttpProbe::Prefix {
            buf.clear();
            return Err(bad(
                "an unframed command that could be the start of an HTTP request \
                 is not run; send it framed",
            ));
        }
        text_request(buf.split())
    }

    fn decode_stdin(&mut self, buf: &mut BytesMut) -> Option<Request> {
        let (_, stdin_size) = self.awaiting_stdin.as_ref()?;
        if buf.len() < *stdin_size {
            buf.reserve((*stdin_size - buf.len()).min(STDIN_GROWTH_BYTES));
            return None;
        }
        let (header, stdin_size) = self.awaiting_stdin.take()?;
        let stdin = buf.split_to(stdin_size).freeze();
        Some(Request {
            command: header.cmd,
            stdin: (!stdin.is_empty()).then_some(stdin),
            timeout_ms: header.timeout_ms,
        })
    }
}

impl Decoder for RequestCodec {
    type Item = Request;
    type Error = LegacyError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, LegacyError> {
        if self.awaiting_stdin.is_some() {
            return Ok(self.decode_stdin(buf));
        }
        match request_form(buf) {
            RequestForm::Undecided => Ok(None),
            RequestForm::Text => {
                if let http::HttpProbe::Http(why) = http::probe(buf) {
                    buf.clear();
                    return Err(LegacyError::Http(why));
                }
                if buf.len() > MAX_TEXT_COMMAND_BYTES || !text_may_continue(buf) {
                    text_request(buf.split()).map(Some)
                } else {
                    Ok(None)
                }
            }
            RequestForm::Framed(header_len) => {
                let frame_len = PREFIX_BYTES + header_len;
                if buf.len() < frame_len {
                    buf.reserve(frame_len - buf.len());
                    return Ok(None);
                }
                buf.advance(PREFIX_BYTES);
                let header_bytes = buf.split_to(header_len);
                let header: RequestHeader = serde_json::from_slice(&header_bytes)
                    .map_err(|e| bad(format!("request header is not valid JSON: {e}")))?;
                let stdin_size = usize::try_from(header.stdin_size)
                    .ok()
                    .filter(|&n| n <= MAX_STDIN_BYTES)
                    .ok_or_else(|| {
                        bad(format!(
                            "stdin_size {} is over the {MAX_STDIN_BYTES}-byte limit",
                            header.stdin_size
                        ))
                    })?;
                self.awaiting_stdin = Some((header, stdin_size));
                Ok(self.decode_stdin(buf))
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, LegacyError> {
        if let Some(request) = self.decode(buf)? {
            return Ok(Some(request));
        }
        if buf.is_empty() && self.awaiting_stdin.is_none() {
            return Ok(None);
        }
        if self.is_undecided(buf) {
            return RequestCodec::short_command(buf).map(Some);
        }
        buf.clear();
        self.awaiting_stdin = None;
        Err(bad("connection closed in the middle of a framed request"))
    }
}

/// Text whose end later bytes may still change: an HTTP request line cut
/// short, or long text (`LONG_TEXT_BYTES`) not yet over the cap.
fn text_may_continue(buf: &[u8]) -> bool {
    http::probe(buf) == http::HttpProbe::Prefix
        || (LONG_TEXT_BYTES..=MAX_TEXT_COMMAND_BYTES).contains(&buf.len())
}

/// One unframed command: UTF-8 text without NUL, trailing CR/LF trimmed.
fn text_request(bytes: BytesMut) -> Result<Request, LegacyError> {
    if bytes.len() > MAX_TEXT_COMMAND_BYTES {
        return Err(bad(format!(
            "unframed command is over {MAX_TEXT_COMMAND_BYTES} bytes; send long commands framed"
        )));
    }
    let problem = if bytes.contains(&0) {
        Some("contains a NUL byte")
    } else if std::str::from_utf8(&bytes).is_err() {
        Some("is not valid UTF-8")
    } else {
        None
    };
    if let Some(problem) = problem {
        // Most likely a framed request with a bad length: say both readings.
        return Err(match bytes.first_chunk::<PREFIX_BYTES>() {
            Some(prefix) => {
                let header_len = i32::from_le_bytes(*prefix);
                let why = if header_len < 0 {
                    "negative"
                } else {
                    "not under the 8192-byte cap"
                };
                bad(format!(
                    "bad request: as a framed request its header length {header_len} is {why}, \
                     and as a text command it {problem}"
                ))
            }
            None => bad(format!("bad request: command {problem}")),
        });
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(Request {
        command: text.trim_end_matches(['\r', '\n']).to_string(),
        stdin: None,
        timeout_ms: 0,
    })
}

impl Encoder<Request> for RequestCodec {
    type Error = LegacyError;

    fn encode(&mut self, request: Request, dst: &mut BytesMut) -> Result<(), LegacyError> {
        let stdin = request.stdin.unwrap_or_default();
        let header = serde_json::to_vec(&RequestHeader {
            cmd: request.command,
            stdin_size: stdin.len() as u64,
            timeout_ms: request.timeout_ms,
        })
        .map_err(|e| bad(format!("cannot encode request header: {e}")))?;
        if header.len() >= MAX_HEADER_BYTES {
            return Err(bad(format!(
                "command too long: the request header must stay under {MAX_HEADER_BYTES} bytes"
            )));
        }
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(bad(format!(
                "stdin is over the {MAX_STDIN_BYTES}-byte limit of the legacy protocol"
            )));
        }
        dst.reserve(PREFIX_BYTES + header.len() + stdin.len());
        dst.put_i32_le(header.len() as i32);
        dst.extend_from_slice(&header);
        dst.extend_from_slice(&stdin);
        Ok(())
    }
}

/// Responses (server encodes in one buffer, so one write; `rexec --legacy` decodes).
#[derive(Debug, Default)]
pub struct ResponseCodec {
    /// A header already read, waiting for its body.
    awaiting_body: Option<(ResponseHeader, usize)>,
}

impl ResponseCodec {
    pub fn new() -> Self {
        ResponseCodec::default()
    }
}

impl Encoder<Response> for ResponseCodec {
    type Error = LegacyError;

    fn encode(&mut self, response: Response, dst: &mut BytesMut) -> Result<(), LegacyError> {
        let Response {
            header,
            stdout,
            stderr,
        } = response;
        dst.reserve(stdout.len() + stderr.len());
        encode_response_head(header, stdout.len(), stderr.len(), dst)?;
        dst.extend_from_slice(&stdout);
        dst.extend_from_slice(&stderr);
        Ok(())
    }
}

/// Writes an answer's length prefix and JSON header for a body of
/// `stdout_len + stderr_len` bytes, which the caller sends right after, stdout
/// first. For a server that sends a large body from its chunks as they are.
pub fn encode_response_head(
    mut header: ResponseHeader,
    stdout_len: usize,
    stderr_len: usize,
    dst: &mut BytesMut,
) -> Result<(), LegacyError> {
    // The sizes come from the body itself: a wrong data_size is the sticky packet.
    header.data_size = (stdout_len + stderr_len) as u64;
    if header.error.is_none() {
        header.stdout_size = Some(stdout_len as u64);
        header.stderr_size = Some(stderr_len as u64);
    }
    let json = serde_json::to_vec(&header)
        .map_err(|e| bad(format!("cannot encode response header: {e}")))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(bad("response header over the 8 KiB cap"));
    }
    dst.reserve(PREFIX_BYTES + json.len());
    dst.put_i32_le(json.len() as i32);
    dst.extend_from_slice(&json);
    Ok(())
}

impl Decoder for ResponseCodec {
    type Item = Response;
    type Error = LegacyError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, LegacyError> {
        if self.awaiting_body.is_none() {
            let Some(prefix) = buf.first_chunk::<PREFIX_BYTES>() else {
                return Ok(None);
            };
            let header_len = i32::from_le_bytes(*prefix);
            let header_len = usize::try_from(header_len)
                .ok()
                .filter(|&n| n <= MAX_HEADER_BYTES)
                .ok_or_else(|| bad(format!("response header length {header_len} is invalid")))?;
            if buf.len() < PREFIX_BYTES + header_len {
                buf.reserve(PREFIX_BYTES + header_len - buf.len());
                return Ok(None);
            }
            buf.advance(PREFIX_BYTES);
            let json = buf.split_to(header_len);
            let header: ResponseHeader = serde_json::from_slice(&json)
                .map_err(|e| bad(format!("response header is not valid JSON: {e}")))?;
            let data_size = usize::try_from(header.data_size)
                .map_err(|_| bad(format!("data_size {} is too large", header.data_size)))?;
            self.awaiting_body = Some((header, data_size));
        }
        let Some((_, data_size)) = &self.awaiting_body else {
            return Ok(None);
        };
        if buf.len() < *data_size {
            // Grow in steps: data_size comes from the peer.
            buf.reserve((*data_size - buf.len()).min(1 << 20));
            return Ok(None);
        }
        let Some((header, data_size)) = self.awaiting_body.take() else {
            return Ok(None);
        };
        let mut body = buf.split_to(data_size).freeze();
        // A server that does not split the body (the classic one) sent it all as stdout.
        let stdout_size = match (header.stdout_size, header.stderr_size) {
            (Some(out), Some(err)) if out.checked_add(err) == Some(header.data_size) => out,
            (None, None) => header.data_size,
            _ => {
                return Err(bad(format!(
                    "response sizes do not add up: stdout_size {:?} + stderr_size {:?} != data_size {}",
                    header.stdout_size, header.stderr_size, header.data_size
                )));
            }
        };
        let stdout = body.split_to(stdout_size as usize);
        Ok(Some(Response {
            header,
            stdout,
            stderr: body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(cmd: &str, stdin: &[u8], timeout_ms: u64) -> BytesMut {
        let mut buf = BytesMut::new();
        RequestCodec::new()
            .encode(
                Request {
                    command: cmd.to_string(),
                    stdin: (!stdin.is_empty()).then(|| Bytes::copy_from_slice(stdin)),
                    timeout_ms,
                },
                &mut buf,
            )
            .expect("encode");
        buf
    }

    fn decode_all(codec: &mut RequestCodec, bytes: &[u8]) -> Result<Vec<Request>, String> {
        let mut buf = BytesMut::from(bytes);
        let mut requests = Vec::new();
        while let Some(request) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn error_of(bytes: &[u8]) -> String {
        let mut buf = BytesMut::from(bytes);
        let mut codec = RequestCodec::new();
        match codec.decode(&mut buf) {
            Err(LegacyError::BadMessage(m)) => m,
            other => match codec.decode_eof(&mut buf) {
                Err(LegacyError::BadMessage(m)) => m,
                eof => panic!("expected a bad request, got {other:?} then {eof:?}"),
            },
        }
    }

    #[test]
    fn text_command_is_one_request_with_line_end_trimmed() {
        let mut codec = RequestCodec::new();
        let requests = decode_all(&mut codec, b"ls -l /tmp\r\n").unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].command, "ls -l /tmp");
        assert_eq!(requests[0].stdin, None);
    }

    #[test]
    fn two_byte_command_decodes_at_once() {
        let mut codec = RequestCodec::new();
        assert_eq!(decode_all(&mut codec, b"df").unwrap()[0].command, "df");
    }

    #[test]
    fn one_byte_command_waits_then_is_taken_as_text() {
        let mut codec = RequestCodec::new();
        let mut buf = BytesMut::from(&b":"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.is_undecided(&buf));
        let request = RequestCodec::short_command(&mut buf).unwrap();
        assert_eq!(request.command, ":");
        assert!(buf.is_empty());
    }

    #[test]
    fn framed_request_carries_stdin_and_timeout() {
        let bytes = framed("tr a-z A-Z", b"hello\0world", 1500);
        assert_eq!(bytes[2..4], [0, 0]);
        let requests = decode_all(&mut RequestCodec::new(), &bytes).unwrap();
        assert_eq!(
            requests,
            vec![Request {
                command: "tr a-z A-Z".into(),
                stdin: Some(Bytes::from_static(b"hello\0world")),
                timeout_ms: 1500,
            }]
        );
    }

    #[test]
    fn framed_requests_back_to_back_stay_apart() {
        let mut bytes = framed("echo one", b"", 0);
        bytes.extend_from_slice(&framed("echo two", b"2", 0));
        let requests = decode_all(&mut RequestCodec::new(), &bytes).unwrap();
        let commands: Vec<_> = requests.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(commands, ["echo one", "echo two"]);
    }

    #[test]
    fn negative_header_length_is_refused() {
        let message = error_of(&(-1i32).to_le_bytes());
        assert!(
            message.contains("header length -1 is negative"),
            "{message}"
        );
    }

    #[test]
    fn header_length_over_the_cap_is_refused() {
        let mut bytes = 9000i32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let message = error_of(&bytes);
        assert!(
            message.contains("9000 is not under the 8192-byte cap"),
            "{message}"
        );
    }

    #[test]
    fn two_gib_header_length_is_refused() {
        for prefix in [i32::MAX.to_le_bytes(), 0x8000_0000u32.to_le_bytes()] {
            let message = error_of(&prefix);
            assert!(message.contains("header length"), "{message}");
        }
    }

    #[test]
    fn header_that_is_not_json_is_refused() {
        let mut bytes = 5i32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        assert!(error_of(&bytes).contains("not valid JSON"));
        let mut bytes = 7i32.to_le_bytes().to_vec();
        bytes.extend_from_slice(br#"{"x":1}"#);
        assert!(error_of(&bytes).contains("not valid JSON"), "missing cmd");
        assert!(error_of(&0i32.to_le_bytes()).contains("not valid JSON"));
    }

    #[test]
    fn command_that_is_not_utf8_is_refused() {
        let message = error_of(b"ls \xff\xfe");
        assert!(message.contains("not valid UTF-8"), "{message}");
        let header = b"{\"cmd\": \"ls \xff\"}";
        let mut bytes = (header.len() as i32).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        assert!(error_of(&bytes).contains("not valid JSON"));
    }

    #[test]
    fn stdin_over_the_limit_is_refused_before_it_is_read() {
        let header = format!(r#"{{"cmd":"cat","stdin_size":{}}}"#, u64::MAX);
        let mut bytes = (header.len() as i32).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        assert!(error_of(&bytes).contains("stdin_size"));
    }

    #[test]
    fn truncated_framed_request_is_an_error_at_eof() {
        let bytes = framed("cat", b"0123456789", 0);
        for cut in 4..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut codec = RequestCodec::new();
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert!(codec.decode_eof(&mut buf).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_text_command_is_refused() {
        let message = error_of(&vec![b'x'; MAX_TEXT_COMMAND_BYTES + 1]);
        assert!(message.contains("send long commands framed"));
    }

    #[test]
    fn http_request_is_refused_even_when_split_across_reads() {
        let mut codec = RequestCodec::new();
        let mut buf = BytesMut::from(&b"GE"[..]);
        assert!(
            codec.decode(&mut buf).unwrap().is_none(),
            "a method prefix waits"
        );
        assert!(codec.is_undecided(&buf));
        buf.extend_from_slice(b"T /$(touch$IFS/tmp/x) HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(codec.decode(&mut buf), Err(LegacyError::Http(_))));

        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\n\r\nid"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LegacyError::Http(_))));
        let mut buf = BytesMut::from(&b"echo hi\r\nHost: x\r\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LegacyError::Http(_))));
    }

    #[test]
    fn method_prefix_that_stays_alone_is_refused_not_run() {
        let mut buf = BytesMut::from(&b"PO"[..]);
        let mut codec = RequestCodec::new();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            RequestCodec::short_command(&mut buf),
            Err(LegacyError::BadMessage(_))
        ));
        let mut buf = BytesMut::from(&b"G"[..]);
        assert!(matches!(
            RequestCodec::new().decode_eof(&mut buf),
            Err(LegacyError::BadMessage(_))
        ));
    }

    #[test]
    fn long_text_waits_for_a_pause_and_runs_whole() {
        let command = format!("echo {}", "x".repeat(3000));
        let mut codec = RequestCodec::new();
        let mut buf = BytesMut::from(&command.as_bytes()[..1500]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&command.as_bytes()[1500..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.is_undecided(&buf));
        assert_eq!(
            RequestCodec::short_command(&mut buf).unwrap().command,
            command
        );
    }

    #[test]
    fn text_over_the_cap_in_pieces_is_refused_whole() {
        let mut codec = RequestCodec::new();
        let mut buf = BytesMut::from(&vec![b'x'; MAX_TEXT_COMMAND_BYTES][..]);
        assert!(
            codec.decode(&mut buf).unwrap().is_none(),
            "exactly the cap may go on"
        );
        buf.extend_from_slice(&[b'y'; 70_010 - MAX_TEXT_COMMAND_BYTES]);
        let message = match codec.decode(&mut buf) {
            Err(LegacyError::BadMessage(message)) => message,
            other => panic!("expected the too-long error, got {other:?}"),
        };
        assert!(message.contains("send long commands framed"), "{message}");
    }

    #[test]
    fn framed_stdin_is_not_allocated_before_it_arrives() {
        let header = br#"{"cmd":"cat","stdin_size":67108864}"#;
        let mut buf = BytesMut::new();
        buf.put_i32_le(header.len() as i32);
        buf.extend_from_slice(header);
        let mut codec = RequestCodec::new();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.reading_stdin());
        assert!(
            buf.capacity() < 1 << 20,
            "reserved {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn response_round_trips_with_streams_split() {
        let mut codec = ResponseCodec::new();
        let mut buf = BytesMut::new();
        let response = Response {
            header: ResponseHeader {
                exit_code: Some(2),
                truncated: Some(false),
                ..Default::default()
            },
            stdout: Bytes::from_static(b"out\n"),
            stderr: Bytes::from_static(b"err\n"),
        };
        codec.encode(response, &mut buf).unwrap();
        let header_len = i32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&buf[4..4 + header_len]).unwrap();
        assert_eq!(header["data_size"], 8);
        assert_eq!(header["stdout_size"], 4);
        assert_eq!(header["exit_code"], 2);
        assert_eq!(&buf[4 + header_len..], b"out\nerr\n");

        let decoded = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded.stdout, "out\n");
        assert_eq!(decoded.stderr, "err\n");
        assert_eq!(decoded.header.exit_code, Some(2));
        assert!(buf.is_empty());
    }

    #[test]
    fn error_response_is_error_and_zero_data_size_only() {
        let mut buf = BytesMut::new();
        ResponseCodec::new()
            .encode(Response::error("nope"), &mut buf)
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(header, serde_json::json!({"error": "nope", "data_size": 0}));
    }

    #[test]
    fn classic_response_without_sizes_is_all_stdout() {
        let json = br#"{"data_size": 3}"#;
        let mut buf = BytesMut::new();
        buf.put_i32_le(json.len() as i32);
        buf.extend_from_slice(json);
        buf.extend_from_slice(b"abc");
        let response = ResponseCodec::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(response.stdout, "abc");
        assert!(response.stderr.is_empty());
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        for bytes in [
            (-5i32).to_le_bytes().to_vec(),
            (MAX_HEADER_BYTES as i32 + 1).to_le_bytes().to_vec(),
            [&2i32.to_le_bytes()[..], b"{]"].concat(),
            {
                let json = br#"{"data_size":1,"stdout_size":5,"stderr_size":0}"#;
                [&(json.len() as i32).to_le_bytes()[..], json, b"x"].concat()
            },
        ] {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(ResponseCodec::new().decode(&mut buf).is_err(), "{bytes:?}");
        }
    }

    proptest! {
        #[test]
        fn any_split_of_a_framed_request_decodes_the_same(
            cmd in any::<String>(),
            stdin in proptest::collection::vec(any::<u8>(), 0..300),
            timeout_ms in any::<u64>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes = framed(&cmd, &stdin, timeout_ms);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut codec = RequestCodec::new();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut start = 0;
            for end in points.into_iter().chain([bytes.len()]) {
                buf.extend_from_slice(&bytes[start..end]);
                start = end;
                while let Some(request) = codec.decode(&mut buf).unwrap() {
                    decoded.push(request);
                }
            }
            prop_assert_eq!(decoded, vec![Request {
                command: cmd,
                stdin: (!stdin.is_empty()).then(|| Bytes::from(stdin)),
                timeout_ms,
            }]);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn no_text_command_is_taken_for_a_framed_one(text in "[^\u{0}]{1,64}") {
            prop_assume!(http::probe(text.as_bytes()) == http::HttpProbe::NotHttp);
            let bytes = text.as_bytes();
            for len in 1..=bytes.len() {
                prop_assert!(!matches!(request_form(&bytes[..len]), RequestForm::Framed(_)));
            }
            if bytes.len() >= 4 {
                prop_assert_eq!(request_form(bytes), RequestForm::Text);
            }
            let mut buf = BytesMut::from(bytes);
            let mut codec = RequestCodec::new();
            let request = match codec.decode(&mut buf).unwrap() {
                Some(request) => request,
                None => RequestCodec::short_command(&mut buf).unwrap(),
            };
            prop_assert_eq!(request.command, text.trim_end_matches(['\r', '\n']));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = RequestCodec::new();
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = codec.decode_eof(&mut buf);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = ResponseCodec::new().decode(&mut buf);
        }
    }
}
