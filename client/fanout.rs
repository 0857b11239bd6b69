//! Fleet fan-out: one command on many hosts at once (`rexec -H a -H b -- cmd`),
//! as pssh and pdsh do. Every host gets its own connection; `--parallel`
//! permits bound how many are connected and running at a time, `--batch`
//! runs them batch after batch and `--max-failures` stops new ones. Ctrl-C
//! cancels every remote command, and the summary says which hosts finished,
//! failed, were interrupted or not run.

mod collector;
pub mod files;
pub mod fold;
mod gather;
pub mod hosts;
mod lines;
mod rollout;
mod sink;
mod summary;
pub mod targets;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use encoding_rs::Encoding;
use rexec::client::{Client, ClientOptions, Command, Event, ExitStatus};
use rexec::ending::Ending;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use self::collector::{Collector, SinkClosed};
use self::files::{HostFiles, OutputDir};
use self::gather::Gathered;
use self::hosts::Host;
use self::rollout::{BatchSize, FailureBudget};
use self::sink::{Message, Sink, Stream};
use self::summary::{HostResult, Outcome, Tally};
use crate::interrupt::Interrupts;

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
#[command(group(clap::ArgGroup::new("fleet_hosts").multiple(true).args(["hosts", "nodesets", "hosts_file"])))]
pub struct FleetArgs {
    /// Run on HOST (repeatable): host, host:port, [v6]:port or http://host:port
    /// (port 50051 when none). Output lines are prefixed `HOST | `.
    #[arg(
        short = 'H',
        long = "host",
        value_name = "HOST",
        conflicts_with_all = ["tty", "interactive", "legacy"]
    )]
    pub hosts: Vec<String>,

    /// Run on the hosts of NODESET (repeatable), as clush -w: web[01-20],
    /// 10.0.0.[1-50], @group, and `,` union, `!` difference, `&` and, `^` xor.
    #[arg(short = 'w', long = "nodes", value_name = "NODESET",
          conflicts_with_all = ["tty", "interactive", "legacy"])]
    pub nodesets: Vec<String>,

    /// Run on every host listed in FILE: a host, address or NodeSet a line,
    /// `#` starts a comment.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tty", "interactive", "legacy"])]
    pub hosts_file: Option<PathBuf>,

    /// Leave out the hosts of NODESET (repeatable), as clush -x.
    #[arg(
        short = 'x',
        long = "exclude",
        value_name = "NODESET",
        requires = "fleet_hosts"
    )]
    pub exclude: Vec<String>,

    /// Print the hosts the flags name, folded, with their count; run nothing.
    #[arg(long, requires = "fleet_hosts")]
    pub list: bool,

    /// At most N hosts connected and running at once.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..), requires = "fleet_hosts")]
    pub parallel: u32,

    /// Print each host's output together, when that host finishes.
    #[arg(long, conflicts_with_all = ["json", "gather", "diff"], requires = "fleet_hosts")]
    pub group: bool,

    /// At the end, print each distinct output once under the folded set of
    /// hosts that printed it, largest group first (clush -b); stdout and
    /// stderr apart.
    #[arg(short = 'b', long, requires = "fleet_hosts")]
    pub gather: bool,

    /// As --gather, but each output other than the most common is shown as a
    /// unified diff against it.
    #[arg(long, requires = "fleet_hosts")]
    pub diff: bool,

    /// Also write each host's stdout and stderr to DIR/HOST.out and
    /// DIR/HOST.err (HOST percent-encoded) as they arrive, and
    /// DIR/summary.json at the end.
    #[arg(long, value_name = "DIR", requires = "fleet_hosts")]
    pub output_dir: Option<PathBuf>,

    /// Run the hosts in batches of N, or N% of them: a batch starts when the
    /// whole batch before it has finished.
    #[arg(long, value_name = "N|N%", value_parser = rollout::parse_batch, requires = "fleet_hosts")]
    pub batch: Option<BatchSize>,

    /// Start no new host once K hosts have failed; the rest are not run.
    #[arg(long, value_name = "K", requires = "fleet_hosts",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failures: Option<u32>,

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
        !self.hosts.is_empty() || !self.nodesets.is_empty() || self.hosts_file.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lines,
    Group,
    /// `--gather` or `--diff` without `--json`: nothing until the end.
    Gather,
    Json {
        base64: bool,
    },
}

