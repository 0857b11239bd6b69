//! `--gather` (clush -b, dshbak -c): each distinct output printed once under
//! the folded set of hosts that produced it, largest group first; `--diff`
//! shows the other groups as unified diffs against the most common one.
//!
//! stdout and stderr are gathered apart (a host's groups on each stream are
//! independent), so stdout stays clean for a pipe. Identical outputs are
//! found by hash and then compared, so a thousand copies are held once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;

use super::collector::text_or_base64;
use super::fold::fold_counted;

/// What one host printed on both streams, each cut at the `--json` cap.
#[derive(Debug, Default)]
pub struct Kept {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// One distinct output and the hosts (by index) that printed it.
#[derive(Debug)]
pub struct Group {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    pub hosts: Vec<usize>,
}

/// Every distinct output of one stream. Hosts that printed nothing on it
/// are in no group, as in clush.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Vec<Group>,
    by_hash: HashMap<u64, Vec<usize>>,
}

impl Groups {
    pub fn add(&mut self, host: usize, bytes: Vec<u8>, truncated: bool) {
        if bytes.is_empty() {
            return;
        }
        let mut hasher = DefaultHasher::new();
        (&bytes, truncated).hash(&mut hasher);
        let same = self.by_hash.entry(hasher.finish()).or_default();
        let found = same.iter().copied().find(|&g| {
            let group = &self.groups[g];
            group.truncated == truncated && group.bytes == bytes
        });
        match found {
            Some(g) => self.groups[g].hosts.push(host),
            None => {
                same.push(self.groups.len());
                self.groups.push(Group {
                    bytes,
                    truncated,
                    hosts: vec![host],
                });
            }
        }
    }

    /// Largest group first; equal sizes in the order of their first host.
    pub fn ordered(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.groups.iter().collect();
        groups.sort_by_key(|g| {
            let first = g.hosts.iter().min().copied().unwrap_or(usize::MAX);
            (std::cmp::Reverse(g.hosts.len()), first)
        });
        groups
    }
}

/// Both streams' groups, filled as hosts finish.
#[derive(Debug, Default)]
pub struct Gathered {
    pub stdout: Groups,
    pub stderr: Groups,
}

impl Gathered {
    pub fn add(&mut self, host: usize, kept: Kept) {
        self.stdout.add(host, kept.stdout, kept.stdout_truncated);
        self.stderr.add(host, kept.stderr, kept.stderr_truncated);
    }
}

const RULE: &str = "---------------";

/// The folded, counted host set of a group, e.g. `127.0.1.[1-60] (60)`;
/// `names` are indexed by host.
fn hosts_of(group: &Group, names: &[String]) -> String {
    let mut hosts = group.hosts.clone();
    hosts.sort_unstable();
    let hosts: Vec<&str> = hosts.iter().map(|&h| names[h].as_str()).collect();
    let cut = if group.truncated {
        ", output cut at 16 MiB"
    } else {
        ""
    };
    format!("{}{cut}", fold_counted(&hosts))
}

