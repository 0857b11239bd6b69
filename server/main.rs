//! `rexecd`: the rexec daemon. Serves `rexec.v1.RemoteExec` over gRPC, plus
//! health and reflection. See docs/ARCHITECTURE.md for the contract.

mod audit;
mod auth;
mod config;
mod connections;
mod credentials;
mod files;
mod incoming;
mod init;
mod legacy;
mod limits;
mod local_token;
mod man_pages;
mod memory;
mod metrics;
mod nats;
mod rate_limited;
mod reload;
mod run_as;
mod runner;
mod security;
mod service;
mod shutdown;
mod tls;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rexec::proto::files_server::FilesServer;
use rexec::proto::remote_exec_server::RemoteExecServer;
use tonic::codegen::InterceptedService;
use tonic::transport::Server;

use crate::auth::Authenticator;
use crate::connections::{ConnectionLimits, Connections, Tracked};
use crate::metrics::Measured;
use crate::runner::{ContainmentMode, Runner, RunnerConfig};
use crate::security::Security;
use crate::service::ExecService;
use crate::shutdown::Shutdown;

/// rexecd: run commands for remote clients and stream their output back.
#[derive(Debug, Parser)]
#[command(
    name = "rexecd",
    version,
    about,
    after_help = "TLS, mTLS and a token in one step: rexecd init DIR (see rexecd init --help)."
)]
struct Args {
    /// gRPC listen address. Port 0 picks a free port; the readiness line on
    /// stdout says which ("listening grpc=ADDR").
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Require no credential at all. By default (no --tokens-file, no mTLS)
    /// only clients with this user's local token may run commands; with this
    /// flag anyone who can reach the port can, every local user included.
    /// Warned about on every start; needed for a non-loopback --listen
    /// without authentication.
    #[arg(long)]
    insecure_no_auth: bool,

