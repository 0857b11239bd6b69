//! How the fleet did, at the end: the exit code, and on stderr the hosts
//! that failed, or after Ctrl-C which hosts finished, failed and were
//! interrupted.

use rexec::client::ExitStatus;
use rexec::ending::{Ending, FAILED};

/// How one host ended.
pub struct HostResult {
    pub host: usize,
    pub ending: Ending,
}

impl HostResult {
    pub fn new(host: usize, ending: Ending) -> HostResult {
        HostResult { host, ending }
    }

    /// Anything but a remote exit 0 (an interrupted host is counted apart).
    pub fn failed(&self) -> bool {
        match &self.ending {
            Ending::Remote(status) => !status.success() || status.timed_out,
            Ending::Interrupted => false,
            _ => true,
        }
    }
}

/// 130 after Ctrl-C; else 255 if any host failed in rexec itself, else the
/// largest remote code.
pub fn ending(results: &[HostResult], interrupted: bool) -> Ending {
    if interrupted {
        return Ending::Interrupted;
    }
    let codes = results.iter().map(|r| r.ending.code());
    let code = if codes.clone().any(|c| c == FAILED) {
        FAILED
    } else {
        codes.max().unwrap_or(0)
    };
    // The summary has said what went wrong: the code alone, no second line.
    Ending::Remote(ExitStatus::exited(code.into()))
}

/// Writes the summary to stderr: the failed hosts with why, and after Ctrl-C
/// also the finished and interrupted ones. Nothing when all went well.
pub fn print(names: &[String], results: &[HostResult], interrupted: bool) {
    let failed: Vec<&HostResult> = results.iter().filter(|r| r.failed()).collect();
    let mut text = String::new();
    if interrupted {
        let finished: Vec<&str> = results
            .iter()
            .filter(|r| !r.failed() && !matches!(r.ending, Ending::Interrupted))
            .map(|r| names[r.host].as_str())
            .collect();
        let stopped: Vec<&str> = results
            .iter()
            .filter(|r| matches!(r.ending, Ending::Interrupted))
            .map(|r| names[r.host].as_str())
            .collect();
        text.push_str(&format!(
            "rexec: after Ctrl-C: {} of {} hosts finished, {} failed, {} interrupted\n",
            finished.len(),
            names.len(),
            failed.len(),
            stopped.len()
        ));
        if !finished.is_empty() {
            text.push_str(&format!("  finished: {}\n", finished.join(" ")));
        }
        if !stopped.is_empty() {
            text.push_str(&format!("  interrupted: {}\n", stopped.join(" ")));
        }
    } else if !failed.is_empty() {
        text.push_str(&format!(
            "rexec: {} of {} hosts failed:\n",
            failed.len(),
            names.len()
        ));
    }
    for result in failed {
        text.push_str(&format!("  {}: {}\n", names[result.host], result.ending));
    }
    eprint!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32) -> HostResult {
        let ending = match code {
            255 => Ending::failed("cannot connect"),
            code => Ending::Remote(ExitStatus::exited(code)),
        };
        HostResult::new(0, ending)
    }

    #[test]
    fn exit_code_is_255_on_any_failure_else_the_largest() {
        let code = |results: &[HostResult]| ending(results, false).code();
        assert_eq!(code(&[result(0), result(0)]), 0);
        assert_eq!(code(&[result(0), result(3), result(1)]), 3);
        assert_eq!(code(&[result(137), result(255), result(3)]), 255);
        assert_eq!(code(&[]), 0);
        assert_eq!(ending(&[result(0)], true).code(), 130);
    }
}
