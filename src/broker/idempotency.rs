//! Idempotency keys: what a producer sends (`Idempotency-Key`) so that a retry of a publish whose
//! outcome it does not know delivers nothing twice.
//!
//! Here only the key itself: its limits (at most [`MAX_LEN`] printable ASCII characters) and the
//! digest the brokers store it under, so a key of any shape costs the same fixed few bytes and
//! never reaches a Redis key name as typed. Remembering outcomes is each driver's, inside its
//! publish step (atomic with it); reading the header is the HTTP layer's.

use sha2::{Digest, Sha256};

/// Longest key accepted, in characters (bytes: the key is ASCII).
pub const MAX_LEN: usize = 128;

/// A checked idempotency key, kept as the SHA-256 of what the producer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey([u8; 32]);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIdempotencyKey {
    #[error("the Idempotency-Key is empty")]
    Empty,
    #[error("the Idempotency-Key is {len} characters long; at most {MAX_LEN} are accepted")]
    TooLong { len: usize },
    #[error("the Idempotency-Key must be printable ASCII (space to '~')")]
    NotPrintable,
}

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, BadIdempotencyKey> {
        if raw.is_empty() {
            return Err(BadIdempotencyKey::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(BadIdempotencyKey::TooLong { len: raw.len() });
        }
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(BadIdempotencyKey::NotPrintable);
        }
        Ok(Self(Sha256::digest(raw).into()))
    }

    /// The key of message `index` of a batch sent under this key: a retry of the same batch
    /// under the same key gives each message the same key again, and no two messages one.
    pub fn item(&self, index: usize) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"stickyws batch item\0");
        digest.update(self.0);
        digest.update((index as u64).to_be_bytes());
        Self(digest.finalize().into())
    }

    /// Lower-case hex of the digest: how the Redis broker names the key's record.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_printable_ascii_and_stored_as_their_digest() {
        let a = IdempotencyKey::parse(b"order-17 retry").unwrap();
        assert_eq!(a, IdempotencyKey::parse(b"order-17 retry").unwrap());
        assert_ne!(a, IdempotencyKey::parse(b"order-18 retry").unwrap());
        assert_eq!(a.hex().len(), 64);
        assert!(IdempotencyKey::parse(&[b'k'; MAX_LEN]).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&[b'k'; MAX_LEN + 1]),
            Err(BadIdempotencyKey::TooLong { len: MAX_LEN + 1 })
        );
        assert_eq!(IdempotencyKey::parse(b""), Err(BadIdempotencyKey::Empty));
        for bad in [&b"tab\there"[..], "é".as_bytes(), b"nl\n", b"\x7f"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(BadIdempotencyKey::NotPrintable),
                "{bad:?}"
            );
        }
    }
}