    /// Where the default credential, the per-user local token, is kept (made
    /// on first start, mode 0600 in a 0700 directory owned by this user).
    #[arg(
        long,
        value_name = "FILE",
        env = "REXEC_LOCAL_TOKEN_FILE",
        default_value_os_t = rexec::local_token::path().unwrap_or_default(),
        hide_default_value = true
    )]
    local_token_file: std::path::PathBuf,

    /// Require `authorization: Bearer TOKEN` on every call. FILE has lines of
    /// NAME TOKEN (NAME is the principal in the audit log; `#` comments and
    /// blank lines are allowed) and must not be accessible by group or others.
    /// `%d/NAME` is systemd's credential NAME (LoadCredential=), in
    /// $CREDENTIALS_DIRECTORY, here and in the --tls-* files; SIGHUP reloads it.
    #[arg(long, value_name = "FILE", value_parser = credentials::path)]
    tokens_file: Option<PathBuf>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", value_parser = credentials::path)]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_parser = credentials::path)]
    tls_key: Option<PathBuf>,

    /// Require a client certificate signed by this CA (PEM) on every
    /// connection (mTLS); its subject CN, else its first SAN, is the principal.
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_parser = credentials::path)]
    tls_client_ca: Option<PathBuf>,

    /// Commands running at once, both listeners together; more get
    /// RESOURCE_EXHAUSTED at once.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: u32,

    /// Largest gRPC request message: an Exec request with its stdin, or one
    /// session message. Larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = rexec::units::parse_size)]
    max_request_size: usize,

    /// Output (stdout and stderr together) one command may send; past it the
    /// rest is dropped, its process group is killed and `exit.truncated` is
    /// true. 0 means no limit.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = rexec::units::parse_size)]
    max_output: usize,

    /// Bytes rexecd may hold for clients at once, both listeners together:
    /// gRPC stdin not yet written to its command, framed legacy stdin, and
    /// legacy answers held until their command exits. Past it, new requests
    /// get RESOURCE_EXHAUSTED (legacy: an error header) and a held legacy
    /// answer is cut ("truncated": true). Default: 1GiB, or a quarter of the
    /// host's memory if that is less; 0 means no limit.
    #[arg(long, value_name = "BYTES", value_parser = rexec::units::parse_size)]
    memory_budget: Option<usize>,

    /// gRPC connections open at once. When full, the oldest connection that
    /// has made no authenticated call is closed to make room; when all are
    /// authenticated, new ones are closed as they arrive.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// gRPC connections open at once that have made no authenticated call yet
    /// (OpenSSH's MaxStartups); past it the oldest is closed. Each must send
    /// HTTP/2 within 5 s and may sit without a call for 10 s.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(1..))]
    max_unauthenticated: u32,

    /// Close an authenticated gRPC connection with no call in progress for
    /// this long; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = rexec::units::parse_duration)]
    idle_timeout: Duration,

    /// Append audit lines (one JSON object per command) to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,

    /// When started as root, run every command as USER: its uid, gid and
    /// groups, with HOME, USER and LOGNAME set and HOME as the default cwd.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,

    /// What holds every process of an exec: auto puts each exec in its own
    /// cgroup v2 when rexecd can make one (systemd's Delegate=yes, or a
    /// writable cgroup2 mount) and uses its process group otherwise; cgroup
    /// refuses to start without cgroups; process-group never makes them.
    #[arg(long, value_enum, default_value = "auto")]
    containment: ContainmentMode,

    /// Shell that runs `command` requests as `SHELL -c COMMAND`.
    #[arg(long, default_value = "/bin/sh")]
    shell: PathBuf,

    /// Timeout for execs that set none (e.g. 30s, 5m); 0 means no timeout.
    #[arg(long, default_value = "0", value_parser = rexec::units::parse_duration)]
    default_timeout: Duration,

    /// Time between SIGTERM and SIGKILL when an exec's process group is killed.
    #[arg(long, default_value = "2s", value_parser = rexec::units::parse_duration)]
    kill_grace: Duration,

    /// After the main process exits, how long background processes may keep
    /// its output pipes open before the rest of its group is killed.
    #[arg(long, default_value = "1s", value_parser = rexec::units::parse_duration)]
    linger: Duration,

    /// On SIGTERM/SIGINT, how long running execs may continue before they are
    /// killed. A second signal kills them at once.
    #[arg(long, default_value = "10s", value_parser = rexec::units::parse_duration)]
    shutdown_grace: Duration,

    /// Also serve the classic raw-TCP protocol (4-byte length prefix, JSON
    /// header, body) on this address, for old socket clients. Off by default;
    /// the readiness line then adds "legacy=ADDR".
    #[arg(long, value_name = "ADDR")]
    legacy_listen: Option<SocketAddr>,

    /// Also serve one of the tutorial's earlier protocols on ADDR (repeatable):
    /// raw (the body, no framing), length-ready (the length in ASCII, the body
    /// after the client's "recv_ready"), fixed-header (a JSON header padded to
    /// 100 bytes, then the body), udp (one datagram in, one out, cut at the
    /// datagram limit). The readiness line adds "legacy-DIALECT=ADDR" for each.
    #[arg(long, value_name = "DIALECT=ADDR")]
    legacy_compat: Vec<legacy::CompatListen>,

    /// Serve the legacy protocols on a non-loopback address. They have no
    /// authentication: anyone who can reach the port can run commands (and,
    /// for udp, have the answer sent to any address they forge as the source).
    #[arg(long)]
    legacy_allow_remote: bool,

    /// Serve --legacy-listen and --legacy-compat beside --tokens-file, mTLS or
    /// the local token, acknowledging that the legacy listeners let anyone who
    /// reaches them in without a credential.
    #[arg(long)]
    legacy_allow_anonymous: bool,

    /// Output held for one legacy answer (its length goes before the body);
    /// past it the output is cut and the header says "truncated": true.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = rexec::units::parse_size)]
    legacy_max_output: usize,

    /// Close a legacy connection that makes no progress for this long: sends
    /// no byte of a request, or takes no byte of its answer; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = rexec::units::parse_duration)]
    legacy_idle_timeout: Duration,

    /// Close a legacy connection whose first request (a framed one: its
    /// header) has not arrived this long after it opened, so silent
    /// connections cannot hold the listener's slots; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = rexec::units::parse_duration)]
    legacy_first_request_timeout: Duration,

    /// Legacy connections served at once; more get an error answer and are closed.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(1..))]
    legacy_max_connections: u32,

    /// Serve Prometheus metrics (`GET /metrics`, text format) on this address;
    /// off by default. The readiness line then ends with "metrics=ADDR". Off
    /// loopback it needs --tokens-file, and scrapes then send one of its
    /// tokens (`Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// Log lines on stderr: text for people, json (one object a line) for log
    /// collectors. Audit lines are JSON either way.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,

    #[command(flatten)]
    nats: nats::NatsArgs,

    /// Read flags from this TOML file; keys are the long flag names
    /// (kill-grace = "5s", insecure-no-auth = true). Command-line flags win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let mut words = std::env::args_os().skip(1);
    match words.next() {
        Some(word) if word == "init" => return init::main(words),
        Some(word) if word == "--man-pages" => return man_pages::main(words),
        _ => {}
    }
    let args: Args = match config::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not for journald or a file.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr must not matter: by default a failed log write is
        // reported with eprintln!, which panics the task that logged (once,
        // the shutdown watcher, leaving rexecd deaf to SIGTERM).
        .log_internal_errors(false)
        .with_env_filter(log_filter());
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let security = match Security::from_args(&args) {
        Ok(security) => security,
        Err(message) => {
            eprintln!("rexecd: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    raise_open_files_limit();
    tune_malloc();
    // Nothing rexecd was handed (an fd 9 from a wrapper script) reaches a command.
    runner::mark_inherited_descriptors();
    // One thread moves every connection's output: a chunk goes from the pipe
    // reader to the HTTP/2 connection without crossing threads, which cut
    // rexecd's CPU per streamed GiB by a third. Spawning (a blocking
    // fork/exec) runs on the blocking pool, so execs/s still use every core
    // (BENCHMARKS.md, "Levers measured").
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rexecd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, security)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rexecd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Bulk output moves in 1 MiB chunks. glibc serves those with mmap, or from a
/// heap it trims as soon as 2 MiB at its top are free, so each chunk would be
/// faulted in afresh; from the heap, with up to 16 MiB kept for reuse, a
/// stream reuses the same pages.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// Each connection is a file descriptor: allow as many as the hard limit
/// says, so --max-connections, not a soft default of 1024, is what binds.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `REXEC_LOG` (default info). async-nats's debug lines print the broker URL
/// with its password, so that crate stays at info unless named explicitly.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let text = std::env::var("REXEC_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&text)
        .ok()
        .filter(|_| !text.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    if !text.contains("async_nats")
        && let Ok(directive) = "async_nats=info".parse()
    {
        filter = filter.add_directive(directive);
    }
    filter
}

async fn serve(args: Args, security: Security) -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let grpc_addr = listener.local_addr()?;
    let connections = Connections::new(ConnectionLimits {
        max_connections: args.max_connections as usize,
        max_unauthenticated: args.max_unauthenticated as usize,
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
    });
    let incoming = connections.admitted(incoming::accept_with_backoff(listener));
    let audit = security.audit.clone();

    let shutdown = Shutdown::default();
    let runner = Runner::new(
        RunnerConfig {
            shell: args.shell,
            default_timeout: (!args.default_timeout.is_zero()).then_some(args.default_timeout),
            kill_grace: args.kill_grace,
            linger: args.linger,
            max_concurrent: args.max_concurrent as usize,
            max_output_bytes: (args.max_output > 0).then_some(args.max_output as u64),
            run_as: security.run_as.clone(),
            containment: security.containment,
        },
        security.audit,
        &shutdown,
    );
    let memory_budget = args.memory_budget.unwrap_or_else(memory::default_budget);
    tracing::info!(
        bytes = memory_budget,
        "memory budget for what clients send and legacy answers"
    );
    let memory = memory::MemoryBudget::new(memory_budget);
    let legacy_config = legacy::LegacyConfig {
        max_output_bytes: args.legacy_max_output,
        first_request_timeout: (!args.legacy_first_request_timeout.is_zero())
            .then_some(args.legacy_first_request_timeout),
        idle_timeout: (!args.legacy_idle_timeout.is_zero()).then_some(args.legacy_idle_timeout),
        max_connections: args.legacy_max_connections as usize,
    };
    let legacy = match args.legacy_listen {
        Some(addr) => {
            let listener = legacy::Listener::bind(
                addr,
                legacy::Framing::Prefixed,
                runner.clone(),
                shutdown.clone(),
                legacy_config.clone(),
                memory.clone(),
            )
            .await
            .map_err(|e| format!("cannot listen on {addr} (legacy): {e}"))?;
            Some(listener)
        }
        None => None,
    };
    let mut compat = Vec::new();
    for &listen in &args.legacy_compat {
        let listener = legacy::Compat::bind(
            listen,
            runner.clone(),
            shutdown.clone(),
            legacy_config.clone(),
            memory.clone(),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (legacy {}): {e}",
                listen.addr, listen.dialect
            )
        })?;
        compat.push((listen.dialect, listener));
    }
    let metrics_endpoint = match args.metrics_listen {
        Some(addr) => Some(
            metrics::Endpoint::bind(addr, security.metrics_verifier.clone())
                .await
                .map_err(|e| format!("cannot listen on {addr} (metrics): {e}"))?,
        ),
        None => None,
    };
    let reloadable = reload::Reloadable {
        tokens: args
            .tokens_file
            .clone()
            .zip(security.credentials.tokens.clone()),
        audit: audit.clone(),
    };
    // Credentials are checked from the headers, before a request body is read.
    let authenticator =
        Authenticator::new(security.credentials, audit.clone(), connections.clone());
    let files = files::FilesService::new(
        security.run_as,
        runner.slots(),
        shutdown.clone(),
        audit.clone(),
        memory.clone(),
    )
    .map_err(|e| format!("cannot read the working directory: {e}"))?;
    let files_service = Tracked::new(
        InterceptedService::new(
            limits::RequestSizeStatus::new(
                FilesServer::new(files).max_decoding_message_size(args.max_request_size),
                audit.clone(),
            ),
            authenticator.clone(),
        ),
        &connections,
    );
    let nats_serving = nats::Serving {
        runner: runner.clone(),
        shutdown: shutdown.clone(),
        audit: audit.clone(),
        auth: authenticator.clone(),
    };
    let exec_service = Tracked::new(
        InterceptedService::new(
            limits::RequestSizeStatus::new(
                RemoteExecServer::new(ExecService::new(
                    runner,
                    shutdown.clone(),
                    audit.clone(),
                    memory,
                ))
                .max_decoding_message_size(args.max_request_size),
                audit,
            ),
            authenticator,
        ),
        &connections,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RemoteExecServer<ExecService>>().await;
    health
        .set_serving::<FilesServer<files::FilesService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rexec::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8 only speaks v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tokio::spawn(shutdown.clone().watch_signals(args.shutdown_grace)?);
    tokio::spawn(reloadable.watch()?);
    let stop_accepting = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.draining().await;
            health
                .set_not_serving::<RemoteExecServer<ExecService>>()
                .await;
            health
                .set_not_serving::<FilesServer<files::FilesService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Keep accepting while execs run, so health checks see NOT_SERVING
            // and new execs get UNAVAILABLE rather than a refused connection.
            tokio::select! {
                () = shutdown.execs_finished() => {}
                () = shutdown.killing() => {}
            }
        }
    };

    let agent = match args.nats.nats.clone() {
        Some(servers) => {
            Some(nats::Agent::start(servers.0, &args.nats, started, nats_serving).await?)
        }
        None => None,
    };

    let mut ready = format!("listening grpc={grpc_addr}");
    if let Some(listener) = &legacy {
        write!(ready, " legacy={}", listener.local_addr()?)?;
    }
    for (dialect, listener) in &compat {
        write!(ready, " legacy-{dialect}={}", listener.local_addr()?)?;
    }
    if let Some(endpoint) = &metrics_endpoint {
        write!(ready, " metrics={}", endpoint.local_addr()?)?;
    }
    if let Some(agent) = &agent {
        write!(ready, " nats={}", agent.name)?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%grpc_addr, "rexecd ready");
    if let Some(endpoint) = metrics_endpoint {
        tokio::spawn(endpoint.run(shutdown.clone()));
    }
    let mut legacy_tasks: Vec<_> = legacy
        .map(|listener| tokio::spawn(listener.run()))
        .into_iter()
        .collect();
    legacy_tasks.extend(
        compat
            .into_iter()
            .map(|(_, listener)| tokio::spawn(listener.run())),
    );

    let router = Server::builder()
        .add_service(Measured::new(Tracked::new(health_service, &connections)))
        .add_service(Measured::new(Tracked::new(reflection_v1, &connections)))
        .add_service(Measured::new(Tracked::new(
            reflection_v1alpha,
            &connections,
        )))
        .add_service(Measured::new(exec_service))
        .add_service(Measured::new(files_service));
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>>>> =
        match security.tls {
            Some(config) => {
                Box::pin(router.serve_with_incoming_shutdown(
                    tls::handshakes(incoming, config),
                    stop_accepting,
                ))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)),
        };
    // A client that never answers GOAWAY must not keep the daemon alive: once
    // execs are being killed, connections get the kill grace and a second more.
    let connections_deadline = async {
        shutdown.killing().await;
        tokio::time::sleep(args.kill_grace + Duration::from_secs(1)).await;
    };
    tokio::select! {
        served = server => served?,
        () = connections_deadline => tracing::warn!("closing connections still open after shutdown"),
    }
    if !legacy_tasks.is_empty() {
        // Legacy connections end once their current exec has answered; one whose
        // client does not read the answer gets the same deadline as gRPC's.
        let deadline = async {
            shutdown.killing().await;
            tokio::time::sleep(args.kill_grace + Duration::from_secs(1)).await;
        };
        let all_done = async {
            for task in legacy_tasks {
                let _ = task.await;
            }
        };
        tokio::select! {
            () = all_done => {}
            () = deadline => tracing::warn!("closing legacy connections still open after shutdown"),
        }
    }
    if tokio::time::timeout(
        args.kill_grace + Duration::from_secs(2),
        shutdown.execs_finished(),
    )
    .await
    .is_err()
    {
        tracing::error!("some execs did not finish after being killed");
    }
    if let Some(agent) = agent {
        agent.stop().await;
    }
    tracing::info!("rexecd stopped");
    Ok(())
}
