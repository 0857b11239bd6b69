//! Fleet fan-out: one command on many hosts at once (`rexec -H a -H b -- cmd`),
//! as pssh and pdsh do. Every host gets its own connection; `--parallel`
//! permits bound how many are connected and running at a time.

mod hosts;
mod lines;
mod sink;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use encoding_rs::{Decoder, Encoding};
use rexec::client::{Client, ClientOptions, Command, Event, ExitStatus};
use tokio::sync::{Semaphore, mpsc};

use self::hosts::Host;
use self::lines::LineBuffer;
use self::sink::{Message, Parts, Sink, Stream};
use crate::exec::Failure;

/// Local stdin is read whole and sent in every host's request, which rexecd
/// takes up to 64 MiB: this leaves room for the rest of the request.
pub const MAX_STDIN_BYTES: usize = 63 * 1024 * 1024;
/// Messages queued for the writer before hosts wait (backpressure).
const SINK_QUEUE: usize = 128;
/// `--group` holds at most this much of one host's output; past it the held
/// lines are written early, so memory stays bounded.
const MAX_GROUP_HOLD: usize = 16 * 1024 * 1024;
/// `--json` keeps at most this much of each stream per host; the record then
/// says `"truncated": true`.
const MAX_JSON_STREAM: usize = 16 * 1024 * 1024;

/// Fan-out flags; giving -H or --hosts-file turns fan-out on.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fleet fan-out (run on many hosts)")]
#[group(skip)]
#[command(group(clap::ArgGroup::new("fleet_hosts").multiple(true).args(["hosts", "hosts_file"])))]
pub struct FleetArgs {
    /// Run on HOST (repeatable): host, host:port or http://host:port (port
    /// 50051 when none). Output lines are prefixed `HOST | `; --addr is unused.
    #[arg(
        short = 'H',
        long = "host",
        value_name = "HOST",
        conflicts_with_all = ["tty", "interactive", "legacy"]
    )]
    pub hosts: Vec<String>,

    /// Run on every host listed in FILE: one host[:port] or URL per line,
    /// `#` starts a comment, blank lines are skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tty", "interactive", "legacy"])]
    pub hosts_file: Option<PathBuf>,

    /// At most N hosts connected and running at once.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..), requires = "fleet_hosts")]
    pub parallel: u32,

    /// Print each host's output together, when that host finishes.
    #[arg(long, conflicts_with = "json", requires = "fleet_hosts")]
    pub group: bool,

    /// Print one JSON object per host, when it finishes: host, exit, signal,
    /// timed_out, stdout, stderr, duration_ms, error.
    #[arg(long, requires = "fleet_hosts")]
    pub json: bool,

    /// With --json: output that is not UTF-8 is base64 (and `stdout_base64`
    /// or `stderr_base64` is true) instead of text with U+FFFD.
    #[arg(long, requires = "json")]
    pub json_base64: bool,
}

impl FleetArgs {
    pub fn wanted(&self) -> bool {
        !self.hosts.is_empty() || self.hosts_file.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Lines,
    Group,
    Json { base64: bool },
}

/// What every host runs, and how.
struct Job {
    command: Command,
    options: ClientOptions,
    mode: Mode,
    encoding: Option<&'static Encoding>,
}

/// How one host ended, for the exit code and the summary.
struct HostResult {
    host: usize,
    /// 0, the remote code, 128+N for a signal, 255 when rexec failed.
    code: i32,
    /// Why it failed, for the summary; `None` when it exited 0.
    note: Option<String>,
}

/// Runs `command` on every host of `cli`'s fleet; returns the exit code: 0 when
/// every host exited 0, 255 when any could not be reached or its call failed,
/// else the largest remote code.
pub async fn run(
    cli: &crate::Cli,
    options: &ClientOptions,
    command: Command,
) -> Result<i32, Failure> {
    let usage = |message: String| Failure {
        message: Some(message),
        code: 2,
    };
    let fleet = &cli.fleet;
    let mut all = Vec::new();
    for text in &fleet.hosts {
        all.push(Host::parse(text).map_err(|e| usage(format!("-H {text}: {e}")))?);
    }
    if let Some(path) = &fleet.hosts_file {
        let listed = hosts::read_hosts_file(path).map_err(usage)?;
        if listed.is_empty() {
            return Err(usage(format!("no hosts in {}", path.display())));
        }
        all.extend(listed);
    }
    let hosts = hosts::dedup(all);
    if cli.words.is_empty() {
        return Err(usage(
            "fan-out needs a command: rexec -H HOST [-H HOST...] -- WORDS".into(),
        ));
    }
    let mut command = command;
    if !cli.no_stdin && !std::io::stdin().is_terminal() {
        command = command.stdin(read_stdin()?);
    }
    let encoding = match &cli.encoding {
        Some(label) => Some(crate::output::encoding(label).map_err(usage)?),
        None => None,
    };
    let mode = match (fleet.group, fleet.json) {
        (_, true) => Mode::Json {
            base64: fleet.json_base64,
        },
        (true, false) => Mode::Group,
        (false, false) => Mode::Lines,
    };
    let job = Arc::new(Job {
        command,
        options: options.clone(),
        mode,
        encoding,
    });
    run_fleet(hosts, job, fleet.parallel as usize).await
}

/// Local stdin, read once for every host, up to [`MAX_STDIN_BYTES`].
fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::rexec(format!("cannot read stdin: {e}")))?;
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Failure::rexec(format!(
            "stdin is over {} MiB: fan-out sends it whole to every host (use -n for none)",
            MAX_STDIN_BYTES >> 20
        )));
    }
    Ok(bytes)
}