/// Writes one stream's groups as clush -b does: a header naming the hosts,
/// then their output. With `diff`, groups after the first are unified diffs
/// against it (`--- FIRST`, `+++ THIS`).
pub fn write_text(
    groups: &Groups,
    names: &[String],
    diff: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let ordered = groups.ordered();
    let Some(first) = ordered.first() else {
        return Ok(());
    };
    let first_hosts = hosts_of(first, names);
    for (rank, group) in ordered.iter().enumerate() {
        let hosts = hosts_of(group, names);
        if diff && rank > 0 {
            out.write_all(unified_diff(first, group, &first_hosts, &hosts).as_bytes())?;
            continue;
        }
        write!(out, "{RULE}\n{hosts}\n{RULE}\n")?;
        out.write_all(&group.bytes)?;
        if !group.bytes.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// A unified diff (3 lines of context) from `from`'s output to `to`'s; bytes
/// that are not UTF-8 are compared as text with U+FFFD.
fn unified_diff(from: &Group, to: &Group, from_hosts: &str, to_hosts: &str) -> String {
    let old = String::from_utf8_lossy(&from.bytes);
    let new = String::from_utf8_lossy(&to.bytes);
    similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(from_hosts, to_hosts)
        .to_string()
}

/// One stream's groups for the `--json` summary record: `hosts` (folded),
/// `count`, `output` (text, or base64 with `output_base64` when asked),
/// `truncated`, and with `diff` a `diff` against the first group.
pub fn json(groups: &Groups, names: &[String], diff: bool, base64: bool) -> serde_json::Value {
    let ordered = groups.ordered();
    let folded = |g: &Group| {
        let mut hosts = g.hosts.clone();
        hosts.sort_unstable();
        let hosts: Vec<&str> = hosts.iter().map(|&h| names[h].as_str()).collect();
        super::fold::fold(&hosts)
    };
    let first = ordered.first().map(|g| (*g, hosts_of(g, names)));
    let values: Vec<serde_json::Value> = ordered
        .iter()
        .enumerate()
        .map(|(rank, group)| {
            let (output, encoded) = text_or_base64(&group.bytes, base64);
            let mut value = serde_json::json!({
                "hosts": folded(group),
                "count": group.hosts.len(),
                "output": output,
                "truncated": group.truncated,
            });
            if encoded {
                value["output_base64"] = true.into();
            }
            if let (true, Some((from, from_hosts))) = (diff && rank > 0, &first) {
                let to_hosts = hosts_of(group, names);
                value["diff"] = unified_diff(from, group, from_hosts, &to_hosts).into();
            }
            value
        })
        .collect();
    values.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("127.0.1.{i}")).collect()
    }

    fn gathered(outputs: &[&str]) -> Groups {
        let mut groups = Groups::default();
        for (host, output) in outputs.iter().enumerate() {
            groups.add(host, output.as_bytes().to_vec(), false);
        }
        groups
    }

    #[test]
    fn identical_outputs_are_held_once_largest_group_first() {
        let groups = gathered(&["b\n", "a\n", "a\n", "", "a\n", "b\n", "c"]);
        let ordered = groups.ordered();
        let sizes: Vec<_> = ordered
            .iter()
            .map(|g| (g.bytes.clone(), g.hosts.len()))
            .collect();
        assert_eq!(
            sizes,
            [
                (b"a\n".to_vec(), 3),
                (b"b\n".to_vec(), 2),
                (b"c".to_vec(), 1)
            ]
        );
        let mut text = Vec::new();
        write_text(&groups, &names(7), false, &mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "---------------\n127.0.1.[2-3,5] (3)\n---------------\na\n\
             ---------------\n127.0.1.[1,6] (2)\n---------------\nb\n\
             ---------------\n127.0.1.7 (1)\n---------------\nc\n"
        );
    }

    #[test]
    fn a_truncated_output_is_not_the_same_as_a_whole_one() {
        let mut groups = Groups::default();
        groups.add(0, b"x".to_vec(), false);
        groups.add(1, b"x".to_vec(), true);
        assert_eq!(groups.ordered().len(), 2);
    }

    #[test]
    fn diff_shows_other_groups_against_the_most_common() {
        let groups = gathered(&["a\nb\nc\n", "a\nb\nc\n", "a\nB\nc\n"]);
        let mut text = Vec::new();
        write_text(&groups, &names(3), true, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("---------------\n127.0.1.[1-2] (2)\n---------------\na\nb\nc\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "--- 127.0.1.[1-2] (2)\n+++ 127.0.1.3 (1)\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
            ),
            "{text}"
        );
        let json = json(&groups, &names(3), true, false);
        assert_eq!(json[0]["hosts"], "127.0.1.[1-2]");
        assert!(json[0].get("diff").is_none());
        assert!(json[1]["diff"].as_str().unwrap().contains("+B\n"), "{json}");
    }
}
