//! Which hosts a fan-out runs on, written the way clush and pdsh users write
//! them: `-H` names, `-w` NodeSets (`web[01-20]`, `rack[1-2]-n[1-4]`,
//! `10.0.0.[1-50]`, `@group`, with `,` `!` `&` `^`), `--hosts-file` lines of
//! either kind, minus `-x`. NodeSets and ClusterShell's group files are the
//! `nodeset` crate's; this file guards it and turns names into hosts.

use nodeset::{NodeSet, Parser, Resolver};

use super::fold::quietly;
use super::hosts::{self, Host};

/// The most hosts one fan-out takes: `web[1-99999999]` is a typo, not a fleet.
pub const MAX_HOSTS: usize = 100_000;

/// ClusterShell's group sources, read on first use of `@`: groups.conf,
/// groups.conf.d and groups.d from /etc/clustershell,
/// ~/.local/etc/clustershell and $XDG_CONFIG_HOME/clustershell (else
/// ~/.config/clustershell), as clush reads them.
#[derive(Default)]
pub struct Groups {
    resolver: Option<Resolver>,
}

impl Groups {
    fn resolver(&mut self) -> Result<&Resolver, String> {
        if self.resolver.is_none() {
            let resolver = guarded(Resolver::from_config)
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("cannot read the ClusterShell group configuration: {e}"))?;
            self.resolver = Some(resolver);
        }
        Ok(self.resolver.get_or_insert_with(Resolver::default))
    }

    /// The names `text` stands for, sorted as the crate orders them.
    pub fn expand(&mut self, text: &str) -> Result<NodeSet, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty NodeSet".into());
        }
        let parsed = if text.contains('@') {
            let resolver = self.resolver()?;
            guarded(|| Parser::with_resolver(resolver, None).parse(text))
        } else {
            guarded(|| text.parse::<NodeSet>())
        };
        let set = parsed
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| format!("invalid NodeSet '{text}': {e}"))?;
        if set.is_empty() {
            return Err(format!(
                "'{text}' names no hosts{}",
                if text.contains('@') {
                    " (is the group defined in ClusterShell's groups.conf or groups.d?)"
                } else {
                    ""
                }
            ));
        }
        if set.len() > MAX_HOSTS {
            return Err(format!(
                "'{text}' names {} hosts; one fan-out takes at most {MAX_HOSTS}",
                set.len()
            ));
        }
        Ok(set)
    }

    /// The hosts of a NodeSet, each with rexecd's port unless it names one.
    pub fn hosts(&mut self, text: &str) -> Result<Vec<Host>, String> {
        self.expand(text)?
            .iter()
            .map(|name| Host::parse(&name))
            .collect()
    }
}

/// Runs the crate where it might panic (it does on a `/0` step, for one):
/// a panic becomes an error, with nothing on stderr.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    quietly(f).ok_or_else(|| "the NodeSet parser failed on it".to_string())
}

/// A hosts file line is a NodeSet unless it is an address the NodeSet syntax
/// cannot hold: a URL (`http://web1`) or a bracketed IPv6 address (`[::1]:7`).
fn is_plain_address(line: &str) -> bool {
    line.contains("://") || line.starts_with('[')
}

/// Hosts from a hosts file: one host, address or NodeSet a line; `#` starts
/// a comment; blank lines are skipped. Errors name the file and the line.
pub fn read_hosts_file(groups: &mut Groups, path: &std::path::Path) -> Result<Vec<Host>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read hosts file {}: {e}", path.display()))?;
    let mut all = Vec::new();
    for (number, line) in hosts::meaningful_lines(&text) {
        let parsed = if is_plain_address(line) {
            Host::parse(line).map(|host| vec![host])
        } else {
            groups.hosts(line)
        };
        let hosts = parsed.map_err(|e| format!("{}: line {number}: {e}", path.display()))?;
        all.extend(hosts);
    }
    if all.is_empty() {
        return Err(format!("no hosts in {}", path.display()));
    }
    Ok(all)
}

/// What names the fleet, from the command line.
pub struct Selection<'a> {
    pub hosts: &'a [String],
    pub nodesets: &'a [String],
    pub hosts_file: Option<&'a std::path::Path>,
    pub exclude: &'a [String],
}

/// The fleet: `-H`, then `-w`, then the hosts file, each host once (the
/// first spelling wins), less every host `-x` names (compared by address, so
/// `-x web1` also drops `web1:50051`).
pub fn select(selection: &Selection<'_>) -> Result<Vec<Host>, String> {
    let mut groups = Groups::default();
    let mut all = Vec::new();
    for text in selection.hosts {
        all.push(Host::parse(text).map_err(|e| format!("-H {text}: {e}"))?);
    }
    for text in selection.nodesets {
        all.extend(groups.hosts(text).map_err(|e| format!("-w {text}: {e}"))?);
    }
    if let Some(path) = selection.hosts_file {
        all.extend(read_hosts_file(&mut groups, path)?);
    }
    let mut excluded = std::collections::HashSet::new();
    for text in selection.exclude {
        let hosts = groups.hosts(text).map_err(|e| format!("-x {text}: {e}"))?;
        excluded.extend(hosts.into_iter().map(|host| host.addr));
    }
    let fleet: Vec<Host> = hosts::dedup(all)
        .into_iter()
        .filter(|host| !excluded.contains(&host.addr))
        .collect();
    if fleet.is_empty() {
        return Err("no hosts left to run on (every one is excluded by -x)".into());
    }
    if fleet.len() > MAX_HOSTS {
        return Err(format!(
            "{} hosts; one fan-out takes at most {MAX_HOSTS}",
            fleet.len()
        ));
    }
    Ok(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        Groups::default()
            .hosts(text)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    #[test]
    fn nodesets_expand_as_clush_writes_them() {
        assert_eq!(names("web[01-03]"), ["web01", "web02", "web03"]);
        assert_eq!(names("web[1-3,7]").len(), 4);
        assert_eq!(names("rack[1-2]-n[1-2]").len(), 4);
        assert_eq!(names("10.0.0.[1-50]").len(), 50);
        assert_eq!(names("web[1-9]!web[2-8]"), ["web1", "web9"]);
        assert_eq!(names("web[1-5]&web[5-9]"), ["web5"]);
        assert_eq!(names("web[1-3]^web[2-4]"), ["web1", "web4"]);
        let hosts = Groups::default().hosts("127.0.1.[1-2]:7000").unwrap();
        assert_eq!(hosts[0].addr, "127.0.1.1:7000");
        let hosts = Groups::default().hosts("web1").unwrap();
        assert_eq!(hosts[0].addr, "web1:50051");
    }

    #[test]
    fn bad_nodesets_are_errors_never_panics() {
        for bad in [
            "",
            "a[",
            "x]",
            "a[5-1]",
            "a[1-5/0]",
            "a[1-99999999999]",
            "a[1-200000]",
        ] {
            assert!(Groups::default().expand(bad).is_err(), "{bad}");
        }
    }
}