async fn run_fleet(hosts: Vec<Host>, job: Arc<Job>, parallel: usize) -> Result<i32, Failure> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let sink = Sink::new(
        &names,
        !no_colour && std::io::stdout().is_terminal(),
        !no_colour && std::io::stderr().is_terminal(),
        std::io::stderr().is_terminal(),
    );
    let (sender, receiver) = mpsc::channel(SINK_QUEUE);
    let writer = tokio::task::spawn_blocking(move || sink.run(receiver));

    let permits = Arc::new(Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, host) in hosts.into_iter().enumerate() {
        let (job, permits, sender) = (job.clone(), permits.clone(), sender.clone());
        tasks.spawn(async move {
            // Held for the host's whole run: --parallel bounds connections in flight.
            let _permit = permits.acquire_owned().await;
            run_host(index, &host, &job, &sender).await
        });
    }
    drop(sender);

    let mut results = Vec::with_capacity(names.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(result)) => results.push(result),
            // The writer is gone (its error is reported below).
            Ok(None) => {}
            Err(e) => return Err(Failure::rexec(format!("host task failed: {e}"))),
        }
    }
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::output(e)),
        Err(e) => return Err(Failure::rexec(format!("output writer failed: {e}"))),
    }
    results.sort_by_key(|r| r.host);
    print_summary(&names, &results);
    Ok(exit_code(&results))
}

/// 255 if any host failed in rexec itself, else the largest remote code.
fn exit_code(results: &[HostResult]) -> i32 {
    let codes = results.iter().map(|r| r.code);
    if codes.clone().any(|c| c == rexec::EXIT_REXEC_FAILURE) {
        rexec::EXIT_REXEC_FAILURE
    } else {
        codes.max().unwrap_or(0)
    }
}

fn print_summary(names: &[String], results: &[HostResult]) {
    let failed: Vec<&HostResult> = results.iter().filter(|r| r.note.is_some()).collect();
    if failed.is_empty() {
        return;
    }
    let mut text = format!("rexec: {} of {} hosts failed:\n", failed.len(), names.len());
    for result in failed {
        let note = result.note.as_deref().unwrap_or_default();
        text.push_str(&format!("  {}: {note}\n", names[result.host]));
    }
    eprint!("{text}");
}

/// Why a host's run stopped early.
enum Stop {
    /// rexec failed for this host (connect, status, protocol): a message.
    Failed(String),
    /// The writer is gone; nothing more can be shown.
    SinkClosed,
}

impl From<rexec::client::Error> for Stop {
    fn from(error: rexec::client::Error) -> Self {
        Stop::Failed(error.to_string())
    }
}

/// Runs the job on one host and reports it to the sink; `None` when the sink
/// went away first.
async fn run_host(
    index: usize,
    host: &Host,
    job: &Job,
    sender: &mpsc::Sender<Message>,
) -> Option<HostResult> {
    let started = Instant::now();
    let mut collector = Collector::new(index, job);
    let ended = exec_on(host, job, &mut collector, sender).await;
    let elapsed = started.elapsed();
    let (status, error) = match ended {
        Ok(status) => (Some(status), None),
        Err(Stop::Failed(message)) => (None, Some(message)),
        Err(Stop::SinkClosed) => return None,
    };
    let (code, note) = match (&status, &error) {
        (Some(status), _) => (status.local_exit_code(), describe_exit(status)),
        (None, Some(error)) => (rexec::EXIT_REXEC_FAILURE, Some(error.clone())),
        (None, None) => (rexec::EXIT_REXEC_FAILURE, Some("no exit status".into())),
    };
    let (parts, record) = collector.finish(&host.name, status.as_ref(), error.as_deref(), elapsed);
    let message = Message::Done {
        host: index,
        parts,
        error: if record.is_some() { None } else { error },
        record,
        failed: note.is_some(),
    };
    sender.send(message).await.ok()?;
    Some(HostResult {
        host: index,
        code,
        note,
    })
}

