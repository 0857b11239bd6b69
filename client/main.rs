//! `rexec`: run a command on a remote rexecd and get its output and exit code,
//! as `ssh host command` does.

mod bench;
mod connect;
mod cp;
mod fanout;
mod interrupt;
mod legacy;
mod local_tty;
mod man_pages;
mod nats;
mod nodes;
mod output;
mod quote;
mod repl;
mod session;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use rexec::client::{Client, Command};
use rexec::ending::Ending;

use crate::interrupt::Interrupts;
use crate::output::Output;

/// Run a command on a remote host through rexecd, as `ssh host command` does.
///
/// WORDS are joined by spaces and run by the remote shell. Options go before
/// `--` or the first word; everything after goes to the remote side untouched.
/// With no WORDS, rexec reads one command a line (a REPL). The exit code is
/// the remote command's; 128+N when signal N killed it; 130 after Ctrl-C
/// twice; 2 for bad flags; 255 when rexec itself failed.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Run a command on a remote host through rexecd, as `ssh host command` does.",
    long_about,
    override_usage = "rexec [OPTIONS] [--] WORDS...\n       \
                      rexec [OPTIONS]                  (a REPL: one command a line)\n       \
                      rexec -w NODESET [-x NODESET] [--] WORDS...   (many hosts)\n       \
                      rexec [--addr A | -H ... | -w NODESET] cp [-r] [-p] SRC... DEST\n       \
                      rexec bench|nodes|completions ...",
    after_long_help = EXAMPLES,
    // Words that merely start like a subcommand stay a remote command: only
    // the first word is checked, never after `--`, and `help` is not one.
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(flatten)]
    connect: connect::ConnectArgs,

    /// Run WORDS directly as argv, without the remote shell.
    #[arg(long)]
    no_shell: bool,

    /// Set an environment variable for the remote command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Remote working directory.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,

    /// Kill the remote command after this long (500ms, 10s, 1m30s).
    #[arg(long, value_name = "DURATION", value_parser = rexec::units::parse_duration)]
    timeout: Option<Duration>,

    /// Send no stdin, even when local stdin is a pipe or file (as ssh -n).
    #[arg(short = 'n', conflicts_with = "interactive")]
    no_stdin: bool,

    /// Stream local stdin even when it is a terminal (as kubectl exec -i).
    /// A pipe or file is always streamed.
    #[arg(short = 'i', long)]
    interactive: bool,

    /// Run on a remote pseudo-terminal, with the local terminal in raw mode
    /// (as ssh -t). With no WORDS, opens the remote user's login shell.
    #[arg(short = 't', long, conflicts_with = "legacy")]
    tty: bool,

    /// Transcode remote output from this encoding to UTF-8 (gbk, cp936,
    /// shift_jis, latin1...).
    #[arg(long, value_name = "ENC")]
    encoding: Option<String>,

    /// Use rexecd's legacy raw-TCP listener (`--legacy-listen`); --addr is its
    /// HOST:PORT, and --cwd, --env, --no-shell are folded into the command line.
    #[arg(long)]
    legacy: bool,

    /// The remote command.
    #[arg(trailing_var_arg = true, value_name = "WORDS")]
    words: Vec<String>,

    #[command(flatten)]
    fleet: fanout::FleetArgs,

    #[command(flatten)]
    nats: nats::NatsArgs,

    #[command(subcommand)]
    tool: Option<Tool>,
}

const EXAMPLES: &str = "\
Examples:
  rexec -- uptime                                  run on 127.0.0.1:50051
  rexec --addr web1 -- 'df -h | grep /data'        port 50051 unless named
  tar c dir | rexec --addr web1 -- tar x -C /tmp   stdin is streamed
  rexec -t --addr web1                             a login shell, as `ssh web1`
  rexec --addr https://web1:50051 --ca ca.pem -- id
  rexec -w 'web[01-20]' -x web07 -- systemctl is-active nginx
  rexec nodes @web                                 the hosts a group names
  rexec --nats nats://broker:4222 --discover       the agents on a NATS broker
  rexec bench -c 64 -n 10000 -- true

The manual is README.md, beside rexec's source.";

/// Local tools; a remote command with the same name runs with `rexec -- NAME`.
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Print a completion script for SHELL, e.g. `rexec completions bash >
    /// /etc/bash_completion.d/rexec`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a command many times over shared connections and report execs/s,
    /// MB/s and latency: `rexec bench -c 64 -n 10000 -- true`.
    Bench(Box<bench::BenchArgs>),
    /// Print the hosts a NodeSet names, folded, with their count (`-e`
    /// expands, `-c` counts): `rexec nodes 'web[01-20]!web07'`.
    Nodes(nodes::NodesArgs),
    /// Copy files and trees to and from hosts, as scp: `rexec --addr web1
    /// cp -r site :/srv/www`; `rexec cp --help` for more.
    Cp {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

/// Writes a completion script to stdout; an error (a closed pipe) is a failure, not a panic.
fn print_completions(shell: clap_complete::Shell) -> Ending {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rexec", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => Ending::Remote(rexec::client::ExitStatus::exited(0)),
        Err(e) => Ending::output(e),
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{text}'")),
    }
}

