//! Rollouts, as Ansible's `serial` and `max_fail_percentage` do them:
//! `--batch` splits the hosts into batches run one after the other, and
//! `--max-failures` stops new hosts from starting once enough have failed.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `--batch N` (hosts) or `--batch N%` (of all hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Hosts(usize),
    Percent(u8),
}

/// clap's parser for `--batch`: a whole number of hosts from 1, or a
/// percentage from 1% to 100%.
pub fn parse_batch(text: &str) -> Result<BatchSize, String> {
    let bad = || format!("expected N hosts (1 or more) or N% (1% to 100%), got '{text}'");
    match text.strip_suffix('%') {
        Some(percent) => match percent.parse::<u8>() {
            Ok(p @ 1..=100) => Ok(BatchSize::Percent(p)),
            _ => Err(bad()),
        },
        None => match text.parse::<usize>() {
            Ok(n @ 1..) => Ok(BatchSize::Hosts(n)),
            _ => Err(bad()),
        },
    }
}

impl BatchSize {
    /// Hosts per batch out of `total`: a percentage rounds down, as
    /// Ansible's `serial` does, but is never less than one host.
    pub fn hosts(self, total: usize) -> usize {
        match self {
            BatchSize::Hosts(n) => n,
            BatchSize::Percent(p) => (total * p as usize / 100).max(1),
        }
    }
}

/// The hosts `0..total` in batches, in the order given; one batch without `--batch`.
pub fn batches(total: usize, size: Option<BatchSize>) -> Vec<Range<usize>> {
    let step = size.map_or(total, |s| s.hosts(total)).max(1);
    (0..total)
        .step_by(step)
        .map(|start| start..(start + step).min(total))
        .collect()
}

/// Failures so far against `--max-failures`; shared by every host's task.
#[derive(Debug, Default)]
pub struct FailureBudget {
    max: Option<usize>,
    failures: AtomicUsize,
}

impl FailureBudget {
    pub fn new(max: Option<usize>) -> FailureBudget {
        FailureBudget {
            max,
            failures: AtomicUsize::new(0),
        }
    }

    /// Counts a host that ended; called before its permit is released, so a
    /// host waiting for that permit sees the failure before it starts.
    pub fn record(&self, failed: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether a host about to start must not: `--max-failures` were reached.
    pub fn spent(&self) -> bool {
        self.max
            .is_some_and(|max| self.failures.load(Ordering::SeqCst) >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_hosts_or_percentages_and_nothing_else() {
        assert_eq!(parse_batch("3"), Ok(BatchSize::Hosts(3)));
        assert_eq!(parse_batch("25%"), Ok(BatchSize::Percent(25)));
        assert_eq!(parse_batch("100%"), Ok(BatchSize::Percent(100)));
        for bad in ["0", "0%", "150%", "-1", "", "%", "x", "2.5", "10 %", "1e3"] {
            assert!(parse_batch(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn batches_cover_every_host_once_in_order() {
        assert_eq!(batches(5, None), vec![0..5]);
        assert_eq!(
            batches(5, Some(BatchSize::Hosts(2))),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(batches(3, Some(BatchSize::Hosts(10))), vec![0..3]);
        // 30% of 10 is 3; 10% of 5 rounds down to 0, and is one host.
        assert_eq!(batches(10, Some(BatchSize::Percent(30))).len(), 4);
        assert_eq!(batches(5, Some(BatchSize::Percent(10))).len(), 5);
        assert!(batches(0, Some(BatchSize::Hosts(2))).is_empty());
    }

    #[test]
    fn the_budget_is_spent_at_max_failures() {
        let budget = FailureBudget::new(Some(2));
        budget.record(true);
        budget.record(false);
        assert!(!budget.spent());
        budget.record(true);
        assert!(budget.spent());
        assert!(!FailureBudget::new(None).spent());
    }
}
