//! One host of the fleet, kept as the user wrote it (that is the prefix)
//! beside the address to dial; `targets.rs` says which hosts there are.

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Exactly as written on the command line or in the file: the output prefix.
    pub name: String,
    /// What `Client::connect` dials: `host:port`, `[v6]:port` or `http://host:port`.
    pub addr: String,
}

impl Host {
    pub fn parse(text: &str) -> Result<Host, String> {
        let name = text.trim();
        if name.is_empty() {
            return Err("empty host name".into());
        }
        if name.chars().any(char::is_whitespace) {
            return Err(format!("invalid host '{name}': contains whitespace"));
        }
        Ok(Host {
            name: name.to_string(),
            addr: rexec::address::with_default_port(name),
        })
    }
}

/// The lines of a hosts file that say something, numbered from 1: `#`
/// starts a comment, blank lines are skipped.
pub fn meaningful_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(number, line)| {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        (!line.is_empty()).then_some((number + 1, line))
    })
}

/// Keeps the first of hosts that dial the same address (`web1` and
/// `web1:50051` are one host): the command runs once per machine.
pub fn dedup(hosts: Vec<Host>) -> Vec<Host> {
    let mut seen = std::collections::HashSet::new();
    hosts
        .into_iter()
        .filter(|host| seen.insert(host.addr.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> String {
        Host::parse(text).unwrap().addr
    }

    #[test]
    fn a_host_without_port_gets_the_default_port() {
        // The rule itself is `rexec::address`'s, tested there.
        assert_eq!(addr("web1"), "web1:50051");
        assert_eq!(addr("web1:7"), "web1:7");
    }

    #[test]
    fn the_name_is_kept_as_written() {
        let host = Host::parse(" web1 ").unwrap();
        assert_eq!(host.name, "web1");
        assert!(Host::parse("").is_err());
        assert!(Host::parse("a b").is_err());
    }

    #[test]
    fn hosts_file_skips_comments_and_blank_lines() {
        let text = "# fleet\n\nweb1\n  web2:7   # second\n\t\nhttp://web3\n";
        let lines: Vec<_> = meaningful_lines(text).collect();
        assert_eq!(lines, [(3, "web1"), (4, "web2:7"), (6, "http://web3")]);
    }

    #[test]
    fn duplicates_dialing_the_same_address_run_once() {
        let hosts = ["web1", "web1:50051", "web2", "web1"]
            .iter()
            .map(|h| Host::parse(h).unwrap())
            .collect();
        let names: Vec<_> = dedup(hosts).into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["web1", "web2"]);
    }
}
