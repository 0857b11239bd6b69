//! What `rexec cp` tells the user: a progress bar on a terminal, one line
//! per host for a fleet, the summary of failures, and the exit code (0; 1
//! when a transfer failed; 255 when a host could not be reached or refused
//! the credentials).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rexec::client::{Error, ExitStatus};
use rexec::ending::{Ending, FAILED};

use crate::fanout::fold::{fold, fold_counted};

/// Bytes moved, as a bar (size known) or a counter with its rate; drawn
/// only when stderr is a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(wanted: bool, total: Option<u64>) -> Self {
        let target = if wanted && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        let template = match total {
            Some(_) => "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta}",
            None => "{bytes} {binary_bytes_per_sec} {elapsed}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    pub fn add(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Why a host's copy failed.
pub enum Failure {
    /// The host could not be reached or refused the call itself (exit 255).
    Host(String),
    /// The transfer failed: a path and a reason (exit 1).
    Transfer(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Host(message) | Failure::Transfer(message) => message,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        use tonic::Code::*;
        match error.code() {
            None | Some(Unauthenticated | Unavailable | Unimplemented | Unknown | Internal) => {
                Failure::Host(error.to_string())
            }
            Some(_) => Failure::Transfer(error.to_string()),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::from(Error::Status(status))
    }
}

/// Each host's outcome: what it did, or why it failed.
pub type Outcome = (String, Result<String, Failure>);

/// Prints the outcomes and says how rexec ends. One host: nothing on
/// success (as cp), the reason on failure. A fleet: `HOST | what` lines on
/// stdout, then a summary on stderr of the hosts that failed.
pub fn finish(outcomes: &[Outcome], fleet: bool) -> Ending {
    if !fleet {
        return match outcomes.first() {
            Some((_, Ok(_))) | None => Ending::Remote(ExitStatus::exited(0)),
            Some((_, Err(Failure::Host(message)))) => Ending::failed(message.clone()),
            Some((_, Err(Failure::Transfer(message)))) => {
                eprintln!("rexec: {message}");
                Ending::Remote(ExitStatus::exited(1))
            }
        };
    }
    let mut copied = Vec::new();
    let mut failed = Vec::new();
    for (host, outcome) in outcomes {
        match outcome {
            Ok(what) => {
                println!("{host} | {what}");
                copied.push(host.as_str());
            }
            Err(failure) => failed.push((host.as_str(), failure)),
        }
    }
    if failed.is_empty() {
        return Ending::Remote(ExitStatus::exited(0));
    }
    let mut text = format!(
        "rexec: {} of {} hosts failed:\n",
        failed.len(),
        outcomes.len()
    );
    if !copied.is_empty() {
        text.push_str(&format!("  copied: {}\n", fold_counted(&copied)));
    }
    // Hosts that failed the same way are folded together.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (host, failure) in &failed {
        let message = failure.message();
        match groups.iter_mut().find(|(m, _)| *m == message) {
            Some((_, hosts)) => hosts.push(host),
            None => groups.push((message, vec![host])),
        }
    }
    for (message, hosts) in &groups {
        let hosts = match hosts.len() {
            1 => fold(hosts),
            _ => fold_counted(hosts),
        };
        text.push_str(&format!("  {hosts}: {message}\n"));
    }
    eprint!("{text}");
    let unreachable = failed.iter().any(|(_, f)| matches!(f, Failure::Host(_)));
    Ending::Remote(ExitStatus::exited(if unreachable {
        FAILED.into()
    } else {
        1
    }))
}

/// `3 entries, 1.5 MiB` for a host's line.
pub fn amount(entries: u64, bytes: u64) -> String {
    let entries = match entries {
        1 => "1 entry".to_string(),
        n => format!("{n} entries"),
    };
    format!("{entries}, {}", indicatif::BinaryBytes(bytes))
}
