//! Client ids and the tokens that prove a holder may act as one.
//!
//! A token is HMAC-SHA256 of the client id under `STICKY_SECRET`, base64url without padding, so
//! any replica sharing the secret can check it without asking anyone. Checks run in constant
//! time (`Mac::verify_slice`).

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A client id: `[A-Za-z0-9_-]{1,64}`. Shared, not copied: one socket's id is held by its
/// session, its registration, the registry's maps and the broker's, and a clone is a count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

/// Why a string is not a client id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("client id must be 1 to 64 characters of [A-Za-z0-9_-]")]
pub struct BadClientId;

impl ClientId {
    pub const MAX_LEN: usize = 64;

    /// Validates a client id taken from a request.
    pub fn parse(raw: &str) -> Result<Self, BadClientId> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(raw.into()))
        } else {
            Err(BadClientId)
        }
    }

    /// A fresh random id: 128 bits, 22 characters.
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

/// Mints and checks client tokens under one secret. A handle: every socket's session holds
/// one, and the keyed HMAC state (a few hundred bytes) is shared, not copied into each.
#[derive(Clone)]
pub struct Signer {
    mac: Arc<Hmac<Sha256>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

/// Bound to the purpose, so a MAC computed here is useless anywhere else the secret is used.
const DOMAIN: &[u8] = b"stickyws client token v1\0";

/// Subscription tokens use their own domain: a client token never passes for one.
const SUBSCRIPTION_DOMAIN: &[u8] = b"stickyws subscription token v1\0";

/// A token is 32 bytes of MAC, base64url: 43 characters. Longer input is refused unread.
const TOKEN_LEN: usize = 43;

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mac = match Hmac::<Sha256>::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Self { mac: Arc::new(mac) }
    }

    fn mac_for(&self, client: &ClientId) -> Hmac<Sha256> {
        let mut mac = Hmac::clone(&self.mac);
        mac.update(DOMAIN);
        mac.update(client.as_str().as_bytes());
        mac
    }

    pub fn mint(&self, client: &ClientId) -> String {
        URL_SAFE_NO_PAD.encode(self.mac_for(client).finalize().into_bytes())
    }

    /// True when `token` was minted for `client` under this secret.
    pub fn verify(&self, client: &ClientId, token: &str) -> bool {
        check(self.mac_for(client), token)
    }

    /// MAC of (client, channel); the client id's alphabet has no NUL, so the pair is unambiguous.
    fn subscription_mac(&self, client: &ClientId, channel: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::clone(&self.mac);
        mac.update(SUBSCRIPTION_DOMAIN);
        mac.update(client.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(channel.as_bytes());
        mac
    }

    /// A token granting `client` the channel `channel` (`POST /api/channels/{c}/tokens`).
    pub fn mint_subscription(&self, client: &ClientId, channel: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.subscription_mac(client, channel)
                .finalize()
                .into_bytes(),
        )
    }

    /// True when `token` was minted for exactly this client and channel under this secret.
    pub fn verify_subscription(&self, client: &ClientId, channel: &str, token: &str) -> bool {
        check(self.subscription_mac(client, channel), token)
    }
}

/// Constant-time check of a base64url token against `mac`; a wrong length is refused unread.
fn check(mac: Hmac<Sha256>, token: &str) -> bool {
    if token.len() != TOKEN_LEN {
        return false;
    }
    let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    mac.verify_slice(&raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_for_its_client() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let token = signer.mint(&id("alice"));
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(signer.verify(&id("alice"), &token));
    }

    #[test]
    fn a_token_does_not_verify_for_another_client() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let token = signer.mint(&id("alice"));
        assert!(!signer.verify(&id("alicf"), &token));
        assert!(!signer.verify(&id("bob"), &token));
    }

    #[test]
    fn a_token_from_another_secret_does_not_verify() {
        let ours = Signer::new(b"0123456789abcdef0123");
        let theirs = Signer::new(b"0123456789abcdef0124");
        assert!(!ours.verify(&id("alice"), &theirs.mint(&id("alice"))));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let good = signer.mint(&id("alice"));
        let mut flipped = good.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "x",
            &good[..42],
            &format!("{good}A"),
            &"!".repeat(43),
            &flipped,
        ] {
            assert!(!signer.verify(&id("alice"), bad), "{bad:?}");
        }
    }

    #[test]
    fn client_ids_outside_the_alphabet_are_refused() {
        for bad in ["", "a b", "a/b", "ä", "a.b", "a%20", &"x".repeat(65)] {
            assert_eq!(ClientId::parse(bad), Err(BadClientId), "{bad:?}");
        }
        assert!(ClientId::parse(&"x".repeat(64)).is_ok());
        assert!(ClientId::parse("Az09_-").is_ok());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = ClientId::generate();
        let b = ClientId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(ClientId::parse(a.as_str()), Ok(a));
    }
}
