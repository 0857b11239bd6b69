//! The one writer: every host's lines go through a bounded channel to a
//! blocking thread that prefixes, colours and writes them, so a slow terminal
//! slows the hosts through backpressure and never blocks the async runtime.

use std::io::{BufWriter, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use super::gather::{Gathered, Kept};

/// Which local stream a piece of output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whole lines (each ending in `\n`) of one stream, in the order they came.
pub type Parts = Vec<(Stream, Vec<u8>)>;

pub enum Message {
    /// Lines of one host, written together.
    Lines { host: usize, parts: Parts },
    /// A host finished: its last lines, then its error or its JSON record.
    Done {
        host: usize,
        parts: Parts,
        /// "cannot connect to ...", shown as `HOST | rexec: ...` on stderr.
        error: Option<String>,
        /// One JSON line for stdout (`--json`).
        record: Option<String>,
        /// `--gather`: the host's whole output, grouped here.
        kept: Option<Kept>,
        failed: bool,
    },
}

/// ANSI colours for host prefixes, picked by host index.
const PALETTE: &[&str] = &[
    "\x1b[36m", "\x1b[33m", "\x1b[35m", "\x1b[32m", "\x1b[34m", "\x1b[96m", "\x1b[93m", "\x1b[95m",
    "\x1b[92m", "\x1b[94m",
];
const RESET: &str = "\x1b[0m";

pub struct Sink {
    /// `HOST | ` per host, plain and (when that stream is a terminal) coloured.
    stdout_prefixes: Vec<Vec<u8>>,
    stderr_prefixes: Vec<Vec<u8>>,
    progress: Option<ProgressBar>,
    done: u64,
    failed: usize,
    gathered: Gathered,
}

impl Sink {
    pub fn new(names: &[String], colour_stdout: bool, colour_stderr: bool, progress: bool) -> Sink {
        let prefixes = |colour: bool| -> Vec<Vec<u8>> {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| match colour {
                    true => format!("{}{name}{RESET} | ", PALETTE[i % PALETTE.len()]),
                    false => format!("{name} | "),
                })
                .map(String::into_bytes)
                .collect()
        };
        let progress = progress.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(names.len() as u64),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {pos}/{len} hosts done, {msg} [{elapsed}]")
            {
                bar.set_style(style);
            }
            bar.set_message("0 failed");
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Sink {
            stdout_prefixes: prefixes(colour_stdout),
            stderr_prefixes: prefixes(colour_stderr),
            progress,
            done: 0,
            failed: 0,
            gathered: Gathered::default(),
        }
    }

    /// Writes messages until every sender is gone and returns what
    /// `--gather` grouped; or the first write error (a closed pipe included),
    /// which also drops the receiver so the hosts stop.
    pub fn run(mut self, mut messages: mpsc::Receiver<Message>) -> std::io::Result<Gathered> {
        let result = (|| {
            while let Some(first) = messages.blocking_recv() {
                let progress = self.progress.clone();
                let write_batch = || -> std::io::Result<()> {
                    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
                    let mut err = BufWriter::with_capacity(16 * 1024, std::io::stderr().lock());
                    self.write(first, &mut out, &mut err)?;
                    // Drain what is already queued before flushing: one write
                    // for many hosts' lines when output is heavy.
                    while let Ok(next) = messages.try_recv() {
                        self.write(next, &mut out, &mut err)?;
                    }
                    out.flush()?;
                    err.flush()
                };
                match progress {
                    // The bar is updated after `suspend` returns: it holds
                    // the bar's lock, so updating inside would deadlock.
                    Some(bar) => {
                        bar.suspend(write_batch)?;
                        bar.set_message(format!("{} failed", self.failed));
                        bar.set_position(self.done);
                    }
                    None => write_batch()?,
                }
            }
            Ok(())
        })();
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        result.map(|()| self.gathered)
    }

    fn write(
        &mut self,
        message: Message,
        out: &mut impl Write,
        err: &mut impl Write,
    ) -> std::io::Result<()> {
        match message {
            Message::Lines { host, parts } => self.write_parts(host, &parts, out, err),
            Message::Done {
                host,
                parts,
                error,
                record,
                kept,
                failed,
            } => {
                if let Some(kept) = kept {
                    self.gathered.add(host, kept);
                }
                self.write_parts(host, &parts, out, err)?;
                if let Some(error) = error {
                    let line = format!("rexec: {error}\n");
                    write_prefixed(err, &self.stderr_prefixes[host], line.as_bytes())?;
                }
                if let Some(record) = record {
                    out.write_all(record.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                self.done += 1;
                if failed {
                    self.failed += 1;
                }
                Ok(())
            }
        }
    }

    fn write_parts(
        &self,
        host: usize,
        parts: &Parts,
        out: &mut impl Write,
        err: &mut impl Write,
    ) -> std::io::Result<()> {
        for (stream, lines) in parts {
            match stream {
                Stream::Stdout => write_prefixed(out, &self.stdout_prefixes[host], lines)?,
                Stream::Stderr => write_prefixed(err, &self.stderr_prefixes[host], lines)?,
            }
        }
        Ok(())
    }
}

/// Writes each line of `lines` (whole lines, each ending in `\n`) after `prefix`.
fn write_prefixed(sink: &mut impl Write, prefix: &[u8], lines: &[u8]) -> std::io::Result<()> {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        sink.write_all(prefix)?;
        sink.write_all(line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_prefix() {
        let mut sink = Vec::new();
        write_prefixed(&mut sink, b"web1 | ", b"a\n\nb\n").unwrap();
        assert_eq!(sink, b"web1 | a\nweb1 | \nweb1 | b\n");
    }
}
