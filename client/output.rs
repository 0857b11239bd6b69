//! Where remote output goes: local stdout/stderr, raw bytes, or transcoded to
//! UTF-8 from a legacy code page (`--encoding`).

use std::io::Write;

use encoding_rs::{Decoder, Encoding};

/// Names people use that the WHATWG list (encoding_rs) lacks: Windows and
/// IBM code page numbers, mostly (`cp936` is what `chcp` says on a Chinese
/// Windows).
const ALIASES: &[(&str, &str)] = &[
    ("cp936", "gbk"),
    ("ms936", "gbk"),
    ("cp54936", "gb18030"),
    ("cp932", "shift_jis"),
    ("ms932", "shift_jis"),
    ("cp949", "euc-kr"),
    ("ms949", "euc-kr"),
    ("uhc", "euc-kr"),
    ("cp950", "big5"),
    ("ms950", "big5"),
    ("cp20932", "euc-jp"),
    ("cp51949", "euc-kr"),
    ("cp65001", "utf-8"),
    ("cp1200", "utf-16le"),
    ("cp1201", "utf-16be"),
    ("utf16le", "utf-16le"),
    ("utf16be", "utf-16be"),
    ("latin-1", "latin1"),
    ("cp28591", "latin1"),
];

/// The encoding `label` names (`--encoding`): a WHATWG label or a common alias.
pub fn encoding(label: &str) -> Result<&'static Encoding, String> {
    let label = label.trim();
    let lower = label.to_ascii_lowercase();
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == lower)
        .map_or(lower.as_str(), |(_, name)| name);
    Encoding::for_label(name.as_bytes()).ok_or_else(|| {
        format!(
            "unknown encoding '{label}': use a WHATWG label such as gbk, gb18030, big5, \
             shift_jis, euc-jp, euc-kr, latin1, windows-1251, koi8-r, utf-16le, or cp936, \
             cp932, cp949, cp950"
        )
    })
}

pub struct Output {
    /// One decoder per stream: a multi-byte character may span two chunks.
    stdout_decoder: Option<Decoder>,
    stderr_decoder: Option<Decoder>,
    stdout_encoding: Option<&'static Encoding>,
    stderr_encoding: Option<&'static Encoding>,
}

impl Output {
    /// Raw bytes, or transcoded from `encoding` (see [`encoding`]).
    pub fn new(encoding: Option<&'static Encoding>) -> Self {
        let mut output = Output {
            stdout_decoder: None,
            stderr_decoder: None,
            stdout_encoding: decoding(encoding, is_windows_console(&std::io::stdout())),
            stderr_encoding: decoding(encoding, is_windows_console(&std::io::stderr())),
        };
        output.reset();
        output
    }

    /// Fresh decoder state for the next command.
    pub fn reset(&mut self) {
        self.stdout_decoder = self.stdout_encoding.map(Encoding::new_decoder);
        self.stderr_decoder = self.stderr_encoding.map(Encoding::new_decoder);
    }

    pub fn stdout(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_chunk(
            &mut RawStdout::lock()?,
            self.stdout_decoder.as_mut(),
            bytes,
            false,
        )
    }

    pub fn stderr(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let decoder = self.stderr_decoder.as_mut();
        write_chunk(&mut std::io::stderr().lock(), decoder, bytes, false)
    }

    /// Flushes characters a decoder still holds (a truncated sequence becomes U+FFFD).
    pub fn finish(&mut self) -> std::io::Result<()> {
        if let Some(out) = self.stdout_decoder.as_mut() {
            write_chunk(&mut RawStdout::lock()?, Some(out), &[], true)?;
        }
        if let Some(err) = self.stderr_decoder.as_mut() {
            write_chunk(&mut std::io::stderr().lock(), Some(err), &[], true)?;
        }
        Ok(())
    }
}

