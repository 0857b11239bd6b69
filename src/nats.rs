//! What rexecd agents and the `rexec` CLI agree on over NATS: subjects and
//! broker addresses. Message types are generated from proto/rexec/v1/nats.proto.

/// Every agent subscribes here and answers a request with its `AgentInfo`.
pub const DISCOVER_SUBJECT: &str = "rexec.v1.discover";

/// Where the agent called `name` takes `NatsExecRequest`s.
pub fn exec_subject(name: &str) -> String {
    format!("rexec.v1.{name}.exec")
}

/// The brokers of `--nats`, in the order given (one flag value, so clap
/// keeps it whole rather than as many values).
#[derive(Debug, Clone)]
pub struct Servers(pub Vec<async_nats::ServerAddr>);

/// `--nats URL[,URL...]`: one or more broker addresses (`nats://host:4222`,
/// `tls://host:4222`, `host:4222`), tried in turn on every (re)connect.
pub fn parse_servers(text: &str) -> Result<Servers, String> {
    let servers: Vec<async_nats::ServerAddr> = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse()
                .map_err(|e| format!("'{url}' is not a NATS address: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err("expected a NATS address (nats://HOST:PORT)".into());
    }
    Ok(Servers(servers))
}

/// The brokers for messages and logs, without any user:password in them.
pub fn describe_servers(servers: &[async_nats::ServerAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("{}://{}:{}", s.scheme(), s.host(), s.port()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_servers_are_split_on_commas() {
        let servers = parse_servers("nats://127.0.0.1:4222, 127.0.0.1:4223")
            .unwrap()
            .0;
        assert_eq!(servers.len(), 2);
        assert_eq!(
            describe_servers(&servers),
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
        );
    }

    #[test]
    fn passwords_stay_out_of_descriptions() {
        let servers = parse_servers("nats://alice:secret@127.0.0.1:4222")
            .unwrap()
            .0;
        assert!(!describe_servers(&servers).contains("secret"));
    }

    #[test]
    fn an_empty_or_bad_address_is_an_error() {
        assert!(parse_servers("").is_err());
        assert!(parse_servers(",").is_err());
        assert!(parse_servers("http://[::1").is_err());
    }
}
