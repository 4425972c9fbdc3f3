//! The broker: how a message for a target (a client, a channel, everyone) reaches the replicas
//! that hold its sockets, the histories kept for recovery, and who is subscribed to a channel
//! across replicas.
//!
//! One trait, [`Driver`], with three implementations: [`memory::MemoryBroker`] (in-process, the
//! default for a single replica), [`redis::RedisBroker`] (one Redis) and
//! [`redis_cluster::RedisClusterBroker`] (a Redis Cluster, sharded pub/sub). [`Broker`] picks
//! one at start-up.
//! [`link`] watches the Redis broker's two connections and keeps its command connection in step.
//!
//! Subscriptions follow sockets: the registry calls [`Driver::hold`] when a replica gains its
//! first socket of a client or subscriber of a channel and [`Driver::release`] when the last
//! one goes, so a message costs work only on the replicas that hold a recipient. Those calls,
//! and [`Driver::join`]/[`Driver::leave`] (presence), are made under the registry's lock and
//! only enqueue, which keeps them in the order the registry decided.

pub mod cluster_keys;
pub mod history;
pub mod idempotency;
pub mod link;
pub mod members;
pub mod memory;
pub mod redis;
pub mod redis_cluster;
pub mod redis_conn;
pub mod redis_keys;
mod redis_members;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use history::{History, Window};
pub use idempotency::IdempotencyKey;
pub use members::Member;

use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::target::Target;
use crate::token::ClientId;

/// Why the broker could not do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now and nothing was sent (or it refused the request before
    /// acting on it): the message was not accepted. Callers answer 503 and try again later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request went out but no answer came back (a timeout, a connection lost after
    /// sending): the message may or may not have been accepted and delivered. A retry with the
    /// same idempotency key settles it without a second delivery.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The broker is at its memory budget (Redis `maxmemory`): the message was not accepted.
    /// Nothing is wrong with the link; history frees itself as it expires.
    #[error("history is full: the broker is at its memory budget ({0})")]
    HistoryFull(String),
}

/// Called by the broker for every message that reaches this replica, with the message's
/// position when history is kept. Runs on the broker's task: it must not block (the registry
/// only `try_send`s).
pub type Inbox = Arc<dyn Fn(&Target, Option<Position>, &[u8]) + Send + Sync>;

/// The outcome of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Replicas that received the message.
    pub receivers: u64,
    /// Its position in the target's history (None when history is off).
    pub position: Option<Position>,
    /// True when this was a repeat of an idempotency key already used for the target: the
    /// fields above are the first publish's, and nothing was sent again.
    pub repeated: bool,
}

/// One message of a batch ([`Driver::publish_many`]): what [`Driver::publish_once`] takes.
#[derive(Clone, Debug)]
pub struct Publication {
    pub target: Target,
    pub payload: Vec<u8>,
    pub key: Option<IdempotencyKey>,
}

/// Resolves once the broker has confirmed a subscription.
pub type Subscribed = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + Sync>>;

/// What a replica last told the others about itself: its id and an opaque body (JSON, written
/// and read by [`crate::presence`]); the broker only keeps it for a few seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub replica: String,
    pub body: String,
}

