//! Channels: the name rules, who may subscribe and publish, and the subscription tokens that
//! grant a non-`public:` channel to one client. Which sockets subscribe is the registry's
//! business; who is subscribed across replicas (presence) is the broker's.

use std::fmt;
use std::sync::Arc;

use crate::token::{ClientId, Signer};

/// A channel name: `[A-Za-z0-9_.:-]{1,128}`. Cheap to clone: every delivered frame's cursor
/// and every subscription carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a channel name is 1 to 128 characters of [A-Za-z0-9_.:-]")]
pub struct BadChannelName;

/// Channels with this prefix are open to any client holding a valid client token.
pub const PUBLIC_PREFIX: &str = "public:";

impl ChannelName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, BadChannelName> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(raw.into()))
        } else {
            Err(BadChannelName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Open to every client: no subscription token needed.
    pub fn is_public(&self) -> bool {
        self.0.starts_with(PUBLIC_PREFIX)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", self.0)
    }
}

/// Why a client may not subscribe to a channel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("this channel needs a subscription token (minted with the API key)")]
    TokenRequired,
    #[error("the subscription token is not valid for this client and channel")]
    BadToken,
}

impl Denied {
    pub fn code(&self) -> &'static str {
        match self {
            Denied::TokenRequired => "token_required",
            Denied::BadToken => "bad_subscription_token",
        }
    }
}

/// May `client` subscribe to `channel` with `token`? Public channels need no token; every
/// other one needs a subscription token for exactly this client and channel.
pub fn may_subscribe(
    signer: &Signer,
    client: &ClientId,
    channel: &ChannelName,
    token: Option<&str>,
) -> Result<(), Denied> {
    if channel.is_public() {
        return Ok(());
    }
    let token = token.ok_or(Denied::TokenRequired)?;
    if signer.verify_subscription(client, channel.as_str(), token) {
        Ok(())
    } else {
        Err(Denied::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract_alphabet_and_length() {
        for good in ["public:lobby", "a", "A.b_c-d:e", &"x".repeat(128)] {
            assert!(ChannelName::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a b", "a/b", "ä", "a*", "a\n", &"x".repeat(129)] {
            assert_eq!(ChannelName::parse(bad), Err(BadChannelName), "{bad:?}");
        }
        assert!(ChannelName::parse("public:x").unwrap().is_public());
        assert!(!ChannelName::parse("publicx").unwrap().is_public());
        assert!(!ChannelName::parse("room:public:x").unwrap().is_public());
    }

    #[test]
    fn private_channels_need_this_clients_token_for_this_channel() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let alice = ClientId::parse("alice").unwrap();
        let bob = ClientId::parse("bob").unwrap();
        let room = ChannelName::parse("room:1").unwrap();
        let other = ChannelName::parse("room:2").unwrap();
        let token = signer.mint_subscription(&alice, room.as_str());
        assert_eq!(may_subscribe(&signer, &alice, &room, Some(&token)), Ok(()));
        assert_eq!(
            may_subscribe(&signer, &alice, &room, None),
            Err(Denied::TokenRequired)
        );
        assert_eq!(
            may_subscribe(&signer, &bob, &room, Some(&token)),
            Err(Denied::BadToken),
            "another client's token"
        );
        assert_eq!(
            may_subscribe(&signer, &alice, &other, Some(&token)),
            Err(Denied::BadToken),
            "another channel's token"
        );
        let client_token = signer.mint(&alice);
        assert_eq!(
            may_subscribe(&signer, &alice, &room, Some(&client_token)),
            Err(Denied::BadToken),
            "a client token is not a subscription token"
        );
        let forged = Signer::new(b"another secret 123456").mint_subscription(&alice, "room:1");
        assert_eq!(
            may_subscribe(&signer, &alice, &room, Some(&forged)),
            Err(Denied::BadToken)
        );
        let public = ChannelName::parse("public:lobby").unwrap();
        assert_eq!(may_subscribe(&signer, &bob, &public, None), Ok(()));
        // The codes a client branches on.
        assert_eq!(
            [Denied::TokenRequired.code(), Denied::BadToken.code()],
            ["token_required", "bad_subscription_token"]
        );
    }
}
