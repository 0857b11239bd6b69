//! `rexec cp`: files and trees to and from one host or a fleet, over the
//! Files API, as scp and pscp/pslurp do. The file work itself (walking,
//! digests, temporary names, placing) is `rexec::files`, shared with rexecd.
//!
//! - `args`: the flags, and finding `cp` after rexec's own.
//! - `upload`: local to every host, the source read once.
//! - `download`: every host to local (`DEST/HOST/...` for a fleet).
//! - `report`: progress bar, per-host results, summary, exit code.

mod args;
mod download;
mod report;
mod upload;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use rexec::ending::Ending;

use crate::fanout::hosts::Host;
use crate::fanout::targets;
pub use args::split;

/// What the flags say to do.
pub struct Plan {
    pub hosts: Vec<Host>,
    /// More than one host, or -H/-w given: per-host prefixes and a summary.
    pub fleet: bool,
    pub recursive: bool,
    pub preserve: bool,
    pub no_clobber: bool,
    /// The digest every file is checked with.
    pub digest: rexec::files::Digest,
    pub progress: bool,
}

/// Runs `rexec [BEFORE] cp AFTER`.
pub fn main(before: Vec<OsString>, after: Vec<OsString>) -> ExitCode {
    let words = std::iter::once(OsString::from("rexec cp"))
        .chain(before)
        .chain(after);
    let cli = match args::CpArgs::try_parse_from(words) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let ending = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Ending::failed(format!("cannot start runtime: {e}")),
    };
    crate::exit_with(ending)
}

async fn run(cli: args::CpArgs) -> Ending {
    let options = match cli.connect.options() {
        Ok(options) => options,
        Err(ending) => return ending,
    };
    let fleet = cli.hosts.wanted();
    let hosts = if fleet {
        let selection = targets::Selection {
            hosts: &cli.hosts.hosts,
            nodesets: &cli.hosts.nodesets,
            hosts_file: cli.hosts.hosts_file.as_deref(),
            exclude: &cli.hosts.exclude,
        };
        match targets::select(&selection) {
            Ok(hosts) => hosts,
            Err(message) => return Ending::Usage(message),
        }
    } else {
        match Host::parse(&cli.connect.addr) {
            Ok(host) => vec![host],
            Err(message) => return Ending::Usage(format!("--addr: {message}")),
        }
    };
    let (dest, sources) = match cli.paths.split_last() {
        Some((dest, sources)) => (dest.clone(), sources.to_vec()),
        None => return Ending::usage("cp needs SRC... DEST"),
    };
    let remote = |path: &String| path.starts_with(':');
    let plan = Plan {
        hosts,
        fleet,
        recursive: cli.recursive,
        preserve: cli.preserve,
        no_clobber: cli.no_clobber,
        digest: cli.digest.into(),
        progress: !cli.quiet,
    };
    let interrupted = tokio::signal::ctrl_c();
    let copy = async {
        match (sources.iter().all(remote), remote(&dest)) {
            (false, true) if sources.iter().any(remote) => Ending::usage(
                "cp copies local to remote or remote to local: every SRC on the same side",
            ),
            (false, true) => upload::run(&plan, &options, &sources, &dest[1..]).await,
            (true, false) => {
                let sources: Vec<String> = sources.iter().map(|s| s[1..].to_string()).collect();
                download::run(&plan, &options, &sources, &dest).await
            }
            (true, true) => Ending::usage(
                "cp between two remote paths is not supported: copy through a local directory",
            ),
            (false, false) => Ending::usage(
                "cp needs one side remote: write remote paths with a leading colon, as :/tmp/x",
            ),
        }
    };
    tokio::select! {
        ending = copy => ending,
        // Dropping the copy cancels every call (the servers remove what
        // they made) and every local receiver (which removes its own).
        _ = interrupted => Ending::Interrupted,
    }
}
