//! The names of everything the broker keeps in a Redis Cluster, and [`KeyScheme`], which of the
//! two namings (one Redis, or a cluster) the code shared by both drivers writes.
//!
//! On a cluster every key a script touches must hash to one slot, and a sharded pub/sub channel
//! lives on its slot's shard. So each target's keys share a hash tag, `{client:<id>}`,
//! `{channel:<name>}` or `{broadcast}`, and the publish script (history, epoch, idempotency
//! record and `SPUBLISH`) runs on the one shard that owns the target:
//! - `stickyws:{<tag>}` — the target's sharded pub/sub channel;
//! - `stickyws:{<tag>}:history`, `stickyws:{<tag>}:epoch`, `stickyws:{<tag>}:idem:<sha256>`;
//! - `stickyws:{channel:<name>}:members` — the channel's presence hash, in the channel's slot
//!   (its join/leave notes are `SPUBLISH`ed from the presence script);
//! - `stickyws:{replicas}` and `stickyws:{replicas}:<id>` — the replicas' announcements, all in
//!   one slot so one pipeline writes them and one `MGET` reads them.
//!
//! Client ids and channel names never hold `{` or `}` (their parsers refuse both), so a tag is
//! never cut short. The state lab's keys need no tag: each of its commands touches one key.

use super::IdempotencyKey;
use super::redis_keys;
use crate::channel::ChannelName;
use crate::target::Target;
use crate::token::ClientId;

pub use super::redis_keys::Keys;

/// Every key and channel name starts with this.
const PREFIX: &str = "stickyws:";
/// Sorted set of replica ids scored by their last announcement (ms since the epoch).
pub const REPLICAS_KEY: &str = "stickyws:{replicas}";
/// `stickyws:{replicas}:<id>`: a replica's last announcement, JSON, expiring.
pub const REPLICA_KEY_PREFIX: &str = "stickyws:{replicas}:";

/// The hash tag of a target: what decides its slot.
fn tag(target: &Target) -> String {
    match target {
        Target::Client(client) => format!("client:{client}"),
        Target::Channel(channel) => format!("channel:{channel}"),
        Target::Broadcast => "broadcast".to_owned(),
    }
}

/// The sharded pub/sub channel of a target.
pub fn pubsub_channel(target: &Target) -> String {
    format!("{PREFIX}{{{}}}", tag(target))
}

/// A target's channel, history stream and epoch, all in its slot.
pub fn keys(target: &Target) -> Keys {
    let channel = pubsub_channel(target);
    Keys {
        stream: format!("{channel}:history"),
        epoch: format!("{channel}:epoch"),
        channel,
    }
}

/// Where the outcome of `target`'s publish with `key` is kept, in the target's slot.
pub fn idempotency_record(target: &Target, key: &IdempotencyKey) -> String {
    format!("{}:idem:{}", pubsub_channel(target), key.hex())
}

/// The presence hash of a channel, in the channel's slot.
pub fn members_key(channel: &ChannelName) -> String {
    format!(
        "{}:members",
        pubsub_channel(&Target::Channel(channel.clone()))
    )
}

/// The target a sharded pub/sub channel carries messages for.
pub fn target_of(channel: &str) -> Option<Target> {
    let tag = channel.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let tag = tag.strip_suffix('}')?;
    if tag == "broadcast" {
        return Some(Target::Broadcast);
    }
    if let Some(id) = tag.strip_prefix("client:") {
        return ClientId::parse(id).ok().map(Target::Client);
    }
    let name = tag.strip_prefix("channel:")?;
    ChannelName::parse(name).ok().map(Target::Channel)
}

/// Which naming the code shared by the two Redis drivers writes, and which publish command its
/// scripts call: `PUBLISH` on one Redis (every subscriber of the instance hears it), `SPUBLISH`
/// on a cluster (only the subscribers on the channel's own shard, where the script runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyScheme {
    Single,
    Cluster,
}

impl KeyScheme {
    pub fn keys(self, target: &Target) -> Keys {
        match self {
            KeyScheme::Single => redis_keys::keys(target),
            KeyScheme::Cluster => keys(target),
        }
    }