/// A broker implementation.
pub trait Driver: Send + Sync + 'static {
    /// Records `payload` in the target's history and sends it to every replica subscribed to
    /// `target`, in one step, so history order is delivery order.
    fn publish(
        &self,
        target: &Target,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send {
        self.publish_once(target, payload, None)
    }

    /// [`Driver::publish`], at most once per `key` and target: within the history's time to
    /// live, a repeat of `key` for `target` sends nothing and answers the first publish's
    /// outcome (`repeated: true`). The check and the publish are one atomic step, so of two
    /// concurrent publishes with one key exactly one is delivered. No key: a plain publish.
    fn publish_once(
        &self,
        target: &Target,
        payload: Vec<u8>,
        key: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send;

    /// Each of `batch` as [`Driver::publish_once`] would publish it, in the order given, with
    /// each one's outcome in that order. A driver with round trips sends the whole batch in
    /// one; this default, one after another, is for the in-process broker, which has none.
    fn publish_many(
        &self,
        batch: Vec<Publication>,
    ) -> impl Future<Output = Vec<Result<Published, BrokerError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(batch.len());
            for message in batch {
                let key = message.key.as_ref();
                results.push(
                    self.publish_once(&message.target, message.payload, key)
                        .await,
                );
            }
            results
        }
    }

    /// What the target's history holds after `after` (for a reconnecting client).
    fn history(
        &self,
        target: &Target,
        after: Position,
    ) -> impl Future<Output = Result<History, BrokerError>> + Send;

    /// Where each target's history stands now: where a new subscriber starts counting from.
    /// A target without a history gets one started (its epoch drawn), so a subscriber that
    /// counts from it will be told if it is lost before the subscriber comes back.
    fn newest(
        &self,
        targets: &[Target],
    ) -> impl Future<Output = Result<Vec<Position>, BrokerError>> + Send;

    /// Starts receiving messages for `target` (a client or a channel; every replica always
    /// receives broadcasts). Enqueues at once; the future confirms.
    fn hold(&self, target: &Target) -> Subscribed;

    /// Stops receiving messages for `target`. Enqueues at once.
    fn release(&self, target: &Target);

    /// One more local socket of `client` subscribes to `channel` (presence). Enqueues at once;
    /// the first socket of a client anywhere makes every subscriber hear a `join`.
    fn join(&self, channel: &ChannelName, client: &ClientId);

    /// One local socket of `client` left `channel`; its last one anywhere makes a `leave`.
    fn leave(&self, channel: &ChannelName, client: &ClientId);

    /// Who is subscribed to `channel`, on which replica, with how many sockets; entries of a
    /// replica that stopped refreshing them are gone within [`members::ENTRY_TTL`].
    fn members(
        &self,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<Vec<Member>, BrokerError>> + Send;

    /// True while connected and subscribed to the broadcast channel.
    fn is_ready(&self) -> bool;

    /// Announces this replica to the others (best effort); kept for a few seconds.
    fn announce(
        &self,
        announcement: &Announcement,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The replicas that announced themselves recently, sorted by id.
    fn replicas(&self) -> impl Future<Output = Result<Vec<Announcement>, BrokerError>> + Send;
}

/// The broker this replica runs with.
#[derive(Clone, Debug)]
pub enum Broker {
    Memory(memory::MemoryBroker),
    Redis(redis::RedisBroker),
    RedisCluster(redis_cluster::RedisClusterBroker),
}

impl Broker {
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Memory(_) => "memory",
            Broker::Redis(_) => "redis",
            Broker::RedisCluster(_) => "redis-cluster",
        }
    }

    /// Whether the connection that carries subscriptions is down: a target held now is
    /// subscribed when it is back, and the resubscribe starts a gap fill for it.
    pub fn subscriber_down(&self) -> bool {
        match self {
            Broker::Memory(_) => false,
            Broker::Redis(b) => b.subscriber_down(),
            Broker::RedisCluster(b) => b.subscriber_down(),
        }
    }

    /// This replica's own view of its broker link right now, in a few words.
    pub fn link_detail(&self) -> String {
        match self {
            Broker::Memory(_) => "in-process broker (this replica only)".to_owned(),
            Broker::Redis(b) => b.link_detail(),
            Broker::RedisCluster(b) => b.link_detail(),
        }
    }

    /// Which shard holds each of `targets` when the broker is a Redis Cluster; `None` on one
    /// Redis or in memory, where there are no shards.
    pub async fn shards(&self, targets: &[Target]) -> Option<Vec<redis_cluster::Shard>> {
        match self {
            Broker::RedisCluster(b) => Some(b.shards(targets).await),
            Broker::Memory(_) | Broker::Redis(_) => None,
        }
    }

    /// The Redis command connection when the broker is Redis, for what else lives in the same
    /// Redis (the state lab's shared state); multiplexed, so sharing it costs no connection.
    pub fn redis_connection(&self) -> Option<redis_conn::RedisConn> {
        match self {
            Broker::Memory(_) => None,
            Broker::Redis(b) => Some(redis_conn::RedisConn::Single(b.connection())),
            Broker::RedisCluster(b) => Some(redis_conn::RedisConn::Cluster(b.connection())),
        }
    }
}