fn main() -> ExitCode {
    let mut words = std::env::args_os().skip(1);
    if words.next().is_some_and(|word| word == "--man-pages") {
        return man_pages::main(Cli::command(), words);
    }
    let args: Vec<_> = std::env::args_os().collect();
    if let Some((before, after)) = cp::split(&args, &mut Cli::command()) {
        return cp::main(before, after);
    }
    let cli = Cli::parse();
    let ending = match cli.tool {
        Some(Tool::Completions { shell }) => print_completions(shell),
        Some(Tool::Bench(args)) => return bench::main(*args),
        Some(Tool::Nodes(args)) => nodes::main(&args),
        // Taken before parsing, by `cp::split`.
        Some(Tool::Cp { .. }) => Ending::usage("cp: unexpected arguments"),
        None => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run(cli)),
            Err(e) => Ending::failed(format!("cannot start runtime: {e}")),
        },
    };
    exit_with(ending)
}

/// Says why rexec ends, when there is something to say, and exits with the
/// ending's code: the last step of every `rexec` run.
pub fn exit_with(ending: Ending) -> ExitCode {
    if let Some(message) = ending.message() {
        eprintln!("rexec: {message}");
    }
    ExitCode::from(ending.code())
}

async fn run(cli: Cli) -> Ending {
    let encoding = match cli.encoding.as_deref().map(output::encoding).transpose() {
        Ok(encoding) => encoding,
        Err(message) => return Ending::Usage(message),
    };
    let mut output = Output::new(encoding);
    let mut command = if cli.no_shell {
        Command::argv(cli.words.iter().cloned())
    } else {
        Command::shell(cli.words.join(" "))
    };
    for (name, value) in &cli.env {
        command = command.env(name, value);
    }
    if let Some(cwd) = &cli.cwd {
        command = command.cwd(cwd);
    }
    if let Some(timeout) = cli.timeout {
        command = command.timeout(timeout);
    }
    if let Some(servers) = &cli.nats.nats {
        let timeout = cli.connect.connect_timeout;
        let client = match nats::connect(&servers.0, &cli.nats.broker, timeout).await {
            Ok(client) => client,
            Err(ending) => return ending,
        };
        if let Some(nodeset) = &cli.nats.discover {
            return nats::discover::run(&client, nodeset.as_deref(), timeout).await;
        }
        if !cli.fleet.wanted() {
            return Ending::usage(
                "--nats needs the agents' names (-w NODESET) or --discover: \
                 rexec --nats URL -w 'web[01-20]' -- uptime",
            );
        }
        // A token goes on the bus only when given: never the local one.
        let token = match cli.connect.options() {
            Ok(options) => options.token,
            Err(ending) => return ending,
        };
        let bus = nats::exec::Bus::new(client, token, cli.fleet.parallel as usize);
        let options = rexec::client::ClientOptions {
            connect_timeout: timeout,
            ..Default::default()
        };
        let stdin = !cli.no_stdin && !std::io::stdin().is_terminal();
        let transport = fanout::Transport::Nats(std::sync::Arc::new(bus));
        return fanout::run(&cli.fleet, transport, &options, command, stdin, encoding).await;
    }
    if cli.legacy {
        let (addr, timeout) = (&cli.connect.addr, cli.connect.connect_timeout);
        let ending = legacy::run(addr, timeout, &command, !cli.no_stdin, &mut output).await;
        return said_timed_out(ending, cli.timeout);
    }
    let options = match cli.connect.options() {
        Ok(options) => options,
        Err(ending) => return ending,
    };
    if cli.fleet.wanted() {
        let stdin = !cli.no_stdin && !std::io::stdin().is_terminal();
        let transport = fanout::Transport::Grpc;
        return fanout::run(&cli.fleet, transport, &options, command, stdin, encoding).await;
    }
    let mut client = match Client::connect(&cli.connect.addr, &options).await {
        Ok(client) => client,
        Err(e) => return e.into(),
    };
    if command.is_empty() && !cli.tty {
        return repl::run(&mut client, command, &mut output).await;
    }
    let options = session::SessionOptions {
        stream_stdin: !cli.no_stdin
            && (cli.interactive || cli.tty || !std::io::stdin().is_terminal()),
        tty: cli.tty,
    };
    let mut interrupts = match Interrupts::new() {
        Ok(interrupts) => interrupts,
        Err(e) => return Ending::failed(format!("cannot take over Ctrl-C: {e}")),
    };
    let ended = session::run(&mut client, command, options, &mut output, &mut interrupts).await;
    said_timed_out(ended.map_or_else(|e| e, Ending::Remote), cli.timeout)
}

/// Says on stderr that the remote command ran out of `--timeout`.
fn said_timed_out(ending: Ending, timeout: Option<Duration>) -> Ending {
    if let Ending::Remote(status) = &ending
        && status.timed_out
    {
        let after = timeout.map(|t| format!(" after {t:?}")).unwrap_or_default();
        eprintln!("rexec: remote command timed out{after}");
    }
    ending
}
