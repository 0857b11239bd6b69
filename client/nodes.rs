//! `rexec nodes NODESET...`: the hosts a NodeSet names, groups resolved and
//! `-x` applied, as ClusterShell's `nodeset -f`/`-e`/`-c` print them; nothing runs.

use rexec::client::ExitStatus;
use rexec::ending::Ending;

use crate::fanout::fold::{fold, fold_counted};
use crate::fanout::targets::{self, Selection};

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// NodeSets, as for `rexec -w` (several are a union).
    #[arg(required = true, value_name = "NODESET")]
    sets: Vec<String>,

    /// Leave out the hosts of NODESET (repeatable).
    #[arg(short = 'x', long = "exclude", value_name = "NODESET")]
    exclude: Vec<String>,

    /// Print the folded set alone (`web[1-3]`), as nodeset -f.
    #[arg(short = 'f', long, conflicts_with_all = ["expand", "count"])]
    fold: bool,

    /// Print every host, space-separated, as nodeset -e.
    #[arg(short = 'e', long, conflicts_with = "count")]
    expand: bool,

    /// Print how many hosts, as nodeset -c.
    #[arg(short = 'c', long)]
    count: bool,
}

pub fn main(args: &NodesArgs) -> Ending {
    let selection = Selection {
        hosts: &[],
        nodesets: &args.sets,
        hosts_file: None,
        exclude: &args.exclude,
    };
    let hosts = match targets::select(&selection) {
        Ok(hosts) => hosts,
        Err(message) => return Ending::Usage(message),
    };
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let line = if args.count {
        hosts.len().to_string()
    } else if args.expand {
        names.join(" ")
    } else if args.fold {
        fold(&names)
    } else {
        fold_counted(&names)
    };
    match std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        format!("{line}\n").as_bytes(),
    ) {
        Ok(()) => Ending::Remote(ExitStatus::exited(0)),
        Err(e) => Ending::output(e),
    }
}
