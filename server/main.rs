//! `rexecd`: the rexec daemon. Serves `rexec.v1.RemoteExec` over gRPC, plus
//! health and reflection. See DESIGN.md for the contract.

mod audit;
mod auth;
mod config;
mod incoming;
mod legacy;
mod limits;
mod log_throttle;
mod memory;
mod run_as;
mod runner;
mod service;
mod shutdown;
mod tls;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rexec::proto::remote_exec_server::RemoteExecServer;
use tonic::codegen::InterceptedService;
use tonic::transport::Server;

use crate::audit::Audit;
use crate::auth::{Authenticator, Tokens};
use crate::run_as::RunAs;
use crate::runner::{Containment, ContainmentMode, Runner, RunnerConfig};
use crate::service::ExecService;
use crate::shutdown::Shutdown;

/// rexecd: run commands for remote clients and stream their output back.
#[derive(Debug, Parser)]
#[command(name = "rexecd", version, about)]
struct Args {
    /// gRPC listen address. Port 0 picks a free port; the readiness line on
    /// stdout says which ("listening grpc=ADDR").
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Serve on a non-loopback address without authentication. Anyone who can
    /// reach the port can run commands as this user.
    #[arg(long)]
    insecure_no_auth: bool,

    /// Require `authorization: Bearer TOKEN` on every call. FILE has lines of
    /// NAME TOKEN (NAME is the principal in the audit log; `#` comments and
    /// blank lines are allowed) and must not be accessible by group or others.
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require a client certificate signed by this CA (PEM) on every
    /// connection (mTLS); its subject CN, else its first SAN, is the principal.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Commands running at once, both listeners together; more get
    /// RESOURCE_EXHAUSTED at once.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: u32,

    /// Largest gRPC request message: an Exec request with its stdin, or one
    /// session message. Larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = legacy::parse_size)]
    max_request_size: usize,

    /// Output (stdout and stderr together) one command may send; past it the
    /// rest is dropped, its process group is killed and `exit.truncated` is
    /// true. 0 means no limit.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = legacy::parse_size)]
    max_output: usize,

    /// Bytes rexecd may hold for clients at once, both listeners together:
    /// gRPC stdin not yet written to its command, framed legacy stdin, and
    /// legacy answers held until their command exits. Past it, new requests
    /// get RESOURCE_EXHAUSTED (legacy: an error header) and a held legacy
    /// answer is cut ("truncated": true). Default: 1GiB, or a quarter of the
    /// host's memory if that is less; 0 means no limit.
    #[arg(long, value_name = "BYTES", value_parser = legacy::parse_size)]
    memory_budget: Option<usize>,

    /// gRPC connections open at once; more are closed as they arrive.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

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
    #[arg(long, default_value = "0", value_parser = rexec::duration::parse)]
    default_timeout: Duration,

    /// Time between SIGTERM and SIGKILL when an exec's process group is killed.
    #[arg(long, default_value = "2s", value_parser = rexec::duration::parse)]
    kill_grace: Duration,

    /// After the main process exits, how long background processes may keep
    /// its output pipes open before the rest of its group is killed.
    #[arg(long, default_value = "1s", value_parser = rexec::duration::parse)]
    linger: Duration,

    /// On SIGTERM/SIGINT, how long running execs may continue before they are
    /// killed. A second signal kills them at once.
    #[arg(long, default_value = "10s", value_parser = rexec::duration::parse)]
    shutdown_grace: Duration,

    /// Also serve the classic raw-TCP protocol (4-byte length prefix, JSON
    /// header, body) on this address, for old socket clients. Off by default;
    /// the readiness line then adds "legacy=ADDR".
    #[arg(long, value_name = "ADDR")]
    legacy_listen: Option<SocketAddr>,

    /// Serve the legacy protocol on a non-loopback address. It has no
    /// authentication: anyone who can reach the port can run commands.
    #[arg(long)]
    legacy_allow_remote: bool,

    /// Output held for one legacy answer (its length goes before the body);
    /// past it the output is cut and the header says "truncated": true.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = legacy::parse_size)]
    legacy_max_output: usize,

    /// Close a legacy connection that makes no progress for this long: sends
    /// no byte of a request, or takes no byte of its answer; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = rexec::duration::parse)]
    legacy_idle_timeout: Duration,

    /// Close a legacy connection whose first request (a framed one: its
    /// header) has not arrived this long after it opened, so silent
    /// connections cannot hold the listener's slots; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = rexec::duration::parse)]
    legacy_first_request_timeout: Duration,

    /// Legacy connections served at once; more get an error answer and are closed.
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u32).range(1..))]
    legacy_max_connections: u32,

    /// Log lines on stderr: text for people, json (one object a line) for log
    /// collectors. Audit lines are JSON either way.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,

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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REXEC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
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
    if !args.listen.ip().is_loopback() && !args.insecure_no_auth && !security.auth.is_enabled() {
        eprintln!(
            "rexecd: refusing to listen on non-loopback {} without authentication; \
             pass --tokens-file FILE, or --tls-client-ca FILE with --tls-cert/--tls-key (mTLS), \
             or listen on 127.0.0.1, or pass --insecure-no-auth",
            args.listen
        );
        return std::process::ExitCode::from(2);
    }
    if !args.listen.ip().is_loopback() && args.tokens_file.is_some() && security.tls.is_none() {
        tracing::warn!(
            "bearer tokens will cross the network in clear text: add --tls-cert and --tls-key"
        );
    }
    if let Some(addr) = args.legacy_listen
        && !addr.ip().is_loopback()
        && !args.legacy_allow_remote
    {
        eprintln!(
            "rexecd: refusing the legacy listener on non-loopback {addr}: the legacy protocol \
             has no authentication; listen on 127.0.0.1, or pass --legacy-allow-remote"
        );
        return std::process::ExitCode::from(2);
    }
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

