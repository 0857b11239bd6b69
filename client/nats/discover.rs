//! `rexec --nats URL --discover [NODESET]`: one request on `rexec.v1.discover`,
//! every agent's `AgentInfo` collected from the reply inbox.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use prost::Message;
use rexec::AgentInfo;
use rexec::client::ExitStatus;
use rexec::ending::Ending;
use tokio_stream::StreamExt;

use crate::fanout::targets::{self, Selection};

/// Without a NodeSet, nobody knows how many will answer: collecting stops
/// once no reply came for this long (or at --connect-timeout).
const QUIET_WINDOW: Duration = Duration::from_millis(500);

pub async fn run(client: &async_nats::Client, nodeset: Option<&str>, timeout: Duration) -> Ending {
    let wanted: Option<BTreeSet<String>> = match nodeset {
        Some(text) => {
            let selection = Selection {
                hosts: &[],
                nodesets: &[text.to_string()],
                hosts_file: None,
                exclude: &[],
            };
            match targets::select(&selection) {
                Ok(hosts) => Some(hosts.into_iter().map(|h| h.name).collect()),
                Err(message) => return Ending::Usage(message),
            }
        }
        None => None,
    };
    let agents = match collect(client, wanted.as_ref(), timeout).await {
        Ok(agents) => agents,
        Err(ending) => return ending,
    };
    let mut stdout = std::io::stdout().lock();
    for agent in agents.values() {
        if let Err(e) = writeln!(stdout, "{}", describe(agent)) {
            return Ending::output(e);
        }
    }
    if let Err(e) = stdout.flush() {
        return Ending::output(e);
    }
    let missing: Vec<&String> = wanted
        .iter()
        .flatten()
        .filter(|name| !agents.contains_key(*name))
        .collect();
    if missing.is_empty() {
        return Ending::Remote(ExitStatus::exited(0));
    }
    let names: Vec<&str> = missing.iter().map(|n| n.as_str()).collect();
    Ending::failed(format!(
        "not responding within {timeout:?}: {}",
        crate::fanout::fold::fold(&names)
    ))
}

/// Replies by agent name, filtered to `wanted` when given.
async fn collect(
    client: &async_nats::Client,
    wanted: Option<&BTreeSet<String>>,
    timeout: Duration,
) -> Result<BTreeMap<String, AgentInfo>, Ending> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Ending::failed(format!("nats: cannot subscribe to a reply inbox: {e}")))?;
    client
        .publish_with_reply(rexec::nats::DISCOVER_SUBJECT, inbox, Default::default())
        .await
        .map_err(|e| Ending::failed(format!("nats: cannot send discovery: {e}")))?;
    client
        .flush()
        .await
        .map_err(|e| Ending::failed(format!("nats: {e}")))?;

    let deadline = tokio::time::Instant::now() + timeout;
    let mut agents = BTreeMap::new();
    loop {
        let all_here = wanted.is_some_and(|w| w.iter().all(|n| agents.contains_key(n)));
        if all_here {
            break;
        }
        let until = match wanted {
            Some(_) => deadline,
            None => deadline.min(tokio::time::Instant::now() + QUIET_WINDOW),
        };
        let message = match tokio::time::timeout_at(until, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => break,
        };
        let info = match AgentInfo::decode(message.payload) {
            Ok(info) => info,
            Err(e) => {
                eprintln!("rexec: ignoring a discovery reply that is not an AgentInfo: {e}");
                continue;
            }
        };
        if wanted.is_some_and(|w| !w.contains(&info.name)) {
            continue;
        }
        if agents.contains_key(&info.name) {
            eprintln!("rexec: more than one agent answers as {}", info.name);
            continue;
        }
        agents.insert(info.name.clone(), info);
    }
    Ok(agents)
}

/// `web01  0.1.0  up 1h2m3s  role=web site=par1`
fn describe(agent: &AgentInfo) -> String {
    let labels: BTreeMap<&String, &String> = agent.labels.iter().collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut line = format!(
        "{}  {}  up {}",
        agent.name,
        agent.version,
        uptime(agent.uptime_ms)
    );
    if !labels.is_empty() {
        line.push_str("  ");
        line.push_str(&labels.join(" "));
    }
    line
}

fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_short_and_readable() {
        assert_eq!(uptime(999), "0s");
        assert_eq!(uptime(61_000), "1m1s");
        assert_eq!(uptime(3_723_000), "1h2m3s");
        assert_eq!(uptime(90_061_000), "1d1h1m");
    }

    #[test]
    fn a_line_lists_labels_sorted() {
        let agent = AgentInfo {
            name: "web01".into(),
            version: "0.1.0".into(),
            uptime_ms: 5_000,
            labels: [
                ("site".to_string(), "par1".to_string()),
                ("role".into(), "web".into()),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(describe(&agent), "web01  0.1.0  up 5s  role=web site=par1");
    }
}
