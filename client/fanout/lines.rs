//! Holds a partial line until its newline, so a prefix always starts a whole
//! line and lines of different hosts never mix inside a line.

/// A line longer than this is cut into pieces of this size: holding it whole
/// would let one host's endless line grow our memory.
pub const MAX_HELD_LINE: usize = 1024 * 1024;

/// One host's one stream (stdout or stderr).
#[derive(Debug, Default)]
pub struct LineBuffer {
    held: Vec<u8>,
}

impl LineBuffer {
    /// Takes a chunk; returns the whole lines it completes (each ending in
    /// `\n`), or nothing when the chunk only extends the held line.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let mut lines = std::mem::take(&mut self.held);
                lines.extend_from_slice(&chunk[..=end]);
                self.held.extend_from_slice(&chunk[end + 1..]);
                if self.held.len() >= MAX_HELD_LINE {
                    self.cut_held(&mut lines);
                }
                Some(lines)
            }
            None => {
                self.held.extend_from_slice(chunk);
                if self.held.len() < MAX_HELD_LINE {
                    return None;
                }
                let mut lines = Vec::new();
                self.cut_held(&mut lines);
                Some(lines)
            }
        }
    }

    /// The held partial line with a newline added, once the stream has ended.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.held.is_empty() {
            return None;
        }
        let mut line = std::mem::take(&mut self.held);
        line.push(b'\n');
        Some(line)
    }

    fn cut_held(&mut self, lines: &mut Vec<u8>) {
        let whole = self.held.len() - self.held.len() % MAX_HELD_LINE;
        for piece in self.held[..whole].chunks(MAX_HELD_LINE) {
            lines.extend_from_slice(piece);
            lines.push(b'\n');
        }
        self.held.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_line_is_held_until_its_newline() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.push(b"hel"), None);
        assert_eq!(buffer.push(b"lo\nwor").as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(buffer.push(b"ld\n\n").as_deref(), Some(&b"world\n\n"[..]));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn the_rest_is_flushed_with_a_newline_at_the_end() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.push(b"a\nno newline").as_deref(), Some(&b"a\n"[..]));
        assert_eq!(buffer.finish().as_deref(), Some(&b"no newline\n"[..]));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn an_endless_line_is_cut_instead_of_held() {
        let mut buffer = LineBuffer::default();
        let chunk = vec![b'x'; MAX_HELD_LINE / 2 + 1];
        assert_eq!(buffer.push(&chunk), None);
        let lines = buffer.push(&chunk).expect("cut");
        assert_eq!(lines.len(), MAX_HELD_LINE + 1);
        assert_eq!(lines.last(), Some(&b'\n'));
        assert_eq!(buffer.finish().map(|l| l.len()), Some(3));
    }
}
