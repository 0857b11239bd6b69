//! `rexec bench`: runs one command many times, CONCURRENCY calls in flight over
//! shared connections, and reports execs/s, output MB/s and latency percentiles.
//! `--hold N` (hidden) instead opens N sessions and keeps them open, so
//! bench/compare.sh can read rexecd's memory with many sessions running.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rexec::client::{Client, ClientOptions, Command, Event, ExitStatus};
use rexec::legacy::Request;
use tokio::sync::Mutex;

use crate::connect::ConnectArgs;
use crate::legacy::Connection;

/// Streams one HTTP/2 connection carries before calls queue (hyper's server
/// default is 200); `--hold` opens one connection per this many sessions.
const STREAMS_PER_CONNECTION: usize = 100;

/// Run a command many times and report execs/s, MB/s and latency.
///
/// Every call must exit 0 to count as a success; a call that cannot connect,
/// gets an error status, loses its connection or exits non-zero is an error.
/// The exit code is 0 when no call failed, 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,

    /// Calls in flight at once.
    #[arg(short = 'c', long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,

    /// Calls to make in all (default 100 unless --duration is given).
    #[arg(
        short = 'n',
        long = "total",
        value_name = "TOTAL",
        conflicts_with = "duration"
    )]
    total: Option<u64>,

    /// Keep calling for this long (e.g. 10s) instead of a fixed count.
    #[arg(long, value_name = "D", value_parser = rexec::units::parse_duration)]
    duration: Option<Duration>,

    /// gRPC connections the calls share (default: one per 100 calls in flight,
    /// at least 2). With --legacy every concurrent call has its own connection.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    connections: Option<u32>,

    /// Use rexecd's legacy raw-TCP listener (framed requests) instead of gRPC.
    #[arg(long)]
    legacy: bool,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,

    /// Open N sessions running WORDS, print "holding N" once all have
    /// started, and keep them open until interrupted or they all exit.
    #[arg(long, value_name = "N", hide = true, conflicts_with_all = ["total", "duration", "legacy"])]
    hold: Option<u32>,

    /// The remote command, run by the remote shell.
    #[arg(required = true, trailing_var_arg = true, value_name = "WORDS")]
    words: Vec<String>,
}

/// `rexec bench`: its own runtime, so the CLI's other paths are untouched.
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rexec bench: cannot start runtime: {e}");
            return ExitCode::from(rexec::ending::FAILED);
        }
    };
    let options = match args.connect.options() {
        Ok(options) => options,
        Err(ending) => {
            eprintln!("rexec bench: {ending}");
            return ExitCode::from(ending.code());
        }
    };
    match args.hold {
        Some(sessions) => runtime.block_on(hold(&args, sessions as usize, options)),
        None => runtime.block_on(bench(&args, options)),
    }
}

/// Hands out calls: a fixed count, or until a deadline; Ctrl-C stops both.
struct Plan {
    remaining: AtomicU64,
    deadline: Option<Instant>,
    stopped: AtomicBool,
}

