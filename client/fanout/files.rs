//! `--output-dir DIR` (pssh -o/-e): each host's stdout and stderr written to
//! `DIR/NAME.out` and `DIR/NAME.err` as they arrive, never held, and
//! `DIR/summary.json` with every host's status at the end.
//!
//! NAME is the host as typed, percent-encoded: bytes other than ASCII
//! letters, digits, `.`, `-` and `_` become `%XX` (so `/`, `:`, `%`, spaces
//! and control characters), as does a leading `.` (no hidden files, no `..`).
//! Decoding `%XX` gives the host back. A name that would pass 200 bytes is
//! cut there and ends in `~` and a hash of the whole name.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use rexec::ending::Ending;

use super::sink::Stream;
use super::summary::{HostResult, NOT_RUN};

/// File names stay well under the usual 255-byte limit, suffix included.
const MAX_STEM: usize = 200;

pub struct OutputDir {
    dir: PathBuf,
}

/// The file stem for a host name: reversible percent-encoding (see above).
pub fn file_stem(name: &str) -> String {
    let mut stem = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let plain =
            byte.is_ascii_alphanumeric() || b"-_".contains(&byte) || (byte == b'.' && i > 0);
        match plain {
            true => stem.push(byte as char),
            false => stem.push_str(&format!("%{byte:02X}")),
        }
    }
    if stem.len() > MAX_STEM {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        let mut cut = MAX_STEM - 17;
        // Never cut inside a `%XX`.
        while stem.as_bytes()[cut - 1] == b'%' || stem.as_bytes()[cut.saturating_sub(2)] == b'%' {
            cut -= 1;
        }
        stem = format!("{}~{:016x}", &stem[..cut], hasher.finish());
    }
    stem
}

impl OutputDir {
    /// Creates DIR (and its parents) and empties every host's two files up
    /// front, so a bad DIR is found before anything runs and no file keeps
    /// an earlier run's output.
    pub fn prepare(dir: &Path, names: &[String]) -> Result<OutputDir, Ending> {
        let shown = dir.display();
        if dir.exists() && !dir.is_dir() {
            return Err(Ending::usage(format!(
                "--output-dir {shown}: not a directory"
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Ending::usage(format!("--output-dir {shown}: cannot create: {e}")))?;
        let output = OutputDir {
            dir: dir.to_path_buf(),
        };
        for name in names {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let path = output.path(name, stream);
                std::fs::File::create(&path).map_err(|e| {
                    Ending::usage(format!(
                        "--output-dir: cannot write {}: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        Ok(output)
    }

    fn path(&self, name: &str, stream: Stream) -> PathBuf {
        let suffix = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        self.dir.join(format!("{}.{suffix}", file_stem(name)))
    }

    /// Opens a host's two files (emptied again) when it starts.
    pub fn open(&self, name: &str) -> Result<HostFiles, String> {
        let open = |stream| {
            let path = self.path(name, stream);
            std::fs::File::create(&path)
                .map(|file| (file, path.clone()))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        Ok(HostFiles {
            stdout: open(Stream::Stdout)?,
            stderr: open(Stream::Stderr)?,
        })
    }

    /// Writes `DIR/summary.json` whole (through a temporary file and a
    /// rename, so a reader never sees half of it).
    pub fn write_summary(
        &self,
        names: &[String],
        results: &[HostResult],
        code: u8,
    ) -> Result<(), String> {
        let hosts: Vec<serde_json::Value> = results.iter().map(|r| host_json(names, r)).collect();
        let summary = serde_json::json!({ "exit": code, "hosts": hosts });
        let path = self.dir.join("summary.json");
        let temporary = self.dir.join(".summary.json.tmp");
        let mut text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        text.push('\n');
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// One host in `summary.json`: `host`, `file` (the stem of its two files),
/// `state` (finished, failed, interrupted, not run), `status` in words,
/// and `exit`, `signal`, `timed_out` of the remote command.
fn host_json(names: &[String], result: &HostResult) -> serde_json::Value {
    let name = &names[result.host];
    let state = if result.finished() {
        "finished"
    } else if result.failed() {
        "failed"
    } else if result.interrupted() {
        "interrupted"
    } else {
        NOT_RUN
    };
    let status = result
        .ending()
        .map_or(NOT_RUN.to_string(), Ending::to_string);
    let remote = match result.ending() {
        Some(Ending::Remote(status)) => Some(status),
        _ => None,
    };
    serde_json::json!({
        "host": name,
        "file": file_stem(name),
        "state": state,
        "status": status,
        "exit": remote.and_then(|s| s.code),
        "signal": remote.and_then(|s| s.signal.as_deref()),
        "timed_out": remote.is_some_and(|s| s.timed_out),
    })
}

/// A running host's two open files. Writes are plain, unbuffered and
/// blocking: a page-cache write is short, and nothing is left unwritten when
/// Ctrl-C drops the host's future.
pub struct HostFiles {
    stdout: (std::fs::File, PathBuf),
    stderr: (std::fs::File, PathBuf),
}

impl HostFiles {
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), String> {
        let (file, path) = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        file.write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(stem: &str) -> String {
        let bytes = stem.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&stem[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn host_names_become_safe_reversible_file_names() {
        assert_eq!(file_stem("127.0.1.5:50051"), "127.0.1.5%3A50051");
        assert_eq!(file_stem("http://web3"), "http%3A%2F%2Fweb3");
        assert_eq!(file_stem(".."), "%2E.");
        assert_eq!(file_stem("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(file_stem("a\nb%"), "a%0Ab%25");
        assert_eq!(file_stem("[::1]:7"), "%5B%3A%3A1%5D%3A7");
        for name in ["127.0.1.5:50051", "..", "a\tb", "é:1", "%41", ".hidden"] {
            let stem = file_stem(name);
            assert!(!stem.contains('/') && !stem.starts_with('.'), "{stem}");
            assert_eq!(decode(&stem), name);
        }
    }

    #[test]
    fn a_very_long_name_is_cut_and_stays_distinct() {
        let long = ":".repeat(300);
        let stem = file_stem(&long);
        assert!(stem.len() <= MAX_STEM, "{}", stem.len());
        assert_ne!(stem, file_stem(&format!("{long}x")));
        assert!(!stem.contains("%~") && !stem.contains("%3~"), "{stem}");
    }
}
