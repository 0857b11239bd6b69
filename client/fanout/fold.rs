//! Host sets folded as ClusterShell writes them (`127.0.1.[1-60]`,
//! `web[01-03]:50051`), for summaries and `--gather` headers.
//!
//! Names are what the user typed. The `nodeset` crate parses NodeSet
//! *expressions*, so a name is folded only when it reads back as itself
//! alone (`a,b`, `x!y`, `@g`, `web[1-3]` do not); the folded text must expand
//! to exactly the names given (some mixed padding, `0,01`, does not),
//! and a panic inside the crate (seen on odd names like `0/0`) is caught.
//! Any of these falls back to the names joined by commas.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Once;

use nodeset::{IdRangeList, NodeSet, Parser};

/// The names folded into one set, e.g. `127.0.1.[1-3]:50051,web1`.
pub fn fold<S: AsRef<str>>(names: &[S]) -> String {
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    folded(&names).unwrap_or_else(|| names.join(","))
}

/// The folded set and how many hosts it has: `127.0.1.[1-60] (60)`.
pub fn fold_counted<S: AsRef<str>>(names: &[S]) -> String {
    format!("{} ({})", fold(names), names.len())
}

fn folded(names: &[&str]) -> Option<String> {
    // Bare numbers fold to a range set (`1-2`), which reads as no host name.
    if names.is_empty() || names.iter().any(|n| n.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    quietly(|| {
        let parse = |text: &str| Parser::default().parse::<IdRangeList>(text).ok();
        let alone =
            |name: &&str| parse(name).is_some_and(|s| s.len() == 1 && s.to_string() == *name);
        if !names.iter().all(alone) {
            return None;
        }
        let set: NodeSet = parse(&names.join(","))?;
        let text = set.to_string();
        let back: BTreeSet<String> = parse(&text)?.iter().collect();
        let wanted: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        (back == wanted).then_some(text)
    })
    .flatten()
}

thread_local! {
    static SILENT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, turning a panic into `None` without the panic message: the
/// crate's panics on odd names are a reason to fall back, not a crash. Other
/// threads' panics are still reported by the previous hook.
pub fn quietly<T>(work: impl FnOnce() -> T) -> Option<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SILENT.with(Cell::get) {
                previous(info);
            }
        }));
    });
    SILENT.with(|s| s.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).ok();
    SILENT.with(|s| s.set(false));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_one_port_fold_on_the_last_octet() {
        let names: Vec<String> = (1..=60).map(|n| format!("127.0.1.{n}:50051")).collect();
        assert_eq!(fold_counted(&names), "127.0.1.[1-60]:50051 (60)");
        assert_eq!(
            fold(&["127.0.1.1", "127.0.1.2", "127.0.1.5"]),
            "127.0.1.[1-2,5]"
        );
    }

    #[test]
    fn different_ports_are_not_folded_into_a_product() {
        let names = ["127.0.1.1:40001", "127.0.1.2:40005"];
        assert_eq!(fold(&names), "127.0.1.1:40001,127.0.1.2:40005");
    }

    #[test]
    fn names_fold_with_padding_prefixes_and_urls() {
        assert_eq!(fold(&["web01", "web02", "web10"]), "web[01-02,10]");
        assert_eq!(fold(&["web1", "db1", "web2"]), "db1,web[1-2]");
        assert_eq!(fold(&["http://web3", "http://web4"]), "http://web[3-4]");
        assert_eq!(fold(&["web1"]), "web1");
    }

    #[test]
    fn names_the_parser_reads_otherwise_fall_back_to_a_list() {
        assert_eq!(fold(&["a,b", "c"]), "a,b,c");
        assert_eq!(fold(&["x!y", "web1"]), "x!y,web1");
        assert_eq!(fold(&["@group", "web[1-3]"]), "@group,web[1-3]");
        assert_eq!(fold(&["[::1]:50051", "web1"]), "[::1]:50051,web1");
        assert_eq!(fold(&["1", "2"]), "1,2");
        // Mixed padding of bare numbers folds to a set that is not these names.
        assert_eq!(fold(&["0", "01", "b"]), "0,01,b");
        // ... but with a prefix it reads back right, as in ClusterShell.
        assert_eq!(fold(&["web1", "web01"]), "web[1,01]");
        let empty: [&str; 0] = [];
        assert_eq!(fold(&empty), "");
    }

    #[test]
    fn names_that_panic_the_parser_fall_back_quietly() {
        // Each of these panicked inside the crate (found by fuzzing).
        assert_eq!(fold(&[".01", "0/0é0", ".0"]), ".01,0/0é0,.0");
        assert_eq!(fold(&["99_11", "0.", "01."]), "99_11,0.,01.");
        assert_eq!(fold(&["0b", "001b", "__", ":0a91"]), "0b,001b,__,:0a91");
    }
}