/// How each host is reached.
#[derive(Clone)]
pub enum Transport {
    /// A gRPC connection to each host's address.
    Grpc,
    /// Through a NATS broker, to the agent of each host's name.
    Nats(Arc<crate::nats::exec::Bus>),
}

/// What every host runs, and how.
pub struct Job {
    transport: Transport,
    command: Command,
    options: ClientOptions,
    mode: Mode,
    /// `--gather` or `--diff`, in text or JSON.
    gather: bool,
    diff: bool,
    encoding: Option<&'static Encoding>,
    output_dir: Option<OutputDir>,
}

/// How hosts are started: at most `parallel` at once, batch after batch,
/// none after `max_failures`.
struct Plan {
    parallel: usize,
    batch: Option<BatchSize>,
    max_failures: Option<usize>,
}

/// Runs `command` on every host `fleet` names, sending each the whole of
/// local stdin when `stdin`. Ends 0 when every host exited 0, 255 when any
/// could not be reached or its call failed, else the largest remote code;
/// 130 after Ctrl-C.
pub async fn run(
    fleet: &FleetArgs,
    transport: Transport,
    options: &ClientOptions,
    command: Command,
    stdin: bool,
    encoding: Option<&'static Encoding>,
) -> Ending {
    let selection = targets::Selection {
        hosts: &fleet.hosts,
        nodesets: &fleet.nodesets,
        hosts_file: fleet.hosts_file.as_deref(),
        exclude: &fleet.exclude,
    };
    let hosts = match targets::select(&selection) {
        Ok(hosts) => hosts,
        Err(message) => return Ending::Usage(message),
    };
    if fleet.list {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let line = format!("{}\n", fold::fold_counted(&names));
        return match std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes()) {
            Ok(()) => Ending::Remote(ExitStatus::exited(0)),
            Err(e) => Ending::output(e),
        };
    }
    if command.is_empty() {
        return Ending::usage("fan-out needs a command: rexec -w NODESET [--] WORDS");
    }
    let mut command = command;
    if stdin {
        match read_stdin() {
            Ok(bytes) => command = command.stdin(bytes),
            Err(ending) => return ending,
        }
    }
    let gather = fleet.gather || fleet.diff;
    let mode = match (fleet.json, gather, fleet.group) {
        (true, _, _) => Mode::Json {
            base64: fleet.json_base64,
        },
        (false, true, _) => Mode::Gather,
        (false, false, true) => Mode::Group,
        (false, false, false) => Mode::Lines,
    };
    let output_dir = match &fleet.output_dir {
        Some(dir) => {
            let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
            match OutputDir::prepare(dir, &names) {
                Ok(output_dir) => Some(output_dir),
                Err(ending) => return ending,
            }
        }
        None => None,
    };
    let job = Arc::new(Job {
        transport,
        command,
        options: options.clone(),
        mode,
        gather,
        diff: fleet.diff,
        encoding,
        output_dir,
    });
    let plan = Plan {
        parallel: fleet.parallel as usize,
        batch: fleet.batch,
        max_failures: fleet.max_failures.map(|k| k as usize),
    };
    let ending = run_fleet(hosts, job.clone(), plan).await;
    if let Transport::Nats(bus) = &job.transport {
        bus.settle().await;
    }
    ending
}

/// Local stdin, read once for every host, up to [`MAX_STDIN_BYTES`].
fn read_stdin() -> Result<Vec<u8>, Ending> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Ending::failed(format!("cannot read stdin: {e}")))?;
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Ending::failed(format!(
            "stdin is over {} MiB: fan-out sends it whole to every host (use -n for none)",
            MAX_STDIN_BYTES >> 20
        )));
    }
    Ok(bytes)
}

