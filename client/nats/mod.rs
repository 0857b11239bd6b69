//! `rexec --nats URL ...`: talking to rexecd agents through a NATS broker
//! instead of dialling each host (hosts behind NAT, very large fleets):
//! `discover` lists them, `exec` runs a command on one by name (the fan-out
//! runs it on every agent -w names).

pub mod discover;
pub mod exec;

use std::time::Duration;

use async_nats::ServerAddr;
use rexec::ending::Ending;

/// The CLI's NATS flags.
#[derive(Debug, clap::Args)]
pub struct NatsArgs {
    /// Reach rexecd agents (`rexecd --nats`) through this NATS broker
    /// (nats://HOST:PORT, comma-separated for a cluster).
    #[arg(long, value_name = "URL[,URL...]", value_parser = rexec::nats::parse_servers)]
    pub nats: Option<rexec::nats::Servers>,

    /// List the agents that answer (name, version, uptime, labels), sorted by
    /// name; with NODESET, only those, and any in it that did not answer
    /// within --connect-timeout are named as not responding (exit 255).
    #[arg(
        long,
        requires = "nats",
        num_args = 0..=1,
        value_name = "NODESET",
        conflicts_with_all = ["words", "fleet_hosts"]
    )]
    pub discover: Option<Option<String>>,

    #[command(flatten)]
    pub broker: rexec::nats::BrokerArgs,
}

/// Connects once (no retries: a person is waiting), within `timeout`.
pub async fn connect(
    servers: &[ServerAddr],
    broker: &rexec::nats::BrokerArgs,
    timeout: Duration,
) -> Result<async_nats::Client, Ending> {
    let options = async_nats::ConnectOptions::new()
        .name("rexec")
        .connection_timeout(timeout);
    let options = broker
        .apply(options, servers)
        .await
        .map_err(Ending::Usage)?;
    let names = rexec::nats::describe_servers(servers);
    options
        .connect(servers)
        .await
        .map_err(|e| Ending::failed(format!("cannot connect to NATS at {names}: {e}")))
}