/// The broker a replica runs with is itself a driver, so the suite below runs through it too.
impl Driver for Broker {
    async fn publish_once(
        &self,
        target: &Target,
        payload: Vec<u8>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        match self {
            Broker::Memory(b) => b.publish_once(target, payload, key).await,
            Broker::Redis(b) => b.publish_once(target, payload, key).await,
            Broker::RedisCluster(b) => b.publish_once(target, payload, key).await,
        }
    }

    async fn publish_many(&self, batch: Vec<Publication>) -> Vec<Result<Published, BrokerError>> {
        match self {
            Broker::Memory(b) => b.publish_many(batch).await,
            Broker::Redis(b) => b.publish_many(batch).await,
            Broker::RedisCluster(b) => b.publish_many(batch).await,
        }
    }

    async fn history(&self, target: &Target, after: Position) -> Result<History, BrokerError> {
        match self {
            Broker::Memory(b) => b.history(target, after).await,
            Broker::Redis(b) => b.history(target, after).await,
            Broker::RedisCluster(b) => b.history(target, after).await,
        }
    }

    async fn newest(&self, targets: &[Target]) -> Result<Vec<Position>, BrokerError> {
        match self {
            Broker::Memory(b) => b.newest(targets).await,
            Broker::Redis(b) => b.newest(targets).await,
            Broker::RedisCluster(b) => b.newest(targets).await,
        }
    }

    fn hold(&self, target: &Target) -> Subscribed {
        match self {
            Broker::Memory(b) => b.hold(target),
            Broker::Redis(b) => b.hold(target),
            Broker::RedisCluster(b) => b.hold(target),
        }
    }

    fn release(&self, target: &Target) {
        match self {
            Broker::Memory(b) => b.release(target),
            Broker::Redis(b) => b.release(target),
            Broker::RedisCluster(b) => b.release(target),
        }
    }

    fn join(&self, channel: &ChannelName, client: &ClientId) {
        match self {
            Broker::Memory(b) => b.join(channel, client),
            Broker::Redis(b) => b.join(channel, client),
            Broker::RedisCluster(b) => b.join(channel, client),
        }
    }

    fn leave(&self, channel: &ChannelName, client: &ClientId) {
        match self {
            Broker::Memory(b) => b.leave(channel, client),
            Broker::Redis(b) => b.leave(channel, client),
            Broker::RedisCluster(b) => b.leave(channel, client),
        }
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, BrokerError> {
        match self {
            Broker::Memory(b) => b.members(channel).await,
            Broker::Redis(b) => b.members(channel).await,
            Broker::RedisCluster(b) => b.members(channel).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(b) => b.is_ready(),
            Broker::Redis(b) => b.is_ready(),
            Broker::RedisCluster(b) => b.is_ready(),
        }
    }

    async fn announce(&self, announcement: &Announcement) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(b) => b.announce(announcement).await,
            Broker::Redis(b) => b.announce(announcement).await,
            Broker::RedisCluster(b) => b.announce(announcement).await,
        }
    }

    async fn replicas(&self) -> Result<Vec<Announcement>, BrokerError> {
        match self {
            Broker::Memory(b) => b.replicas().await,
            Broker::Redis(b) => b.replicas().await,
            Broker::RedisCluster(b) => b.replicas().await,
        }
    }
}