/// Credentials, TLS, audit sink and run-as user, all read and checked before
/// the runtime starts: a bad file stops rexecd with exit 2 and a message.
struct Security {
    auth: Authenticator,
    tls: Option<tonic::transport::ServerTlsConfig>,
    audit: Audit,
    run_as: Option<RunAs>,
    containment: Containment,
}

impl Security {
    fn from_args(args: &Args) -> Result<Security, String> {
        let tokens = match &args.tokens_file {
            Some(path) => {
                let tokens = Tokens::load(path).map_err(|e| format!("--tokens-file: {e}"))?;
                tracing::info!(names = tokens.count(), "bearer tokens loaded");
                Some(tokens)
            }
            None => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(
                cert,
                key,
                args.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        let audit = match &args.audit_log {
            Some(path) => Audit::file(path)
                .map_err(|e| format!("cannot open --audit-log {}: {e}", path.display()))?,
            None => Audit::stderr(),
        };
        let run_as = args.run_as.as_deref().map(RunAs::lookup).transpose()?;
        // Also kills what the execs of a crashed rexecd left in their cgroups.
        let containment = Containment::choose(args.containment)?;
        match containment.cgroup_dir() {
            Some(dir) => {
                tracing::info!(containment = %containment.name(), cgroups = %dir.display(), "exec containment")
            }
            None => tracing::info!(containment = %containment.name(), "exec containment"),
        }
        Ok(Security {
            auth: Authenticator::new(tokens, args.tls_client_ca.is_some()),
            tls,
            audit,
            run_as,
            containment,
        })
    }
}

async fn serve(args: Args, security: Security) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let grpc_addr = listener.local_addr()?;
    let incoming = incoming::accept_with_backoff(listener);

    let shutdown = Shutdown::default();
    let runner = Runner::new(
        RunnerConfig {
            shell: args.shell,
            default_timeout: (!args.default_timeout.is_zero()).then_some(args.default_timeout),
            kill_grace: args.kill_grace,
            linger: args.linger,
            max_concurrent: args.max_concurrent as usize,
            max_output_bytes: (args.max_output > 0).then_some(args.max_output as u64),
            run_as: security.run_as,
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
    let legacy = match args.legacy_listen {
        Some(addr) => {
            let config = legacy::LegacyConfig {
                max_output_bytes: args.legacy_max_output,
                first_request_timeout: (!args.legacy_first_request_timeout.is_zero())
                    .then_some(args.legacy_first_request_timeout),
                idle_timeout: (!args.legacy_idle_timeout.is_zero())
                    .then_some(args.legacy_idle_timeout),
                max_connections: args.legacy_max_connections as usize,
            };
            let listener = legacy::Listener::bind(
                addr,
                runner.clone(),
                shutdown.clone(),
                config,
                memory.clone(),
            )
            .await
            .map_err(|e| format!("cannot listen on {addr} (legacy): {e}"))?;
            Some(listener)
        }
        None => None,
    };
    // Credentials are checked from the headers, before a request body is read.
    let exec_service = limits::RequestSizeStatus::new(InterceptedService::new(
        RemoteExecServer::new(ExecService::new(runner, shutdown.clone(), memory))
            .max_decoding_message_size(args.max_request_size),
        security.auth,
    ));
    let mut server_builder = Server::builder();
    if let Some(tls) = security.tls {
        server_builder = server_builder.tls_config(tls)?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RemoteExecServer<ExecService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rexec::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8 only speaks v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tokio::spawn(shutdown.clone().watch_signals(args.shutdown_grace)?);
    let stop_accepting = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.draining().await;
            health
                .set_not_serving::<RemoteExecServer<ExecService>>()
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

    let mut stdout = std::io::stdout().lock();
    match &legacy {
        Some(listener) => writeln!(
            stdout,
            "listening grpc={grpc_addr} legacy={}",
            listener.local_addr()?
        )?,
        None => writeln!(stdout, "listening grpc={grpc_addr}")?,
    }
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%grpc_addr, "rexecd ready");
    let legacy = legacy.map(|listener| tokio::spawn(listener.run()));

    let server = server_builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(exec_service)
        .serve_with_incoming_shutdown(
            limits::limit_connections(incoming, args.max_connections as usize),
            stop_accepting,
        );
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
    if let Some(legacy) = legacy {
        // Legacy connections end once their current exec has answered; one whose
        // client does not read the answer gets the same deadline as gRPC's.
        let deadline = async {
            shutdown.killing().await;
            tokio::time::sleep(args.kill_grace + Duration::from_secs(1)).await;
        };
        tokio::select! {
            _ = legacy => {}
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
    tracing::info!("rexecd stopped");
    Ok(())
}