async fn run_fleet(hosts: Vec<Host>, job: Arc<Job>, plan: Plan) -> Ending {
    let mut interrupts = match Interrupts::new() {
        Ok(interrupts) => interrupts,
        Err(e) => return Ending::failed(format!("cannot take over Ctrl-C: {e}")),
    };
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

    let permits = Arc::new(Semaphore::new(plan.parallel));
    let budget = Arc::new(FailureBudget::new(plan.max_failures));
    let cancel = CancellationToken::new();
    let hosts: Vec<Arc<Host>> = hosts.into_iter().map(Arc::new).collect();
    let mut results = Vec::with_capacity(names.len());
    for batch in rollout::batches(hosts.len(), plan.batch) {
        if sender.is_closed() {
            break;
        }
        // After Ctrl-C, later batches are never started.
        if cancel.is_cancelled() {
            for index in batch {
                results.extend(not_run(index, &hosts[index], &job, &sender).await);
            }
            continue;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for index in batch {
            let (host, job, sender) = (hosts[index].clone(), job.clone(), sender.clone());
            let (permits, budget, cancel) = (permits.clone(), budget.clone(), cancel.clone());
            tasks.spawn(async move {
                // Held for the host's whole run: --parallel bounds connections in
                // flight. After Ctrl-C a host still waiting goes on without one,
                // to be reported as interrupted without starting.
                let permit = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    permit = permits.acquire_owned() => Some(permit),
                };
                if permit.is_some() && budget.spent() {
                    return not_run(index, &host, &job, &sender).await;
                }
                let result = run_host(index, &host, &job, &sender, &cancel).await;
                // Counted before the permit goes, for the next host to see.
                budget.record(result.as_ref().is_some_and(HostResult::failed));
                drop(permit);
                result
            });
        }
        loop {
            let joined = tokio::select! {
                joined = tasks.join_next() => joined,
                // Dropping each host's stream cancels its command; every host
                // still writes its partial lines and is counted as interrupted.
                _ = interrupts.next(), if !cancel.is_cancelled() => {
                    cancel.cancel();
                    continue;
                }
            };
            match joined {
                Some(Ok(Some(result))) => results.push(result),
                // The writer is gone (its error is reported below).
                Some(Ok(None)) => {}
                Some(Err(e)) => return Ending::failed(format!("host task failed: {e}")),
                None => break,
            }
        }
    }
    drop(sender);

    let gathered = match writer.await {
        Ok(Ok(gathered)) => gathered,
        Ok(Err(e)) => return Ending::output(e),
        Err(e) => return Ending::failed(format!("output writer failed: {e}")),
    };
    results.sort_by_key(|r| r.host);
    finish(&names, &results, &job, &gathered, cancel.is_cancelled())
}

/// The end of a run: `--gather` groups (or the `--json` summary record), the
/// summary on stderr, `summary.json` for `--output-dir`, and the exit code.
fn finish(
    names: &[String],
    results: &[HostResult],
    job: &Job,
    gathered: &Gathered,
    interrupted: bool,
) -> Ending {
    let ending = summary::ending(results, interrupted);
    let tally = Tally::new(names, results);
    if job.gather {
        let written = match job.mode {
            Mode::Json { base64 } => {
                let mut record = summary::json(&tally, ending.code());
                record["stdout"] = gather::json(&gathered.stdout, names, job.diff, base64);
                record["stderr"] = gather::json(&gathered.stderr, names, job.diff, base64);
                let line = serde_json::json!({ "summary": record }).to_string();
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
            }
            _ => {
                let mut out = std::io::stdout().lock();
                let mut err = std::io::stderr().lock();
                gather::write_text(&gathered.stdout, names, job.diff, &mut out)
                    .and_then(|()| out.flush())
                    .and_then(|()| gather::write_text(&gathered.stderr, names, job.diff, &mut err))
            }
        };
        if let Err(e) = written {
            return Ending::output(e);
        }
    }
    eprint!("{}", summary::text(&tally, interrupted));
    if let Some(dir) = &job.output_dir
        && let Err(message) = dir.write_summary(names, results, ending.code())
    {
        return Ending::failed(message);
    }
    ending
}

/// Reports a host that is never started (`--max-failures` reached, or a batch
/// after Ctrl-C); `None` when the sink went away first.
async fn not_run(
    index: usize,
    host: &Host,
    job: &Job,
    sender: &mpsc::Sender<Message>,
) -> Option<HostResult> {
    let record = match job.mode {
        Mode::Json { .. } => Some(collector::not_run_record(&host.name)),
        _ => None,
    };
    let message = Message::Done {
        host: index,
        parts: Vec::new(),
        error: None,
        record,
        kept: None,
        failed: false,
    };
    sender.send(message).await.ok()?;
    Some(HostResult::not_run(index))
}

/// Why a host's run stopped early.
enum Stop {
    /// rexec failed for this host (connect, status, protocol): a message.
    Failed(String),
    /// Ctrl-C: the call was dropped, which cancels the command.
    Interrupted,
    /// The writer is gone; nothing more can be shown.
    SinkClosed,
}