/// Test suite every driver must pass; run against both in their modules' tests.
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::cursor::{Epoch, StreamId};

    /// Records what an inbox received.
    #[derive(Clone, Default)]
    pub(crate) struct Collected(Arc<Mutex<Vec<Received>>>);

    type Received = (Target, Option<Position>, Vec<u8>);

    impl Collected {
        pub(crate) fn inbox(&self) -> Inbox {
            let seen = self.0.clone();
            Arc::new(move |target, id, payload| {
                seen.lock()
                    .unwrap()
                    .push((target.clone(), id, payload.to_vec()));
            })
        }

        pub(crate) async fn wait_for(&self, n: usize) -> Vec<Received> {
            for _ in 0..200 {
                if self.0.lock().unwrap().len() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.0.lock().unwrap().clone()
        }

        pub(crate) async fn payloads(&self, n: usize) -> Vec<Vec<u8>> {
            self.wait_for(n)
                .await
                .into_iter()
                .map(|(_, _, p)| p)
                .collect()
        }
    }

    pub(crate) fn window() -> Window {
        Window {
            per_client: 5,
            per_channel: 5,
            broadcast: 5,
            ttl: Duration::from_secs(60),
            read_bytes: usize::MAX,
        }
    }

    fn client(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    async fn receivers<D: Driver>(d: &D, target: &Target, payload: &[u8]) -> u64 {
        d.publish(target, payload.to_vec()).await.unwrap().receivers
    }

    /// `a` and `b` are two replicas on one broker; their inboxes collect into `seen_a`/`seen_b`.
    pub(crate) async fn targeted_publish_reaches_only_holders<D: Driver>(
        a: &D,
        b: &D,
        seen_a: &Collected,
        seen_b: &Collected,
    ) {
        let alice = Target::Client(client("alice"));
        a.hold(&alice).await.unwrap();
        // b holds only a marker client, to observe absence: a replica receives its messages in
        // the order they were published, so whatever b would get of m1 or m2 comes before it.
        b.hold(&Target::Client(client("b-marker"))).await.unwrap();
        assert_eq!(receivers(a, &alice, b"m1").await, 1);
        assert_eq!(
            receivers(b, &Target::Client(client("nobody")), b"m2").await,
            0
        );
        let marker = Target::Client(client("b-marker"));
        assert_eq!(receivers(a, &marker, b"marker").await, 1);
        let got = seen_a.wait_for(1).await;
        assert_eq!(got.len(), 1);
        assert_eq!((&got[0].0, &got[0].2), (&alice, &b"m1".to_vec()));
        assert!(
            got[0].1.is_some(),
            "with history on, a message carries its id"
        );
        assert_eq!(
            seen_b.payloads(1).await,
            vec![b"marker".to_vec()],
            "b holds neither alice nor nobody, so it receives only its marker"
        );

        b.hold(&alice).await.unwrap();
        assert_eq!(receivers(a, &alice, b"m3").await, 2);
        a.release(&alice);
        // release only enqueues; a hold of another client confirms the queue has moved past it
        a.hold(&Target::Client(client("other"))).await.unwrap();
        assert_eq!(receivers(a, &alice, b"m4").await, 1);
        assert_eq!(
            seen_b.payloads(3).await,
            vec![b"marker".to_vec(), b"m3".to_vec(), b"m4".to_vec()]
        );
    }

    pub(crate) async fn broadcast_reaches_every_replica<D: Driver>(
        a: &D,
        b: &D,
        seen_a: &Collected,
        seen_b: &Collected,
    ) {
        assert_eq!(receivers(a, &Target::Broadcast, b"all").await, 2);
        assert_eq!(receivers(b, &Target::Broadcast, b"all 2").await, 2);
        for seen in [seen_a, seen_b] {
            assert_eq!(
                seen.payloads(2).await,
                vec![b"all".to_vec(), b"all 2".to_vec()]
            );
        }
    }

    /// Every kind of history keeps its window the same way, with its own epoch.
    pub(crate) async fn history_returns_what_came_after_a_position<D: Driver>(a: &D) {
        let targets = [
            Target::Client(client("carol")),
            Target::Channel(crate::channel::ChannelName::parse("room:h").unwrap()),
        ];
        for target in targets {
            let start = a.newest(std::slice::from_ref(&target)).await.unwrap()[0];
            assert_eq!(start.id, StreamId::ZERO, "a new {target:?} has no history");
            assert!(start.epoch.is_known(), "counting starts in a known epoch");
            let mut at = Vec::new();
            for i in 0..4u8 {
                at.push(a.publish(&target, vec![i]).await.unwrap().position.unwrap());
            }
            assert!(at.windows(2).all(|w| w[0].id < w[1].id), "{at:?}");
            assert!(
                at.iter().all(|p| p.epoch == start.epoch),
                "one life: {at:?}"
            );
            assert_eq!(
                a.newest(std::slice::from_ref(&target)).await.unwrap()[0],
                at[3]
            );
            let after = a.history(&target, at[0]).await.unwrap();
            assert!(!after.gap);
            assert_eq!(after.epoch, start.epoch);
            assert_eq!(
                after.entries,
                vec![
                    (at[1].id, vec![1]),
                    (at[2].id, vec![2]),
                    (at[3].id, vec![3])
                ]
            );
            let all = a.history(&target, start).await.unwrap();
            assert_eq!(all.entries.len(), 4);
            assert!(!all.gap);
            // An older cursor without an epoch still resumes.
            let old = a
                .history(&target, Position::new(Epoch::UNKNOWN, at[1].id))
                .await
                .unwrap();
            assert_eq!((old.entries.len(), old.gap), (2, false));
            // A cursor of another life of this history is never given a partial replay: all
            // of this life, and a gap.
            let other = a
                .history(&target, Position::new(Epoch(start.epoch.0 ^ 1), at[2].id))
                .await
                .unwrap();
            assert!(other.gap, "another epoch is lost history");
            assert_eq!(other.entries.len(), 4);
            // The window keeps 5: three more push the first two out, and a client behind
            // them hears so.
            for i in 4..7u8 {
                a.publish(&target, vec![i]).await.unwrap();
            }
            let behind = a.history(&target, at[0]).await.unwrap();
            assert!(behind.gap, "message 1 was trimmed");
            assert_eq!(behind.entries.len(), 5);
            assert!(!a.history(&target, at[1]).await.unwrap().gap);
        }
        let unknown = a
            .history(
                &Target::Client(client("dave")),
                Position::new(Epoch(5), StreamId { ms: 1, seq: 0 }),
            )
            .await
            .unwrap();
        assert!(
            unknown.gap && unknown.entries.is_empty(),
            "no history to prove continuity"
        );
        let never = a
            .history(&Target::Client(client("erin")), Position::START)
            .await
            .unwrap();
        assert!(!never.gap, "nothing to miss for a client that saw nothing");
    }

    /// A channel's messages reach the replicas holding a subscriber, and only those; a
    /// presence change of a client's first and last socket anywhere reaches every subscriber.
    pub(crate) async fn channel_messages_and_presence_reach_only_subscribers<D: Driver>(
        a: &D,
        b: &D,
        seen_a: &Collected,
        seen_b: &Collected,
    ) {
        let lobby = crate::channel::ChannelName::parse("public:lobby").unwrap();
        let target = Target::Channel(lobby.clone());
        let marker = Target::Client(client("b-marker"));
        a.hold(&target).await.unwrap();
        b.hold(&marker).await.unwrap();
        assert_eq!(receivers(a, &target, b"c1").await, 1);
        assert_eq!(receivers(a, &marker, b"marker").await, 1);
        assert_eq!(seen_a.payloads(1).await, vec![b"c1".to_vec()]);
        assert_eq!(
            seen_b.payloads(1).await,
            vec![b"marker".to_vec()],
            "b holds no subscriber of the channel"
        );
        b.hold(&target).await.unwrap();
        assert_eq!(receivers(b, &target, b"c2").await, 2);
        // Presence: alice's first socket (on a) joins; her second (on b) does not join again;
        // her last leaving makes the one leave.
        let alice = client("alice");
        a.join(&lobby, &alice);
        b.join(&lobby, &alice);
        let listed = wait_members(a, &lobby, 2).await;
        assert_eq!(
            listed
                .iter()
                .map(|m| (m.client_id.as_str(), m.sockets))
                .collect::<Vec<_>>(),
            vec![("alice", 1), ("alice", 1)],
            "one entry per replica holding her"
        );
        b.leave(&lobby, &alice);
        a.leave(&lobby, &alice);
        assert!(wait_members(a, &lobby, 0).await.is_empty());
        let notes = |seen: &Collected| {
            seen.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(_, _, p)| crate::frame::PresenceNote::decode(p))
                .map(|n| format!("{} {}", n.presence, n.client_id))
                .collect::<Vec<_>>()
        };
        for _ in 0..200 {
            if notes(seen_a).len() >= 2 && notes(seen_b).len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for seen in [seen_a, seen_b] {
            assert_eq!(notes(seen), ["join alice", "leave alice"]);
        }
        a.release(&target);
        b.release(&target);
        b.hold(&marker).await.unwrap();
        assert_eq!(receivers(a, &target, b"nobody").await, 0);
    }

    async fn wait_members<D: Driver>(
        d: &D,
        channel: &crate::channel::ChannelName,
        n: usize,
    ) -> Vec<Member> {
        let mut listed = Vec::new();
        for _ in 0..200 {
            listed = d.members(channel).await.unwrap();
            if listed.len() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        listed
    }

    /// A key is used once per target: its repeats (through any replica, even concurrent ones)
    /// answer the first outcome and deliver nothing; other targets and other keys are apart.
    pub(crate) async fn a_key_publishes_once_per_target<D: Driver>(
        a: &D,
        b: &D,
        seen_a: &Collected,
    ) {
        let key = |s: &str| IdempotencyKey::parse(s.as_bytes()).unwrap();
        let alice = Target::Client(client("alice"));
        let bob = Target::Client(client("bob"));
        a.hold(&alice).await.unwrap();
        a.hold(&bob).await.unwrap();
        let first = a
            .publish_once(&alice, b"m1".to_vec(), Some(&key("k1")))
            .await
            .unwrap();
        assert_eq!((first.receivers, first.repeated), (1, false));
        assert!(first.position.is_some());
        let again = b
            .publish_once(&alice, b"m1 again".to_vec(), Some(&key("k1")))
            .await
            .unwrap();
        assert_eq!(
            again,
            Published {
                repeated: true,
                ..first
            },
            "the first outcome, through the other replica too"
        );
        let to_bob = a
            .publish_once(&bob, b"m2".to_vec(), Some(&key("k1")))
            .await
            .unwrap();
        assert!(!to_bob.repeated, "another target, another use of the key");
        let other_key = a
            .publish_once(&alice, b"m3".to_vec(), Some(&key("k2")))
            .await
            .unwrap();
        assert!(!other_key.repeated);
        assert_ne!(other_key.position, first.position);
        let k3 = key("k3");
        let racing = futures_util::future::join_all((0..20).map(|i| {
            let via = if i % 2 == 0 { a } else { b };
            via.publish_once(&alice, format!("race {i}").into_bytes(), Some(&k3))
        }))
        .await;
        let racing: Vec<Published> = racing.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            racing.iter().filter(|p| !p.repeated).count(),
            1,
            "{racing:?}"
        );
        assert!(racing.windows(2).all(|w| w[0].position == w[1].position));
        assert_eq!(receivers(a, &alice, b"plain").await, 1);
        assert_eq!(receivers(a, &alice, b"plain").await, 1, "no key: no dedup");
        let got = seen_a.payloads(7).await;
        // Give a wrongly repeated delivery a moment to show up behind the last one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got_now = seen_a.payloads(7).await;
        assert_eq!(got, got_now);
        let races: Vec<_> = got.iter().filter(|p| p.starts_with(b"race ")).collect();
        assert_eq!(races.len(), 1, "one of 20 racing repeats delivered");
        let rest: Vec<_> = got.iter().filter(|p| !p.starts_with(b"race ")).collect();
        assert_eq!(
            rest,
            [&b"m1"[..], b"m2", b"m3", b"plain", b"plain"],
            "each keyed message once, repeats never"
        );
    }

    /// A batch is each of its messages published as a single publish would be, in order, with
    /// each outcome in its place: receivers, positions, and a key used twice delivered once.
    pub(crate) async fn a_batch_publishes_each_message_as_a_single_publish_would<D: Driver>(
        a: &D,
        b: &D,
        seen_a: &Collected,
        seen_b: &Collected,
    ) {
        assert!(a.publish_many(Vec::new()).await.is_empty());
        let (alice, bob) = (
            Target::Client(client("alice")),
            Target::Client(client("bob")),
        );
        let room = Target::Channel(crate::channel::ChannelName::parse("room:batch").unwrap());
        a.hold(&alice).await.unwrap();
        a.hold(&room).await.unwrap();
        b.hold(&bob).await.unwrap();
        b.hold(&room).await.unwrap();
        let k = IdempotencyKey::parse(b"batch-k").unwrap();
        let message = |target: &Target, text: &str, key: Option<IdempotencyKey>| Publication {
            target: target.clone(),
            payload: text.as_bytes().to_vec(),
            key,
        };
        let batch = vec![
            message(&alice, "1", None),
            message(&bob, "2", None),
            message(&room, "3", None),
            message(&Target::Client(client("nobody")), "4", None),
            message(&alice, "5", Some(k)),
            message(&alice, "5 again", Some(k)),
            message(&bob, "6", Some(k)),
        ];
        let results: Vec<Published> = a
            .publish_many(batch)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let receivers: Vec<u64> = results.iter().map(|p| p.receivers).collect();
        assert_eq!(receivers, [1, 1, 2, 0, 1, 1, 1], "{results:?}");
        let repeated: Vec<bool> = results.iter().map(|p| p.repeated).collect();
        assert_eq!(repeated, [false, false, false, false, false, true, false]);
        assert!(results.iter().all(|p| p.position.is_some()), "{results:?}");
        let id = |i: usize| results[i].position.unwrap().id;
        assert!(id(0) < id(4), "alice's in order");
        assert_eq!(
            results[5].position, results[4].position,
            "the first outcome"
        );
        assert_eq!(
            a.newest(std::slice::from_ref(&alice)).await.unwrap()[0],
            results[4].position.unwrap(),
            "the repeat was not appended"
        );
        // A marker behind the batch: whatever a replica got of it arrived before.
        let marker = Target::Client(client("b-marker"));
        b.hold(&marker).await.unwrap();
        a.publish(&marker, b"marker".to_vec()).await.unwrap();
        let expect = |texts: &[&str]| -> Vec<Vec<u8>> {
            texts.iter().map(|t| t.as_bytes().to_vec()).collect()
        };
        // Each once, and each target's in the batch's order; targets on different shards of a
        // cluster arrive in no order among themselves.
        let in_order = |got: Vec<Vec<u8>>, first: &[u8], then: &[u8]| {
            let at = |p: &[u8]| got.iter().position(|g| g == p);
            assert!(at(first) < at(then), "{first:?} before {then:?}");
            let mut got = got;
            got.sort();
            got
        };
        let got_a = in_order(seen_a.payloads(3).await, b"1", b"5");
        assert_eq!(got_a, expect(&["1", "3", "5"]), "each once");
        let got_b = in_order(seen_b.payloads(4).await, b"2", b"6");
        assert_eq!(got_b, expect(&["2", "3", "6", "marker"]), "each once");
        let again = a
            .publish_many(vec![message(&alice, "5 later", Some(k))])
            .await;
        assert_eq!(
            again[0].as_ref().unwrap(),
            &Published {
                repeated: true,
                ..results[4]
            },
            "a retried batch repeats nothing"
        );
    }

    pub(crate) async fn announced_replicas_are_listed<D: Driver>(a: &D, b: &D) {
        let info = |id: &str, sockets: u32| Announcement {
            replica: id.to_owned(),
            body: format!("{{\"sockets\":{sockets}}}"),
        };
        b.announce(&info("rb", 2)).await.unwrap();
        a.announce(&info("ra", 1)).await.unwrap();
        let listed = a.replicas().await.unwrap();
        let ours: Vec<_> = listed
            .into_iter()
            .filter(|r| r.replica.starts_with('r'))
            .collect();
        assert_eq!(ours, vec![info("ra", 1), info("rb", 2)]);
    }
}
