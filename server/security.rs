//! Who may call, decided from the flags before the runtime starts: the
//! credentials (tokens file, mTLS, else the per-user local token), TLS, the
//! audit sink and run-as user. A combination that would expose more than
//! the flags say stops rexecd with exit 2 and a message naming the flag that
//! allows it; an insecure choice that was made explicitly is warned about on
//! every start, in the log and the audit log.

use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;

use crate::Args;
use crate::audit::Audit;
use crate::auth::{Credentials, SharedTokens, Tokens};
use crate::run_as::RunAs;
use crate::runner::Containment;
use crate::{local_token, tls};

pub struct Security {
    pub credentials: Credentials,
    pub tls: Option<Arc<ServerConfig>>,
    pub audit: Audit,
    pub run_as: Option<RunAs>,
    pub containment: Containment,
    /// `--metrics-listen` beside `--tokens-file`: scrapes must send one of its tokens.
    pub metrics_verifier: Option<crate::metrics::Verifier>,
}

impl Security {
    pub fn from_args(args: &Args) -> Result<Security, String> {
        let explicit_auth = args.tokens_file.is_some() || args.tls_client_ca.is_some();
        if !args.listen.ip().is_loopback() && !args.insecure_no_auth && !explicit_auth {
            return Err(format!(
                "refusing to listen on non-loopback {} without authentication; \
                 pass --tokens-file FILE, or --tls-client-ca FILE with --tls-cert/--tls-key (mTLS), \
                 or listen on 127.0.0.1, or pass --insecure-no-auth",
                args.listen
            ));
        }
        for (name, addr) in legacy_doors(args) {
            if !addr.ip().is_loopback() && !args.legacy_allow_remote {
                return Err(format!(
                    "refusing the {name} listener on non-loopback {addr}: the legacy protocols \
                     have no authentication; listen on 127.0.0.1, or pass --legacy-allow-remote"
                ));
            }
            // The local token is authentication too: without the flag, a default
            // rexecd with a legacy port would run commands for every local user.
            if !args.insecure_no_auth && !args.legacy_allow_anonymous {
                let auth = if explicit_auth {
                    "gRPC authentication"
                } else {
                    "the local token gRPC requires"
                };
                return Err(format!(
                    "refusing the {name} listener on {addr} beside {auth}: the legacy protocols \
                     have none, so every local user (and anyone who reaches it) could run \
                     commands as this user; pass --legacy-allow-anonymous to serve it anyway"
                ));
            }
        }
        let audit = match &args.audit_log {
            Some(path) => Audit::file(path)
                .map_err(|e| format!("cannot open --audit-log {}: {e}", path.display()))?,
            None => Audit::stderr(),
        };
        let tokens = match &args.tokens_file {
            Some(path) => {
                let tokens = Tokens::load(path).map_err(|e| format!("--tokens-file: {e}"))?;
                tracing::info!(names = tokens.count(), "bearer tokens loaded");
                Some(tokens)
            }
            None => None,
        };
        let local = tokens.is_none() && args.tls_client_ca.is_none() && !args.insecure_no_auth;
        let tokens = if local {
            Some(local_credential(args)?)
        } else {
            tokens
        }
        .map(SharedTokens::new);
        let from_file = tokens.as_ref().filter(|_| args.tokens_file.is_some());
        let metrics_verifier = metrics_verifier(args, from_file)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(
                cert,
                key,
                args.tls_client_ca.as_deref(),
            )?),
            _ => None,
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
        let security = Security {
            credentials: Credentials {
                tokens,
                client_certs: args.tls_client_ca.is_some(),
                local,
            },
            tls,
            audit,
            run_as,
            containment,
            metrics_verifier,
        };
        security.warn_about_choices(args);
        Ok(security)
    }

    fn warn_about_choices(&self, args: &Args) {
        let warn = |message: String| {
            tracing::warn!("{message}");
            self.audit.warning(&message);
        };
        if args.insecure_no_auth
            && self.credentials.tokens.is_none()
            && !self.credentials.client_certs
        {
            warn(format!(
                "--insecure-no-auth: no authentication on {}: anyone who can connect to it \
                 (every local user, and web pages through a browser) can run commands as this user",
                args.listen
            ));
        }
        if !args.listen.ip().is_loopback() && args.tokens_file.is_some() && self.tls.is_none() {
            warn(
                "bearer tokens will cross the network in clear text: add --tls-cert and --tls-key"
                    .into(),
            );
        }
        for (name, addr) in legacy_doors(args) {
            if args.legacy_allow_remote && !addr.ip().is_loopback() {
                let spoofing = if name == "legacy-udp" {
                    ", and its answers go to whatever source address a datagram claims"
                } else {
                    ""
                };
                warn(format!(
                    "--legacy-allow-remote: the {name} listener on {addr} has no authentication: \
                     anyone who can reach it can run commands as this user{spoofing}"
                ));
            }
            if args.legacy_allow_anonymous {
                warn(format!(
                    "--legacy-allow-anonymous: the {name} listener on {addr} has no \
                     authentication: every local user can run commands as this user through it, \
                     whatever gRPC requires"
                ));
            }
        }
    }
}

/// Metrics are served to anyone on loopback (no command, user or host name
/// is in them); off loopback only to scrapes that send a token of
/// `--tokens-file`, which is then required on any address.
fn metrics_verifier(
    args: &Args,
    tokens: Option<&SharedTokens>,
) -> Result<Option<crate::metrics::Verifier>, String> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    match tokens {
        Some(tokens) => {
            // The set in force at each scrape: a SIGHUP reload applies here too.
            let tokens = tokens.clone();
            Ok(Some(std::sync::Arc::new(move |presented: &[u8]| {
                tokens.current().verify(presented).is_some()
            })))
        }
        None if addr.ip().is_loopback() => Ok(None),
        None => Err(format!(
            "refusing metrics on non-loopback {addr} without authentication; pass \
             --tokens-file FILE (scrapes then send a bearer token), or listen on 127.0.0.1"
        )),
    }
}

/// Every legacy listener the flags ask for, named as in audit lines.
fn legacy_doors(args: &Args) -> impl Iterator<Item = (&'static str, std::net::SocketAddr)> + '_ {
    let prefixed = args.legacy_listen.map(|addr| ("legacy", addr));
    let compat = args
        .legacy_compat
        .iter()
        .map(|listen| (listen.dialect.listener(), listen.addr));
    prefixed.into_iter().chain(compat)
}

/// The default credential: the local token of the user rexecd runs as.
fn local_credential(args: &Args) -> Result<Tokens, String> {
    let path = &args.local_token_file;
    if path.as_os_str().is_empty() {
        return Err(
            "cannot place the local token: HOME is not set; pass --local-token-file FILE, \
             --tokens-file FILE or --insecure-no-auth"
                .into(),
        );
    }
    let token = local_token::load_or_create(path).map_err(|e| format!("local token: {e}"))?;
    let principal = local_token::principal();
    tracing::info!(
        path = %path.display(),
        %principal,
        "only clients with the local token may run commands (rexec on this host sends it by itself)"
    );
    Ok(Tokens::local(principal, token))
}