impl Plan {
    fn claim(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        match self.deadline {
            Some(deadline) => Instant::now() < deadline,
            None => self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    /// Latencies of successful calls.
    latencies: Vec<Duration>,
    calls: u64,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, elapsed: Duration, bytes: u64, outcome: Result<(), String>) {
        self.calls += 1;
        self.bytes += bytes;
        match outcome {
            Ok(()) => self.latencies.push(elapsed),
            Err(message) => {
                self.errors += 1;
                self.first_error.get_or_insert(message);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.calls += other.calls;
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// gRPC connections shared by the workers; one that failed is retried on the
/// next call that needs it, so an unreachable server shows up as errors.
struct Pool {
    addr: String,
    options: ClientOptions,
    slots: Vec<Mutex<Option<Client>>>,
}

impl Pool {
    fn new(addr: &str, options: ClientOptions, connections: usize) -> Self {
        Pool {
            addr: addr.to_string(),
            options,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    async fn client(&self, worker: usize) -> Result<Client, String> {
        let mut slot = self.slots[worker % self.slots.len()].lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect(&self.addr, &self.options)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

async fn bench(args: &BenchArgs, options: ClientOptions) -> ExitCode {
    let command_text = args.words.join(" ");
    let concurrency = args.concurrency as usize;
    let progress = progress_bar(args);

    // Connections are made before the clock starts; one that fails is retried
    // (and counted as an error) by the calls.
    let pool = if args.legacy {
        None
    } else {
        let connections = args
            .connections
            .map_or(concurrency.div_ceil(STREAMS_PER_CONNECTION).max(2), |n| {
                n as usize
            })
            .min(concurrency);
        let pool = Pool::new(&args.connect.addr, options, connections);
        for worker in 0..connections {
            let _ = pool.client(worker).await;
        }
        Some(Arc::new(pool))
    };
    let mut legacy_connections = Vec::new();
    if args.legacy {
        for _ in 0..concurrency {
            legacy_connections.push(
                Connection::connect(&args.connect.addr, args.connect.connect_timeout)
                    .await
                    .ok(),
            );
        }
    }

    // The clock (and a --duration deadline) starts once connections are made.
    let plan = Arc::new(Plan {
        remaining: AtomicU64::new(args.total.unwrap_or(100)),
        deadline: args.duration.map(|duration| Instant::now() + duration),
        stopped: AtomicBool::new(false),
    });
    let interrupt = {
        let plan = plan.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                plan.stopped.store(true, Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let plan = plan.clone();
        let progress = progress.clone();
        match &pool {
            Some(pool) => {
                let pool = pool.clone();
                let command = Command::shell(command_text.clone());
                workers.spawn(grpc_worker(worker, pool, command, plan, progress));
            }
            None => {
                let connection = legacy_connections.get_mut(worker).and_then(Option::take);
                let legacy = LegacyTarget {
                    addr: args.connect.addr.clone(),
                    connect_timeout: args.connect.connect_timeout,
                    request: Request {
                        command: command_text.clone(),
                        stdin: None,
                        timeout_ms: 0,
                    },
                };
                workers.spawn(legacy_worker(connection, legacy, plan, progress));
            }
        }
    }
    let mut tally = Tally::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(e) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    interrupt.abort();
    progress.finish_and_clear();

    let summary = Summary::new(&mut tally, elapsed);
    let printed = if args.json {
        summary.print_json()
    } else {
        summary.print_human(&command_text, concurrency, elapsed)
    };
    if let Err(e) = printed {
        eprintln!("rexec bench: cannot write the results: {e}");
        return ExitCode::from(rexec::ending::FAILED);
    }
    if let Some(first) = &tally.first_error {
        eprintln!(
            "rexec bench: {} of {} calls failed; first: {first}",
            tally.errors, tally.calls
        );
    }
    if tally.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A bar on stderr when it is a terminal and the output is for a person.
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match (args.total, args.duration) {
        (_, Some(_)) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} execs, {per_sec} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
        (total, None) => ProgressBar::new(total.unwrap_or(100)).with_style(
            ProgressStyle::with_template("{wide_bar} {pos}/{len} execs, {per_sec} [{eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    }
}

async fn grpc_worker(
    worker: usize,
    pool: Arc<Pool>,
    command: Command,
    plan: Arc<Plan>,
    progress: ProgressBar,
) -> Tally {
    let mut tally = Tally::default();
    let mut client = None;
    while plan.claim() {
        let start = Instant::now();
        if client.is_none() {
            match pool.client(worker).await {
                Ok(connected) => client = Some(connected),
                Err(message) => {
                    tally.record(start.elapsed(), 0, Err(message));
                    progress.inc(1);
                    // A refused connection fails at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        let (bytes, outcome) = exec_once(connected, &command).await;
        tally.record(start.elapsed(), bytes, outcome);
        progress.inc(1);
    }
    tally
}

/// One exec to its exit; returns the output bytes and whether it exited 0.
async fn exec_once(client: &mut Client, command: &Command) -> (u64, Result<(), String>) {
    let mut bytes = 0u64;
    let mut events = match client.exec(command.clone()).await {
        Ok(events) => events,
        Err(e) => return (0, Err(e.to_string())),
    };
    loop {
        match events.next().await {
            Ok(Some(Event::Stdout(chunk) | Event::Stderr(chunk))) => bytes += chunk.len() as u64,
            Ok(Some(Event::Started { .. })) => {}
            Ok(Some(Event::Exit(status))) => {
                let outcome = if status.success() {
                    Ok(())
                } else {
                    Err(format!("command ended: {status}"))
                };
                return (bytes, outcome);
            }
            Ok(None) => return (bytes, Err("no exit status".into())),
            Err(e) => return (bytes, Err(e.to_string())),
        }
    }
}

/// Where legacy calls go; each worker keeps its own connection.
struct LegacyTarget {
    addr: String,
    connect_timeout: Duration,
    request: Request,
}

async fn legacy_worker(
    mut connection: Option<Connection>,
    target: LegacyTarget,
    plan: Arc<Plan>,
    progress: ProgressBar,
) -> Tally {
    let mut tally = Tally::default();
    while plan.claim() {
        let start = Instant::now();
        if connection.is_none() {
            match Connection::connect(&target.addr, target.connect_timeout).await {
                Ok(connected) => connection = Some(connected),
                Err(message) => {
                    tally.record(start.elapsed(), 0, Err(message));
                    progress.inc(1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(connected) = connection.as_mut() else {
            continue;
        };
        let (bytes, outcome) = match connected.call(target.request.clone()).await {
            Ok(response) => {
                let bytes = (response.stdout.len() + response.stderr.len()) as u64;
                let status = ExitStatus::from(&response.header);
                let outcome = match response.header.error {
                    Some(error) => Err(format!("server refused the request: {error}")),
                    None if status.success() => Ok(()),
                    None => Err(format!("command ended: {status}")),
                };
                (bytes, outcome)
            }
            Err(message) => {
                // The server closes a connection after a bad request or a failure.
                connection = None;
                (0, Err(message))
            }
        };
        tally.record(start.elapsed(), bytes, outcome);
        progress.inc(1);
    }
    tally
}

/// The figures printed, in milliseconds and decimal megabytes. Rates and
/// latencies are of the calls that succeeded; with none, there are none.
struct Summary {
    execs: u64,
    errors: u64,
    rates: Option<Rates>,
}

struct Rates {
    execs_per_sec: f64,
    bytes: u64,
    mb_per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn new(tally: &mut Tally, elapsed: Duration) -> Self {
        tally.latencies.sort_unstable();
        let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let latencies = &tally.latencies;
        let succeeded = tally.calls.saturating_sub(tally.errors);
        Summary {
            execs: tally.calls,
            errors: tally.errors,
            rates: (succeeded > 0 && !latencies.is_empty()).then(|| Rates {
                execs_per_sec: succeeded as f64 / seconds,
                bytes: tally.bytes,
                mb_per_sec: tally.bytes as f64 / 1e6 / seconds,
                p50: percentile_ms(latencies, 50.0),
                p90: percentile_ms(latencies, 90.0),
                p99: percentile_ms(latencies, 99.0),
                max: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            }),
        }
    }

    fn print_json(&self) -> std::io::Result<()> {
        // Fields in the documented order (serde_json's `json!` would sort them).
        #[derive(serde::Serialize)]
        struct Latency {
            p50: f64,
            p90: f64,
            p99: f64,
            max: f64,
        }
        #[derive(serde::Serialize)]
        struct Report {
            execs: u64,
            errors: u64,
            execs_per_sec: Option<f64>,
            bytes: u64,
            mb_per_sec: Option<f64>,
            latency_ms: Option<Latency>,
        }
        let rates = self.rates.as_ref();
        let report = Report {
            execs: self.execs,
            errors: self.errors,
            execs_per_sec: rates.map(|r| round3(r.execs_per_sec)),
            bytes: rates.map_or(0, |r| r.bytes),
            mb_per_sec: rates.map(|r| round3(r.mb_per_sec)),
            latency_ms: rates.map(|r| Latency {
                p50: round3(r.p50),
                p90: round3(r.p90),
                p99: round3(r.p99),
                max: round3(r.max),
            }),
        };
        let object = serde_json::to_string(&report).map_err(std::io::Error::other)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{object}")?;
        stdout.flush()
    }

    fn print_human(
        &self,
        command: &str,
        concurrency: usize,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "command      {command}")?;
        writeln!(
            stdout,
            "execs        {} in {:.3} s, {concurrency} in flight, {} errors",
            self.execs,
            elapsed.as_secs_f64(),
            self.errors
        )?;
        let Some(rates) = &self.rates else {
            writeln!(stdout, "execs/s      none: no call succeeded")?;
            return stdout.flush();
        };
        writeln!(stdout, "execs/s      {:.1}", rates.execs_per_sec)?;
        writeln!(
            stdout,
            "output       {} bytes, {:.1} MB/s",
            rates.bytes, rates.mb_per_sec
        )?;
        writeln!(
            stdout,
            "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            rates.p50, rates.p90, rates.p99, rates.max
        )?;
        stdout.flush()
    }
}

/// Nearest-rank percentile of sorted latencies, in ms; 0 when there are none.
fn percentile_ms(sorted: &[Duration], percent: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}

fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

/// `--hold N`: N sessions running WORDS, stdin left open, until Ctrl-C,
/// SIGTERM, or every command has exited.
async fn hold(args: &BenchArgs, sessions: usize, options: ClientOptions) -> ExitCode {
    let connections = args
        .connections
        .map_or(sessions.div_ceil(STREAMS_PER_CONNECTION), |n| n as usize)
        .max(1);
    let pool = Pool::new(&args.connect.addr, options, connections);
    let command = Command::shell(args.words.join(" "));
    let mut opened = Vec::with_capacity(sessions);
    for index in 0..sessions {
        let session = async {
            let mut client = pool.client(index).await?;
            let (input, mut events) = client
                .session(command.clone())
                .await
                .map_err(|e| e.to_string())?;
            match events.next().await {
                Ok(Some(Event::Started { .. })) => Ok((input, events)),
                Ok(other) => Err(format!("expected a started event, got {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match session.await {
            Ok(open) => opened.push(open),
            Err(message) => {
                eprintln!("rexec bench: session {index} did not start: {message}");
                return ExitCode::from(rexec::ending::FAILED);
            }
        }
    }
    // Installed before the line is printed: whoever reads it may send
    // SIGTERM at once, which would otherwise kill this process outright.
    let terminated = terminated();
    println!("holding {sessions}");
    let _ = std::io::stdout().flush();

    let mut finished = tokio::task::JoinSet::new();
    for (input, mut events) in opened {
        finished.spawn(async move {
            while let Ok(Some(_)) = events.next().await {}
            drop(input);
        });
    }
    let all_exited = async { while finished.join_next().await.is_some() {} };
    tokio::select! {
        () = all_exited => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM. The handler is installed when this is called, not
/// when the future is first polled.
#[cfg(unix)]
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
fn terminated() -> impl std::future::Future<Output = ()> {
    std::future::pending()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 50.0), 50.0);
        assert_eq!(percentile_ms(&sorted, 99.0), 99.0);
        assert_eq!(percentile_ms(&sorted[..1], 90.0), 1.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn a_fixed_plan_hands_out_exactly_its_count() {
        let plan = Plan {
            remaining: AtomicU64::new(3),
            deadline: None,
            stopped: AtomicBool::new(false),
        };
        assert_eq!((0..10).filter(|_| plan.claim()).count(), 3);
    }
}
