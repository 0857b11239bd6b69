//! `rexecd`: the rexec daemon. Serves `rexec.v1.RemoteExec` over gRPC, plus
//! health and reflection. See DESIGN.md for the contract.

mod audit;
mod config;
mod legacy;
mod runner;
mod service;
mod shutdown;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rexec::proto::remote_exec_server::RemoteExecServer;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::audit::Audit;
use crate::runner::{Runner, RunnerConfig};
use crate::service::ExecService;
use crate::shutdown::Shutdown;

/// Largest request message accepted (`ExecRequest.stdin` travels inside it).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

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

    /// Close a legacy connection that sends no request, or does not read its
    /// answer, for this long; 0 means never.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = rexec::duration::parse)]
    legacy_idle_timeout: Duration,

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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REXEC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if !args.listen.ip().is_loopback() && !args.insecure_no_auth {
        eprintln!(
            "rexecd: refusing to listen on non-loopback {} without authentication; \
             listen on 127.0.0.1, or pass --insecure-no-auth",
            args.listen
        );
        return std::process::ExitCode::from(2);
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rexecd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rexecd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let grpc_addr = listener.local_addr()?;
    // Set on the incoming stream: Server::tcp_nodelay does not reach a listener we bound.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let shutdown = Shutdown::default();
    let runner = Runner::new(
        RunnerConfig {
            shell: args.shell,
            default_timeout: (!args.default_timeout.is_zero()).then_some(args.default_timeout),
            kill_grace: args.kill_grace,
            linger: args.linger,
        },
        Audit::stderr(),
        &shutdown,
    );
    let legacy = match args.legacy_listen {
        Some(addr) => {
            let config = legacy::LegacyConfig {
                max_output_bytes: args.legacy_max_output,
                idle_timeout: (!args.legacy_idle_timeout.is_zero())
                    .then_some(args.legacy_idle_timeout),
                max_connections: args.legacy_max_connections as usize,
            };
            let listener = legacy::Listener::bind(addr, runner.clone(), shutdown.clone(), config)
                .await
                .map_err(|e| format!("cannot listen on {addr} (legacy): {e}"))?;
            Some(listener)
        }
        None => None,
    };
    let exec_service = RemoteExecServer::new(ExecService::new(runner, shutdown.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);

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

    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(exec_service)
        .serve_with_incoming_shutdown(incoming, stop_accepting);
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
