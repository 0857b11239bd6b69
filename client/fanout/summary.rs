//! How the fleet did, at the end: the exit code, and on stderr the hosts that
//! failed (grouped by status, folded), and which finished, were interrupted
//! by Ctrl-C or were not run (`--max-failures`, or batches after Ctrl-C).

use rexec::client::ExitStatus;
use rexec::ending::{Ending, FAILED};

use super::fold::{fold, fold_counted};

/// How one host ended.
pub struct HostResult {
    pub host: usize,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// The host ran (or tried to): how that ended.
    Ended(Ending),
    /// The host never started: `--max-failures` was reached first, or Ctrl-C
    /// came before its batch.
    NotRun,
}

/// The text for a host that never started, in summaries and records.
pub const NOT_RUN: &str = "not run";

impl HostResult {
    pub fn new(host: usize, ending: Ending) -> HostResult {
        HostResult {
            host,
            outcome: Outcome::Ended(ending),
        }
    }

    pub fn not_run(host: usize) -> HostResult {
        HostResult {
            host,
            outcome: Outcome::NotRun,
        }
    }

    pub fn ending(&self) -> Option<&Ending> {
        match &self.outcome {
            Outcome::Ended(ending) => Some(ending),
            Outcome::NotRun => None,
        }
    }

    /// Anything but a remote exit 0 (interrupted and not run are counted apart).
    pub fn failed(&self) -> bool {
        match self.ending() {
            Some(Ending::Remote(status)) => !status.success() || status.timed_out,
            Some(Ending::Interrupted) | None => false,
            Some(_) => true,
        }
    }

    pub fn interrupted(&self) -> bool {
        matches!(self.ending(), Some(Ending::Interrupted))
    }

    pub fn finished(&self) -> bool {
        self.ending().is_some() && !self.failed() && !self.interrupted()
    }
}

/// The hosts sorted by how they ended; failed ones grouped by status text
/// (`exit 3`, `cannot connect to ...`), largest group first.
pub struct Tally<'a> {
    pub total: usize,
    pub finished: Vec<&'a str>,
    pub failed: Vec<FailedGroup<'a>>,
    pub interrupted: Vec<&'a str>,
    pub not_run: Vec<&'a str>,
}

pub struct FailedGroup<'a> {
    pub status: String,
    /// The exit code these hosts report (255 for rexec's own failure).
    pub code: u8,
    pub hosts: Vec<&'a str>,
}

