//! SIGHUP: re-read `--tokens-file` and reopen `--audit-log`, without a
//! restart, and say in one log line what changed. A tokens file that no
//! longer loads keeps the set in force (a typo must not lock everyone out).

use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};

use crate::audit::Audit;
use crate::auth::{SharedTokens, TokenChanges, Tokens};

/// What a SIGHUP reloads.
pub struct Reloadable {
    /// `--tokens-file` and the set loaded from it (not the local token,
    /// which is not a file an operator edits).
    pub tokens: Option<(PathBuf, SharedTokens)>,
    pub audit: Audit,
}

impl Reloadable {
    /// Installs the SIGHUP handler now (before the readiness line: SIGHUP's
    /// default action ends the process) and returns the task that serves it.
    pub fn watch(self) -> std::io::Result<impl Future<Output = ()>> {
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(async move {
            while hangup.recv().await.is_some() {
                self.reload();
            }
        })
    }

    fn reload(&self) {
        let mut done = Vec::new();
        let mut failed = false;
        if let Some((path, shared)) = &self.tokens {
            match Tokens::load(path) {
                Ok(tokens) => {
                    let changes = shared.current().changes_to(&tokens);
                    done.push(format!(
                        "tokens reloaded from {}: {} names, {}",
                        path.display(),
                        tokens.count(),
                        describe(&changes)
                    ));
                    shared.replace(tokens);
                }
                Err(e) => {
                    failed = true;
                    done.push(format!(
                        "tokens file not reloaded, the previous {} names stay in force: {e}",
                        shared.current().count()
                    ));
                }
            }
        }
        match self.audit.reopen() {
            Ok(Some(path)) => done.push(format!("audit log reopened at {}", path.display())),
            Ok(None) => {}
            Err(e) => {
                failed = true;
                done.push(format!(
                    "audit log not reopened, lines still go to the old file: {e}"
                ));
            }
        }
        if done.is_empty() {
            done.push("nothing to reload (no --tokens-file, no --audit-log)".into());
        }
        let line = format!("SIGHUP: {}", done.join("; "));
        if failed {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

fn describe(changes: &TokenChanges) -> String {
    let mut parts = Vec::new();
    for (what, names) in [
        ("added", &changes.added),
        ("removed", &changes.removed),
        ("new token for", &changes.changed),
    ] {
        if !names.is_empty() {
            parts.push(format!("{what} {}", names.join(", ")));
        }
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(", ")
    }
}
