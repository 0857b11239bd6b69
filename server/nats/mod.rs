//! `rexecd --nats URL`: an agent that dials out to a NATS broker, so hosts
//! behind NAT need no inbound port. It answers discovery (`discover`) and
//! runs execs addressed to its name (`exec`, streamed through `outbox`). The
//! connection reconnects by itself with backoff, forever; an unreachable
//! broker never keeps gRPC from serving.

mod discover;
mod exec;
mod outbox;

pub use exec::ExecContext;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, ServerAddr};

/// How long startup waits for the first connection before the readiness
/// line is printed anyway (and the agent keeps retrying in the background).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// rexecd's NATS flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// Also be a NATS agent: connect out to these brokers (nats://HOST:PORT,
    /// comma-separated for a cluster) and answer on rexec.v1.* subjects.
    /// The readiness line then ends with "nats=NAME".
    #[arg(long, value_name = "URL[,URL...]", value_parser = rexec::nats::parse_servers)]
    pub nats: Option<rexec::nats::Servers>,

    /// The agent's name on the bus (default: the host name).
    #[arg(long, value_name = "NAME", requires = "nats", value_parser = parse_name)]
    pub nats_name: Option<String>,

    /// A label the agent reports to `rexec --nats URL --discover`
    /// (repeatable): --nats-label role=web --nats-label site=par1.
    #[arg(long, value_name = "K=V", requires = "nats", value_parser = parse_label)]
    pub nats_label: Vec<(String, String)>,

    #[command(flatten)]
    pub broker: rexec::nats::BrokerArgs,
}

/// What the agent runs execs with: gRPC's runner, shutdown, audit and auth.
pub struct Serving {
    pub runner: std::sync::Arc<crate::runner::Runner>,
    pub shutdown: crate::shutdown::Shutdown,
    pub audit: crate::audit::Audit,
    pub auth: crate::auth::Authenticator,
}

/// A connected (or still connecting) agent.
pub struct Agent {
    pub name: String,
    client: async_nats::Client,
}

/// What the agent says about itself in discovery.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub started: Instant,
}

impl Agent {
    /// Starts connecting and serving; returns once the first connection is
    /// up or `FIRST_CONNECT_WAIT` has passed (then it says so and keeps trying).
    pub async fn start(
        servers: Vec<ServerAddr>,
        args: &NatsArgs,
        started: Instant,
        serving: Serving,
    ) -> Result<Agent, String> {
        let name = match &args.nats_name {
            Some(name) => name.clone(),
            None => host_name()?,
        };
        let options = ConnectOptions::new()
            .name(format!("rexecd {name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move { log_event(event) });
        let options = args.broker.apply(options, &servers).await?;
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| format!("--nats: {e}"))?;
        let identity = Identity {
            name: name.clone(),
            labels: args.nats_label.iter().cloned().collect(),
            started,
        };
        let discover = client
            .subscribe(rexec::nats::DISCOVER_SUBJECT)
            .await
            .map_err(|e| format!("cannot subscribe to {}: {e}", rexec::nats::DISCOVER_SUBJECT))?;
        tokio::spawn(discover::serve(client.clone(), discover, identity));
        let subject = rexec::nats::exec_subject(&name);
        let execs = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
        let context = ExecContext {
            client: client.clone(),
            name: name.clone(),
            runner: serving.runner,
            shutdown: serving.shutdown,
            audit: serving.audit,
            auth: serving.auth,
        };
        tokio::spawn(exec::serve(std::sync::Arc::new(context), execs));
        // A flush answered means the broker has our subscriptions.
        match tokio::time::timeout(FIRST_CONNECT_WAIT, client.flush()).await {
            Ok(Ok(())) => tracing::info!(agent = %name, "nats: agent ready"),
            _ => tracing::warn!(
                agent = %name,
                servers = %rexec::nats::describe_servers(&servers),
                "nats: broker unreachable; serving gRPC meanwhile and retrying in the background"
            ),
        }
        Ok(Agent { name, client })
    }

    /// Leaves the bus: pending replies are flushed, subscriptions dropped.
    pub async fn stop(self) {
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "nats: drain");
        }
    }
}

/// async-nats's backoff (0, 2, 4, 8 ms ... up to 4 s) plus up to half of it
/// again, drawn per process: a fleet that lost its broker does not come back
/// in lockstep (1,000 agents reconnecting at the same instants).
fn reconnect_delay(attempts: usize) -> Duration {
    let base = match attempts {
        0 | 1 => Duration::from_millis(50),
        n => Duration::from_millis(1u64 << (n - 1).min(12)).min(Duration::from_secs(4)),
    };
    let seed = std::process::id() as u64 ^ (attempts as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    static START_NANOS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nanos = START_NANOS.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
    });
    let spread = splitmix(seed ^ nanos) % 1000;
    base + base.mul_f64(spread as f64 / 2000.0)
}

/// One step of SplitMix64: a well-mixed number from any seed.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("nats: connected"),
        Event::Disconnected => tracing::warn!("nats: disconnected; reconnecting"),
        Event::LameDuckMode => tracing::warn!("nats: broker entering lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "nats: slow consumer"),
        Event::ServerError(e) => tracing::warn!(error = %e, "nats: server error"),
        Event::ClientError(e) => tracing::warn!(error = %e, "nats: client error"),
        Event::Draining => tracing::info!("nats: draining"),
        Event::Closed => tracing::info!("nats: closed"),
    }
}

/// A name is one subject token, so `rexec.v1.<name>.exec` stays one subject.
fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("an agent name cannot be empty".into());
    }
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{text}': an agent name cannot hold {c:?} (it is one NATS subject token)"
        ));
    }
    Ok(text.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{text}'")),
    }
}

fn host_name() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("cannot read the host name (give --nats-name): {e}"))?;
    // A dotted FQDN would be several subject tokens: its first label is the name.
    let short = name.trim().split('.').next().unwrap_or_default();
    parse_name(short).map_err(|e| format!("{e}; give --nats-name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_split_a_subject_are_refused() {
        assert!(parse_name("web01").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reconnect_delays_grow_to_six_seconds_at_most_and_spread() {
        for attempts in 0..100 {
            let delay = reconnect_delay(attempts);
            assert!(delay >= Duration::from_millis(2), "{attempts}: {delay:?}");
            assert!(delay <= Duration::from_secs(6), "{attempts}: {delay:?}");
        }
        assert!(reconnect_delay(20) >= Duration::from_secs(4));
        let spread: std::collections::BTreeSet<u64> = (20..40)
            .map(|a| reconnect_delay(a).as_millis() as u64)
            .collect();
        assert!(spread.len() > 5, "no jitter: {spread:?}");
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            parse_label("role=web").unwrap(),
            ("role".into(), "web".into())
        );
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
    }
}
