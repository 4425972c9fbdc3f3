//! Channel presence as the drivers keep it: who is subscribed to a channel, on which replica,
//! with how many sockets, and the `join`/`leave` notes sent to the channel's subscribers when a
//! client's first socket anywhere subscribes or its last one leaves. How each driver stores it
//! is its own business ([`super::memory`], [`super::redis_members`]).

use std::time::Duration;

use serde::Serialize;

use crate::frame::PresenceNote;
use crate::token::ClientId;

/// How long a replica's presence entry lives without being refreshed: a replica that died
/// without saying goodbye disappears from every member list within this.
pub const ENTRY_TTL: Duration = Duration::from_secs(9);
/// How often a replica refreshes the entries of the subscribers it holds.
pub const REFRESH_EVERY: Duration = Duration::from_secs(3);
/// Most clients a member list names (`GET /api/channels/{c}/presence`); `count` still says
/// how many there are.
pub const MAX_LISTED: usize = 1000;

/// One client on one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct Member {
    pub client_id: String,
    pub replica: String,
    pub sockets: u32,
}

/// A presence change as a driver records it: one local socket more or less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

/// The note a `join` or `leave` of `client` on `replica` sends through the broker.
pub fn note(event: &str, client: &ClientId, replica: &str) -> Vec<u8> {
    PresenceNote {
        presence: event.into(),
        client_id: client.as_str().into(),
        replica: replica.into(),
    }
    .encode()
}