    pub fn pubsub_channel(self, target: &Target) -> String {
        match self {
            KeyScheme::Single => redis_keys::pubsub_channel(target),
            KeyScheme::Cluster => pubsub_channel(target),
        }
    }

    pub fn idempotency_record(self, target: &Target, key: &IdempotencyKey) -> String {
        match self {
            KeyScheme::Single => redis_keys::idempotency_record(target, key),
            KeyScheme::Cluster => idempotency_record(target, key),
        }
    }

    pub fn members_key(self, channel: &ChannelName) -> String {
        match self {
            KeyScheme::Single => format!("{}{channel}", super::redis_members::MEMBERS_PREFIX),
            KeyScheme::Cluster => members_key(channel),
        }
    }

    /// A script of the single-Redis driver as this scheme runs it: on a cluster its `PUBLISH`
    /// calls become `SPUBLISH`, whose channel (declared among the script's keys) is in the slot
    /// of the script's other keys, so the script still runs whole on one shard.
    pub fn script(self, source: &str) -> redis::Script {
        match self {
            KeyScheme::Single => redis::Script::new(source),
            KeyScheme::Cluster => {
                redis::Script::new(&source.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
            }
        }
    }

    /// Whether invocations for different targets may share one pipeline (one Redis), or must
    /// each go alone to their own slot's shard (a cluster refuses a cross-slot pipeline).
    pub fn pipelines_across_targets(self) -> bool {
        self == KeyScheme::Single
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key without one,
/// mod 16384, as every Redis Cluster node computes it (`CLUSTER KEYSLOT`).
pub fn slot(key: &str) -> u16 {
    // The hash tag decides: everything between the first `{` and the next `}`.
    let tagged = key
        .find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged.as_bytes()) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_channel_history_epoch_record_and_members_share_one_slot() {
        let key = IdempotencyKey::parse(b"k1").unwrap();
        let lobby = ChannelName::parse("public:lobby").unwrap();
        for target in [
            Target::Client(ClientId::parse("alice").unwrap()),
            Target::Channel(lobby.clone()),
            Target::Broadcast,
        ] {
            let keys = keys(&target);
            let slots = [
                slot(&keys.channel),
                slot(&keys.stream),
                slot(&keys.epoch),
                slot(&idempotency_record(&target, &key)),
            ];
            assert!(
                slots.iter().all(|s| *s == slots[0]),
                "{target:?}: {slots:?}"
            );
            assert_eq!(target_of(&keys.channel), Some(target));
        }
        assert_eq!(
            slot(&members_key(&lobby)),
            slot(&pubsub_channel(&Target::Channel(lobby)))
        );
        assert_eq!(
            slot(REPLICAS_KEY),
            slot(&format!("{REPLICA_KEY_PREFIX}app-1"))
        );
        assert_ne!(
            slot(&pubsub_channel(&Target::Client(
                ClientId::parse("a").unwrap()
            ))),
            slot(&pubsub_channel(&Target::Client(
                ClientId::parse("b").unwrap()
            ))),
            "clients spread over slots"
        );
    }

    #[test]
    fn only_our_channels_name_a_target() {
        assert_eq!(target_of("stickyws:{client:a b}"), None);
        assert_eq!(target_of("stickyws:{client:a}:history"), None);
        assert_eq!(target_of("stickyws:client:a"), None);
        assert_eq!(target_of("stickyws:{broadcast}"), Some(Target::Broadcast));
    }

    #[test]
    fn on_a_cluster_the_shared_scripts_publish_on_the_shard() {
        let source = "local r = redis.call('PUBLISH', KEYS[2], ARGV[1])";
        let sharded = KeyScheme::Cluster.script(source);
        assert_ne!(
            sharded.get_hash(),
            KeyScheme::Single.script(source).get_hash()
        );
        assert_eq!(
            sharded.get_hash(),
            redis::Script::new("local r = redis.call('SPUBLISH', KEYS[2], ARGV[1])").get_hash()
        );
    }
}