impl From<rexec::client::Error> for Stop {
    fn from(error: rexec::client::Error) -> Self {
        Stop::Failed(error.to_string())
    }
}

impl From<SinkClosed> for Stop {
    fn from(_: SinkClosed) -> Self {
        Stop::SinkClosed
    }
}

/// Runs the job on one host and reports it to the sink; `None` when the sink
/// went away first.
async fn run_host(
    index: usize,
    host: &Host,
    job: &Job,
    sender: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
) -> Option<HostResult> {
    let started = Instant::now();
    let mut collector = Collector::new(index, job);
    let ended = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Stop::Interrupted),
        ended = exec_on(host, job, &mut collector, sender) => ended,
    };
    let elapsed = started.elapsed();
    let ending = match ended {
        Ok(status) => Ending::Remote(status),
        Err(Stop::Failed(message)) => Ending::Failed(message),
        Err(Stop::Interrupted) => Ending::Interrupted,
        Err(Stop::SinkClosed) => return None,
    };
    let status = match &ending {
        Ending::Remote(status) => Some(status),
        _ => None,
    };
    let error = match &ending {
        Ending::Remote(_) => None,
        other => Some(other.to_string()),
    };
    // Held and partial lines are written even after Ctrl-C, each with its newline.
    let finished = collector.finish(&host.name, status, error.as_deref(), elapsed);
    let result = HostResult::new(index, ending);
    let message = Message::Done {
        host: index,
        parts: finished.parts,
        // An interrupted host is named in the summary, not on a line of its
        // own; with --gather, so is a failed one.
        error: match (&finished.record, &result.outcome, job.mode) {
            (_, _, Mode::Gather) => None,
            (None, Outcome::Ended(Ending::Failed(_)), _) => error,
            _ => None,
        },
        record: finished.record,
        kept: finished.kept,
        failed: result.failed(),
    };
    sender.send(message).await.ok()?;
    Some(result)
}

async fn exec_on(
    host: &Host,
    job: &Job,
    collector: &mut Collector,
    sender: &mpsc::Sender<Message>,
) -> Result<ExitStatus, Stop> {
    // Opened before connecting: a host that cannot be reached still gets
    // its (empty) files, as every host of the run does.
    let mut files: Option<HostFiles> = match &job.output_dir {
        Some(dir) => Some(dir.open(&host.name).map_err(Stop::Failed)?),
        None => None,
    };
    let mut events = Source::open(host, job).await?;
    while let Some(event) = events.next().await? {
        let (stream, bytes) = match event {
            Event::Stdout(bytes) => (Stream::Stdout, bytes),
            Event::Stderr(bytes) => (Stream::Stderr, bytes),
            Event::Exit(status) => return Ok(status),
            Event::Started { .. } => continue,
        };
        // The remote bytes as they came (before --encoding), never held.
        if let Some(files) = files.as_mut() {
            files.write(stream, &bytes).map_err(Stop::Failed)?;
        }
        collector.push(stream, &bytes, sender).await?;
    }
    Err(Stop::Failed("no exit status".into()))
}

/// One host's events, over either transport.
enum Source {
    Grpc {
        /// Kept for as long as its call's stream.
        _client: Box<Client>,
        events: rexec::client::Events,
    },
    Nats(crate::nats::exec::Exec),
}

impl Source {
    async fn open(host: &Host, job: &Job) -> Result<Source, Stop> {
        let timeout = job.options.connect_timeout;
        match &job.transport {
            Transport::Grpc => {
                // The whole handshake, not only the TCP connect, must fit the
                // timeout: a host that accepts and then says nothing must not
                // hold a permit forever.
                let mut client =
                    tokio::time::timeout(timeout, Client::connect(&host.addr, &job.options))
                        .await
                        .map_err(|_| {
                            Stop::Failed(format!("cannot connect to {}: timed out", host.addr))
                        })??;
                let events = client.exec(job.command.clone()).await?;
                Ok(Source::Grpc {
                    _client: Box::new(client),
                    events,
                })
            }
            Transport::Nats(bus) => Ok(Source::Nats(
                bus.exec(&host.name, &job.command, timeout).await?,
            )),
        }
    }

    async fn next(&mut self) -> Result<Option<Event>, rexec::client::Error> {
        match self {
            Source::Grpc { events, .. } => events.next().await,
            Source::Nats(exec) => exec.next().await,
        }
    }
}