/// How one stream's bytes are decoded before they are written: from
/// `--encoding` when given; else, on a Windows console, as UTF-8 with U+FFFD
/// for bad bytes (std writes a console through the wide-character API, so
/// any code page shows it, and refuses bytes that are not UTF-8); else not
/// at all: a file or pipe gets the remote bytes unchanged.
fn decoding(requested: Option<&'static Encoding>, console: bool) -> Option<&'static Encoding> {
    requested.or(console.then_some(encoding_rs::UTF_8))
}

fn is_windows_console(stream: &impl std::io::IsTerminal) -> bool {
    cfg!(windows) && stream.is_terminal()
}

/// Standard output written straight to fd 1. std's stdout is a LineWriter,
/// which scans every chunk for its last newline: that scan was 18 % of the
/// CLI's CPU in a 1 GiB stream (see BENCHMARKS.md). Remote output is written
/// whole and at once anyway. std's lock is held, and whatever std still
/// buffers (a REPL prompt) is flushed first, so output keeps its order.
struct RawStdout {
    #[cfg_attr(unix, allow(dead_code))]
    std_lock: std::io::StdoutLock<'static>,
    #[cfg(unix)]
    fd: std::mem::ManuallyDrop<std::fs::File>,
}

impl RawStdout {
    fn lock() -> std::io::Result<Self> {
        let mut lock = std::io::stdout().lock();
        lock.flush()?;
        Ok(RawStdout {
            std_lock: lock,
            // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop
            // keeps this File from closing it.
            #[cfg(unix)]
            fd: std::mem::ManuallyDrop::new(unsafe {
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(1)
            }),
        })
    }
}

impl Write for RawStdout {
    #[cfg(unix)]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.fd.write(bytes)
    }

    #[cfg(not(unix))]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.std_lock.write(bytes)
    }

    #[cfg(unix)]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    #[cfg(not(unix))]
    fn flush(&mut self) -> std::io::Result<()> {
        self.std_lock.flush()
    }
}

fn write_chunk(
    sink: &mut impl Write,
    decoder: Option<&mut Decoder>,
    bytes: &[u8],
    last: bool,
) -> std::io::Result<()> {
    match decoder {
        None => sink.write_all(bytes)?,
        Some(decoder) => sink.write_all(decode(decoder, bytes, last).as_bytes())?,
    }
    sink.flush()
}

/// Decodes one chunk to UTF-8; `last` flushes what the decoder still holds
/// (a truncated sequence becomes U+FFFD). A character split across chunks
/// comes out whole with the later one.
pub fn decode(decoder: &mut Decoder, bytes: &[u8], last: bool) -> String {
    let capacity = decoder
        .max_utf8_buffer_length(bytes.len())
        .unwrap_or(bytes.len() * 3 + 16);
    let mut text = String::with_capacity(capacity);
    let _ = decoder.decode_to_string(bytes, &mut text, last);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbk_split_across_chunks_decodes_whole() {
        // "你好" in GBK, split inside the first character.
        let gbk = [0xc4u8, 0xe3, 0xba, 0xc3];
        let mut decoder = encoding("gbk").unwrap().new_decoder();
        let mut sink = Vec::new();
        write_chunk(&mut sink, Some(&mut decoder), &gbk[..1], false).unwrap();
        write_chunk(&mut sink, Some(&mut decoder), &gbk[1..], false).unwrap();
        write_chunk(&mut sink, Some(&mut decoder), &[], true).unwrap();
        assert_eq!(String::from_utf8(sink).unwrap(), "你好");
    }

    #[test]
    fn a_windows_console_gets_utf8_and_a_pipe_raw_bytes() {
        let gbk = encoding("gbk").unwrap();
        assert_eq!(decoding(None, false), None);
        assert_eq!(decoding(None, true), Some(encoding_rs::UTF_8));
        assert_eq!(decoding(Some(gbk), false), Some(gbk));
        assert_eq!(decoding(Some(gbk), true), Some(gbk));
        // On a console, bytes that are not UTF-8 become U+FFFD, never an error.
        let mut decoder = encoding_rs::UTF_8.new_decoder();
        assert_eq!(decode(&mut decoder, b"ok \xff\xe4", false), "ok \u{fffd}");
        assert_eq!(decode(&mut decoder, b"\xbd\xa0", true), "\u{4f60}");
    }

    #[test]
    fn code_page_names_are_understood() {
        assert_eq!(encoding("cp936").unwrap().name(), "GBK");
        assert_eq!(encoding(" CP932 ").unwrap().name(), "Shift_JIS");
        assert_eq!(encoding("latin1").unwrap().name(), "windows-1252");
        assert_eq!(encoding("gbk").unwrap().name(), "GBK");
        let unknown = encoding("cp437").unwrap_err();
        assert!(
            unknown.contains("'cp437'") && unknown.contains("gbk"),
            "{unknown}"
        );
    }
}
