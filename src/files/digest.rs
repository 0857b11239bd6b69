//! The digest each file of a transfer carries in its `FileEnd`, computed by
//! the sender as it reads and by the receiver as it writes. SHA-256 is the
//! API's default, in every language's standard library; XXH3-128 is what
//! rexec's own CLI asks for: it guards against the same accidents (a
//! truncated, reordered or changed byte) at about a fourteenth of the CPU,
//! which on a host that both sends and hashes is the copy's speed (see
//! BENCHMARKS.md, "Files"). The transport's integrity against an attacker
//! is TLS's job, not the digest's.

use bytes::Bytes;
use tonic::Status;
use xxhash_rust::xxh3::Xxh3;

use crate::proto::{Digest, FileEnd};

/// The digest a transfer asked for, from a message's `digest` field.
pub fn kind_of(value: i32) -> Result<Digest, Status> {
    Digest::try_from(value).map_err(|_| Status::invalid_argument(format!("unknown digest {value}")))
}

/// A file's digest while its bytes go by.
pub struct Hasher {
    kind: Digest,
    state: State,
}

/// Boxed: a few hundred bytes each, once per file.
enum State {
    Sha256(Box<ring::digest::Context>),
    Xxh3(Box<Xxh3>),
}

impl Hasher {
    pub fn new(kind: Digest) -> Hasher {
        let state = match kind {
            Digest::Sha256 => {
                State::Sha256(Box::new(ring::digest::Context::new(&ring::digest::SHA256)))
            }
            Digest::Xxh3128 => State::Xxh3(Box::new(Xxh3::new())),
        };
        Hasher { kind, state }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(context) => context.update(data),
            State::Xxh3(state) => state.update(data),
        }
    }

    /// The `FileEnd` that carries it, in the field of its kind.
    pub fn end(self) -> FileEnd {
        match self.state {
            State::Sha256(context) => FileEnd {
                sha256: Bytes::copy_from_slice(context.finish().as_ref()),
                ..FileEnd::default()
            },
            State::Xxh3(state) => FileEnd {
                // The canonical form (big-endian), as xxhsum and Python's
                // `xxhash.xxh3_128().digest()` give it.
                xxh3_128: Bytes::copy_from_slice(&state.digest128().to_be_bytes()),
                ..FileEnd::default()
            },
        }
    }

    /// Whether `end` carries this digest: DATA_LOSS naming `what` if not
    /// (a missing field is a mismatch too).
    pub fn check(self, end: &FileEnd, what: &str) -> Result<(), Status> {
        let kind = self.kind;
        if carried(kind, &self.end()) == carried(kind, end) {
            return Ok(());
        }
        Err(Status::data_loss(format!(
            "{what}: the {} of the bytes received does not match the sender's",
            name(kind)
        )))
    }
}

/// The field of `end` that holds a digest of `kind`.
fn carried(kind: Digest, end: &FileEnd) -> &Bytes {
    match kind {
        Digest::Sha256 => &end.sha256,
        Digest::Xxh3128 => &end.xxh3_128,
    }
}

/// The digest's name in messages and the audit line.
pub fn name(kind: Digest) -> &'static str {
    match kind {
        Digest::Sha256 => "sha256",
        Digest::Xxh3128 => "xxh3_128",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(kind: Digest, parts: &[&[u8]]) -> FileEnd {
        let mut hasher = Hasher::new(kind);
        for part in parts {
            hasher.update(part);
        }
        hasher.end()
    }

    #[test]
    fn known_answers_in_their_own_fields() {
        let sha = digest_of(Digest::Sha256, &[b"a", b"bc"]);
        assert_eq!(
            hex(&sha.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha.xxh3_128.is_empty());
        // xxhsum -H2 of "abc" (XXH3_128bits, canonical form).
        let xxh = digest_of(Digest::Xxh3128, &[b"ab", b"c"]);
        assert_eq!(hex(&xxh.xxh3_128), "06b05ab6733a618578af5f94892f3950");
        assert!(xxh.sha256.is_empty());
    }

    #[test]
    fn a_changed_byte_or_the_other_field_is_data_loss() {
        for kind in [Digest::Sha256, Digest::Xxh3128] {
            let end = digest_of(kind, &[b"hello"]);
            let mut same = Hasher::new(kind);
            same.update(b"hello");
            assert!(same.check(&end, "f").is_ok());
            let mut changed = Hasher::new(kind);
            changed.update(b"hellp");
            let err = changed.check(&end, "f").unwrap_err();
            assert_eq!(err.code(), tonic::Code::DataLoss);
        }
        // A SHA-256 where XXH3-128 was agreed is no digest at all.
        let sha = digest_of(Digest::Sha256, &[b"x"]);
        let mut xxh = Hasher::new(Digest::Xxh3128);
        xxh.update(b"x");
        assert_eq!(
            xxh.check(&sha, "f").unwrap_err().code(),
            tonic::Code::DataLoss
        );
    }

    #[test]
    fn unknown_kinds_are_invalid() {
        assert_eq!(kind_of(0).unwrap(), Digest::Sha256);
        assert_eq!(kind_of(1).unwrap(), Digest::Xxh3128);
        assert_eq!(kind_of(7).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