impl<'a> Tally<'a> {
    /// `results` sorted by host index.
    pub fn new(names: &'a [String], results: &[HostResult]) -> Tally<'a> {
        let mut tally = Tally {
            total: names.len(),
            finished: Vec::new(),
            failed: Vec::new(),
            interrupted: Vec::new(),
            not_run: Vec::new(),
        };
        for result in results {
            let name = names[result.host].as_str();
            match result.ending() {
                None => tally.not_run.push(name),
                Some(Ending::Interrupted) => tally.interrupted.push(name),
                Some(ending) if result.failed() => {
                    let status = ending.to_string();
                    match tally.failed.iter_mut().find(|g| g.status == status) {
                        Some(group) => group.hosts.push(name),
                        None => tally.failed.push(FailedGroup {
                            status,
                            code: ending.code(),
                            hosts: vec![name],
                        }),
                    }
                }
                Some(_) => tally.finished.push(name),
            }
        }
        // Stable: equal groups stay in the order of their first host.
        tally
            .failed
            .sort_by_key(|g| std::cmp::Reverse(g.hosts.len()));
        tally
    }

    pub fn failures(&self) -> usize {
        self.failed.iter().map(|g| g.hosts.len()).sum()
    }
}

/// 130 after Ctrl-C; else 255 if any host failed in rexec itself, else the
/// largest remote code. A host not run adds nothing: it is only ever not run
/// because others failed, and they already set the code.
pub fn ending(results: &[HostResult], interrupted: bool) -> Ending {
    if interrupted {
        return Ending::Interrupted;
    }
    let codes = results.iter().filter_map(|r| r.ending()).map(Ending::code);
    let code = if codes.clone().any(|c| c == FAILED) {
        FAILED
    } else {
        codes.max().unwrap_or(0)
    };
    // The summary has said what went wrong: the code alone, no second line.
    Ending::Remote(ExitStatus::exited(code.into()))
}

/// The summary for stderr: nothing when every host exited 0; else a headline,
/// the folded sets (`  finished: 127.0.1.[1-38] (38)`), and each failed
/// group (`  127.0.1.[3,9] (2): exit 3`).
pub fn text(tally: &Tally<'_>, interrupted: bool) -> String {
    let failures = tally.failures();
    let mut text = String::new();
    let not_run = match tally.not_run.len() {
        0 => String::new(),
        n => format!(", {n} {NOT_RUN}"),
    };
    if interrupted {
        text.push_str(&format!(
            "rexec: after Ctrl-C: {} of {} hosts finished, {failures} failed, {} interrupted{not_run}\n",
            tally.finished.len(),
            tally.total,
            tally.interrupted.len(),
        ));
    } else if failures > 0 || !tally.not_run.is_empty() {
        text.push_str(&format!(
            "rexec: {failures} of {} hosts failed{not_run}:\n",
            tally.total
        ));
    } else {
        return text;
    }
    for (label, hosts) in [
        ("finished", &tally.finished),
        ("interrupted", &tally.interrupted),
        (NOT_RUN, &tally.not_run),
    ] {
        if !hosts.is_empty() {
            text.push_str(&format!("  {label}: {}\n", fold_counted(hosts)));
        }
    }
    for group in &tally.failed {
        let hosts = match group.hosts.len() {
            1 => fold(&group.hosts),
            _ => fold_counted(&group.hosts),
        };
        text.push_str(&format!("  {hosts}: {}\n", group.status));
    }
    text
}

/// The statuses of the `--json` summary record: each set folded with its
/// count, failed hosts grouped by status.
pub fn json(tally: &Tally<'_>, code: u8) -> serde_json::Value {
    let set = |hosts: &[&str]| serde_json::json!({ "hosts": fold(hosts), "count": hosts.len() });
    let failed: Vec<serde_json::Value> = tally
        .failed
        .iter()
        .map(|g| {
            serde_json::json!({
                "hosts": fold(&g.hosts),
                "count": g.hosts.len(),
                "status": g.status,
                "code": g.code,
            })
        })
        .collect();
    serde_json::json!({
        "total": tally.total,
        "exit": code,
        "finished": set(&tally.finished),
        "failed": failed,
        "interrupted": set(&tally.interrupted),
        "not_run": set(&tally.not_run),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(host: usize, code: i32) -> HostResult {
        let ending = match code {
            255 => Ending::failed("cannot connect"),
            -1 => return HostResult::not_run(host),
            -2 => Ending::Interrupted,
            code => Ending::Remote(ExitStatus::exited(code)),
        };
        HostResult::new(host, ending)
    }

    #[test]
    fn exit_code_is_255_on_any_failure_else_the_largest() {
        let code = |codes: &[i32]| {
            let results: Vec<_> = codes.iter().map(|&c| result(0, c)).collect();
            ending(&results, false).code()
        };
        assert_eq!(code(&[0, 0]), 0);
        assert_eq!(code(&[0, 3, 1]), 3);
        assert_eq!(code(&[137, 255, 3]), 255);
        assert_eq!(code(&[1, -1, -1]), 1, "not run adds nothing");
        assert_eq!(code(&[]), 0);
        assert_eq!(ending(&[result(0, 0)], true).code(), 130);
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("127.0.1.{i}")).collect()
    }

    #[test]
    fn the_summary_folds_each_set_and_groups_failures_by_status() {
        let names = names(10);
        let codes = [0, 0, 3, 0, 1, 0, 0, 0, 3, -1];
        let results: Vec<_> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| result(i, c))
            .collect();
        let tally = Tally::new(&names, &results);
        assert_eq!(
            text(&tally, false),
            "rexec: 3 of 10 hosts failed, 1 not run:\n  \
             finished: 127.0.1.[1-2,4,6-8] (6)\n  \
             not run: 127.0.1.10 (1)\n  \
             127.0.1.[3,9] (2): exit 3\n  \
             127.0.1.5: exit 1\n"
        );
        let json = json(&tally, 3);
        assert_eq!(json["failed"][0]["hosts"], "127.0.1.[3,9]");
        assert_eq!(json["failed"][0]["code"], 3);
        assert_eq!(json["not_run"]["count"], 1);
    }

    #[test]
    fn after_ctrl_c_the_summary_says_who_finished_and_who_was_interrupted() {
        let names = names(4);
        let results: Vec<_> = [0, 255, -2, -2]
            .iter()
            .enumerate()
            .map(|(i, &c)| result(i, c))
            .collect();
        let text = text(&Tally::new(&names, &results), true);
        assert!(
            text.starts_with(
                "rexec: after Ctrl-C: 1 of 4 hosts finished, 1 failed, 2 interrupted\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  interrupted: 127.0.1.[3-4] (2)\n"),
            "{text}"
        );
        assert!(text.contains("  127.0.1.2: cannot connect\n"), "{text}");
    }

    #[test]
    fn nothing_is_said_when_all_went_well() {
        let names = names(2);
        let results = vec![result(0, 0), result(1, 0)];
        assert_eq!(text(&Tally::new(&names, &results), false), "");
    }
}
