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

/// How to authenticate to the broker and check it: the flags `rexecd` and
/// `rexec` share. A user and password go in the URL (`nats://u:p@host`), a
/// broker token as its user (`nats://TOKEN@host`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrokerArgs {
    /// A NATS credentials file (JWT and NKey seed, as `nsc` writes it).
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// A file holding an NKey seed (SU...), for brokers that authorize NKeys.
    #[arg(
        long,
        value_name = "FILE",
        requires = "nats",
        conflicts_with = "nats_creds"
    )]
    pub nats_nkey: Option<std::path::PathBuf>,

    /// PEM CA certificate(s) the broker's TLS certificate must chain to
    /// (implies TLS; without it, a tls:// broker is checked against the
    /// system's roots).
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for brokers that verify clients (with --nats-key).
    #[arg(long, value_name = "FILE", requires_all = ["nats", "nats_key"])]
    pub nats_cert: Option<std::path::PathBuf>,

    /// The private key of --nats-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "nats_cert")]
    pub nats_key: Option<std::path::PathBuf>,
}

impl BrokerArgs {
    /// `options` with these credentials and TLS settings; a file that cannot
    /// be read is an error naming its flag.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
        servers: &[async_nats::ServerAddr],
    ) -> Result<async_nats::ConnectOptions, String> {
        // async-nats reads no credentials from the URL by itself.
        if let Some(server) = servers.iter().find(|s| s.has_user_pass()) {
            let user = server.username().unwrap_or_default().to_string();
            options = match server.password() {
                Some(password) => options.user_and_password(user, password.to_string()),
                None => options.token(user),
            };
        }
        if let Some(path) = &self.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("--nats-creds {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.nats_nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("--nats-nkey {}: {e}", path.display()))?;
            options = options.nkey(seed.trim().to_string());
        }
        for (flag, path) in [
            ("--nats-ca", &self.nats_ca),
            ("--nats-cert", &self.nats_cert),
            ("--nats-key", &self.nats_key),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
            }
        }
        if let Some(path) = &self.nats_ca {
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_cert, &self.nats_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
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
