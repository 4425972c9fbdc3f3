//! The names of everything the Redis broker keeps in Redis: the pub/sub channel, history stream
//! and epoch of each target, and the replicas' announcements. One place, so the broker, the
//! presence task and the tests agree on them; what is done with them is theirs.

use super::IdempotencyKey;
use crate::target::Target;
use crate::token::ClientId;

/// Channel of one client's messages: `stickyws:client:<client id>`.
pub const CLIENT_CHANNEL_PREFIX: &str = "stickyws:client:";
/// Pub/sub channel of one channel's messages: `stickyws:channel:<name>`.
pub const CHANNEL_CHANNEL_PREFIX: &str = "stickyws:channel:";
/// Channel every replica subscribes to for `/api/broadcast`.
pub const BROADCAST_CHANNEL: &str = "stickyws:broadcast";
/// Stream of one client's recent messages (`<prefix><client id>`), for recovery; a channel's
/// is `<prefix>#<name>` (`#` is in no client id).
pub const CLIENT_STREAM_PREFIX: &str = "stickyws:history:";
/// Stream of recent broadcasts, for recovery.
pub const BROADCAST_STREAM: &str = "stickyws:history:*broadcast";
/// The epoch of each history: `<prefix><what follows the stream prefix>`, expiring with it.
pub const EPOCH_PREFIX: &str = "stickyws:epoch:";
/// The first outcome of a publish with an idempotency key:
/// `<prefix><what follows the stream prefix>:<SHA-256 of the key, hex>`, a string
/// `<epoch> <id> <receivers>`, expiring with the history. The target's part comes first so a
/// hash tag on it (Redis Cluster) keeps the record in the slot of the target's stream.
pub const IDEMPOTENCY_PREFIX: &str = "stickyws:idem:";
/// Sorted set of replica ids scored by when they last announced themselves (ms since epoch).
pub const REPLICAS_KEY: &str = "stickyws:replicas";
/// `stickyws:replica:<id>`: the replica's last announcement, JSON, expiring.
pub const REPLICA_KEY_PREFIX: &str = "stickyws:replica:";

pub fn client_channel(client: &ClientId) -> String {
    format!("{CLIENT_CHANNEL_PREFIX}{client}")
}

/// The pub/sub channel of a target.
pub fn pubsub_channel(target: &Target) -> String {
    match target {
        Target::Client(client) => client_channel(client),
        Target::Channel(channel) => format!("{CHANNEL_CHANNEL_PREFIX}{channel}"),
        Target::Broadcast => BROADCAST_CHANNEL.to_owned(),
    }
}

/// A target's keys: its pub/sub channel, its history stream and its epoch.
#[derive(Debug)]
pub struct Keys {
    pub channel: String,
    pub stream: String,
    pub epoch: String,
}

/// What follows the prefix in each of a target's keys.
fn suffix(target: &Target) -> String {
    match target {
        Target::Client(client) => client.to_string(),
        Target::Channel(channel) => format!("#{channel}"),
        Target::Broadcast => "*broadcast".to_owned(),
    }
}

/// Where the outcome of `target`'s publish with `key` is kept.
pub fn idempotency_record(target: &Target, key: &IdempotencyKey) -> String {
    format!("{IDEMPOTENCY_PREFIX}{}:{}", suffix(target), key.hex())
}

pub fn keys(target: &Target) -> Keys {
    let suffix = suffix(target);
    Keys {
        channel: pubsub_channel(target),
        stream: format!("{CLIENT_STREAM_PREFIX}{suffix}"),
        epoch: format!("{EPOCH_PREFIX}{suffix}"),
    }
}