async fn exec_on(
    host: &Host,
    job: &Job,
    collector: &mut Collector,
    sender: &mpsc::Sender<Message>,
) -> Result<ExitStatus, Stop> {
    // The whole handshake, not only the TCP connect, must fit the timeout: a
    // host that accepts and then says nothing must not hold a permit forever.
    let timeout = job.options.connect_timeout;
    let mut client = tokio::time::timeout(timeout, Client::connect(&host.addr, &job.options))
        .await
        .map_err(|_| Stop::Failed(format!("cannot connect to {}: timed out", host.addr)))??;
    let mut events = client.exec(job.command.clone()).await?;
    while let Some(event) = events.next().await? {
        match event {
            Event::Stdout(bytes) => collector.push(Stream::Stdout, &bytes, sender).await?,
            Event::Stderr(bytes) => collector.push(Stream::Stderr, &bytes, sender).await?,
            Event::Exit(status) => return Ok(status),
            Event::Started { .. } => {}
        }
    }
    Err(Stop::Failed("no exit status".into()))
}

/// "exit 3", "killed by signal TERM (timed out)"; `None` for exit 0.
fn describe_exit(status: &ExitStatus) -> Option<String> {
    let mut text = match (&status.code, &status.signal) {
        (Some(0), _) => return None,
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "no exit status".into(),
    };
    if status.timed_out {
        text.push_str(" (timed out)");
    }
    Some(text)
}

/// One host's output on its way to the sink, per mode: whole lines sent as
/// they complete, held for `--group`, or kept for the `--json` record.
struct Collector {
    host: usize,
    mode: Mode,
    decoders: Option<(Decoder, Decoder)>,
    lines: (LineBuffer, LineBuffer),
    /// `--group`: whole lines not yet sent, and their size.
    held: Parts,
    held_bytes: usize,
    /// `--json`: everything each stream printed, up to [`MAX_JSON_STREAM`].
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

impl Collector {
    fn new(host: usize, job: &Job) -> Collector {
        Collector {
            host,
            mode: job.mode,
            decoders: job.encoding.map(|e| (e.new_decoder(), e.new_decoder())),
            lines: Default::default(),
            held: Vec::new(),
            held_bytes: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
        }
    }

    async fn push(
        &mut self,
        stream: Stream,
        chunk: &[u8],
        sender: &mpsc::Sender<Message>,
    ) -> Result<(), Stop> {
        let decoded;
        let chunk = match self.decoder(stream) {
            Some(decoder) => {
                decoded = decode(decoder, chunk, false);
                &decoded[..]
            }
            None => chunk,
        };
        if let Mode::Json { .. } = self.mode {
            let kept = match stream {
                Stream::Stdout => &mut self.stdout,
                Stream::Stderr => &mut self.stderr,
            };
            let room = MAX_JSON_STREAM.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.truncated |= chunk.len() > room;
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
            return sender.send(message).await.map_err(|_| Stop::SinkClosed);
        }
        self.hold(stream, lines);
        if self.held_bytes > MAX_GROUP_HOLD {
            let message = Message::Lines {
                host: self.host,
                parts: std::mem::take(&mut self.held),
            };
            self.held_bytes = 0;
            return sender.send(message).await.map_err(|_| Stop::SinkClosed);
        }
        Ok(())
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

    /// What is left to write once the host is done: held lines and partial
    /// lines (with a newline added), or the JSON record.
    fn finish(
        mut self,
        name: &str,
        status: Option<&ExitStatus>,
        error: Option<&str>,
        elapsed: Duration,
    ) -> (Parts, Option<String>) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(decoder) = self.decoder(stream) {
                let rest = decode(decoder, &[], true);
                match (self.mode, stream) {
                    (Mode::Json { .. }, Stream::Stdout) => self.stdout.extend_from_slice(&rest),
                    (Mode::Json { .. }, Stream::Stderr) => self.stderr.extend_from_slice(&rest),
                    _ => {
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
        if let Mode::Json { base64 } = self.mode {
            let record = json_record(JsonHost {
                name,
                status,
                error,
                elapsed,
                stdout: &self.stdout,
                stderr: &self.stderr,
                truncated: self.truncated,
                base64,
            });
            return (Vec::new(), Some(record));
        }
        if let Some(rest) = self.lines.0.finish() {
            self.hold(Stream::Stdout, rest);
        }
        if let Some(rest) = self.lines.1.finish() {
            self.hold(Stream::Stderr, rest);
        }
        (self.held, None)
    }
}

fn decode(decoder: &mut Decoder, bytes: &[u8], last: bool) -> Vec<u8> {
    let capacity = decoder
        .max_utf8_buffer_length(bytes.len())
        .unwrap_or(bytes.len() * 3 + 16);
    let mut text = String::with_capacity(capacity);
    let _ = decoder.decode_to_string(bytes, &mut text, last);
    text.into_bytes()
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
fn text_or_base64(bytes: &[u8], base64: bool) -> (String, bool) {
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

    fn result(code: i32) -> HostResult {
        HostResult {
            host: 0,
            code,
            note: None,
        }
    }

    #[test]
    fn exit_code_is_255_on_any_failure_else_the_largest() {
        assert_eq!(exit_code(&[result(0), result(0)]), 0);
        assert_eq!(exit_code(&[result(0), result(3), result(1)]), 3);
        assert_eq!(exit_code(&[result(137), result(255), result(3)]), 255);
        assert_eq!(exit_code(&[]), 0);
    }

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
