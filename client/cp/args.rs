//! `rexec [FLAGS] cp [CP FLAGS] SRC... DEST`: finding `cp` after rexec's own
//! flags (whose values are skipped by what clap says about each flag), and
//! the flags `cp` takes, which include the connection and host flags so
//! they may come before or after `cp`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::connect::ConnectArgs;

/// Copy files and directory trees to and from rexecd hosts, as scp does.
///
/// A remote path starts with a colon (`:/etc/hosts`, `:` alone is the
/// remote user's home); the host comes from --addr, -H or -w. Local to
/// remote or remote to local; `-` is stdin or stdout for one file. DEST
/// that is an existing directory or ends in `/` means "into".
#[derive(Debug, Parser)]
#[command(
    name = "rexec cp",
    override_usage = "rexec [--addr ADDR | -H HOST... | -w NODESET] cp [-r] [-p] [-n] SRC... DEST",
    after_help = EXAMPLES
)]
pub struct CpArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub hosts: CopyHosts,

    /// Copy directories and everything under them; symlinks inside are
    /// copied as links, not followed.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,

    /// Keep each file's mode and modification time (without it: the
    /// source's mode minus the receiving side's umask, and the current time).
    #[arg(short = 'p', long)]
    pub preserve: bool,

    /// Never replace an existing file (the transfer fails naming it).
    #[arg(short = 'n', long)]
    pub no_clobber: bool,

    /// The digest each file is checked with: xxh3 (XXH3-128, about a
    /// fourteenth of SHA-256's CPU) or sha256.
    #[arg(long, value_enum, default_value_t = DigestArg::Xxh3, value_name = "DIGEST")]
    pub digest: DigestArg,

    /// No progress bar, even on a terminal.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// SRC... DEST: local paths and one side of `:REMOTE` paths.
    #[arg(value_name = "PATH", num_args = 2.., required = true)]
    pub paths: Vec<String>,
}

/// `--digest`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DigestArg {
    Xxh3,
    Sha256,
}

impl From<DigestArg> for rexec::files::Digest {
    fn from(arg: DigestArg) -> Self {
        match arg {
            DigestArg::Xxh3 => rexec::files::Digest::Xxh3128,
            DigestArg::Sha256 => rexec::files::Digest::Sha256,
        }
    }
}

/// The hosts to copy to or from; several make a fleet copy.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Hosts (copy to or from many)")]
pub struct CopyHosts {
    /// Copy to or from HOST (repeatable): host, host:port, [v6]:port.
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,

    /// The hosts of NODESET (repeatable), as clush -w: web[01-20], @group...
    #[arg(short = 'w', long = "nodes", value_name = "NODESET")]
    pub nodesets: Vec<String>,

    /// Every host listed in FILE (a host, address or NodeSet a line).
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,

    /// Leave out the hosts of NODESET (repeatable), as clush -x.
    #[arg(short = 'x', long = "exclude", value_name = "NODESET")]
    pub exclude: Vec<String>,
}

impl CopyHosts {
    pub fn wanted(&self) -> bool {
        !self.hosts.is_empty() || !self.nodesets.is_empty() || self.hosts_file.is_some()
    }
}

const EXAMPLES: &str = "\
Examples:
  rexec --addr web1 cp app.tar.gz :/tmp/         into /tmp on web1
  rexec --addr web1 cp -r -p site :/srv/www      the tree as /srv/www
  rexec --addr web1 cp :/var/log/syslog .        back here
  rexec -w 'web[01-20]' cp nginx.conf :/etc/nginx/
  rexec -w 'web[01-20]' cp :/etc/os-release got/ into got/HOST/os-release
  tar c dir | rexec --addr web1 cp - :/tmp/dir.tar";

/// When `cp` is the first word after rexec's own flags, the flags before it
/// and the words after it. `command` is rexec's clap definition, which
/// says which flags take a value (that value is never taken for `cp`).
pub fn split(
    args: &[OsString],
    command: &mut clap::Command,
) -> Option<(Vec<OsString>, Vec<OsString>)> {
    command.build();
    let takes_value = |found: Option<&clap::Arg>| found.map(|arg| arg.get_action().takes_values());
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_str()?;
        if word == "--" {
            return None;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, _)) => (name, true),
                None => (long, false),
            };
            let arg = command.get_arguments().find(|arg| {
                arg.get_long() == Some(name)
                    || arg.get_all_aliases().is_some_and(|a| a.contains(&name))
            });
            i += if takes_value(arg)? && !inline { 2 } else { 1 };
            continue;
        }
        if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut skip = 1;
            for (at, short) in shorts.char_indices() {
                let arg = command
                    .get_arguments()
                    .find(|arg| arg.get_short() == Some(short));
                if takes_value(arg)? {
                    // The value is the rest of this word, or the next word.
                    if at + short.len_utf8() == shorts.len() {
                        skip = 2;
                    }
                    break;
                }
            }
            i += skip;
            continue;
        }
        return (word == "cp").then(|| (args[1..i].to_vec(), args[i + 1..].to_vec()));
    }
    None
}
