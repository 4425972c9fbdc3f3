//! The broker: how a message for a client reaches the replicas that hold its sockets.
//!
//! One trait, [`Driver`], with two implementations: [`memory::MemoryBroker`] (in-process, the
//! default for a single replica) and [`redis::RedisBroker`]. [`Broker`] picks one at start-up.
//!
//! Subscriptions follow sockets: the registry calls [`Driver::hold`] when a replica gains its
//! first socket of a client and [`Driver::release`] when the last one goes, so a message costs
//! work only on the replicas that hold a recipient. Both calls are made under the registry's lock
//! and only enqueue, which keeps hold/release of one client in the order the registry decided.

pub mod history;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use history::{History, Window};

use crate::cursor::StreamId;
use crate::target::Target;
use crate::token::ClientId;

/// Why the broker could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now; callers answer 503 and try again later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker is at its memory budget (Redis `maxmemory`): the message was not accepted.
    /// Nothing is wrong with the link; history frees itself as it expires.
    #[error("history is full: the broker is at its memory budget ({0})")]
    HistoryFull(String),
}

/// Called by the broker for every message that reaches this replica, with the message's id when
/// history is kept. Runs on the broker's task: it must not block (the registry only `try_send`s).
pub type Inbox = Arc<dyn Fn(&Target, Option<StreamId>, &[u8]) + Send + Sync>;

/// The outcome of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Replicas that received the message.
    pub receivers: u64,
    /// Its id in the target's history (None when history is off).
    pub id: Option<StreamId>,
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
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send;

    /// What the target's history holds after `after` (for a reconnecting client).
    fn history(
        &self,
        target: &Target,
        after: StreamId,
    ) -> impl Future<Output = Result<History, BrokerError>> + Send;

    /// The newest id in the client's history and in the broadcast history: where a new client
    /// starts counting from.
    fn newest(
        &self,
        client: &ClientId,
    ) -> impl Future<Output = Result<(StreamId, StreamId), BrokerError>> + Send;

    /// Starts receiving messages for `client`. Enqueues at once; the future confirms.
    fn hold(&self, client: &ClientId) -> Subscribed;

    /// Stops receiving messages for `client`. Enqueues at once.
    fn release(&self, client: &ClientId);

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
}

impl Broker {
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Memory(_) => "memory",
            Broker::Redis(_) => "redis",
        }
    }

    /// The Redis command connection when the broker is Redis, for what else lives in the same
    /// Redis (the state lab's shared state); multiplexed, so sharing it costs no connection.
    pub fn redis_connection(&self) -> Option<::redis::aio::ConnectionManager> {
        match self {
            Broker::Memory(_) => None,
            Broker::Redis(b) => Some(b.connection()),
        }
    }
}

/// The broker a replica runs with is itself a driver, so the suite below runs through it too.
impl Driver for Broker {
    async fn publish(&self, target: &Target, payload: Vec<u8>) -> Result<Published, BrokerError> {
        match self {
            Broker::Memory(b) => b.publish(target, payload).await,
            Broker::Redis(b) => b.publish(target, payload).await,
        }
    }

    async fn history(&self, target: &Target, after: StreamId) -> Result<History, BrokerError> {
        match self {
            Broker::Memory(b) => b.history(target, after).await,
            Broker::Redis(b) => b.history(target, after).await,
        }
    }

    async fn newest(&self, client: &ClientId) -> Result<(StreamId, StreamId), BrokerError> {
        match self {
            Broker::Memory(b) => b.newest(client).await,
            Broker::Redis(b) => b.newest(client).await,
        }
    }

    fn hold(&self, client: &ClientId) -> Subscribed {
        match self {
            Broker::Memory(b) => b.hold(client),
            Broker::Redis(b) => b.hold(client),
        }
    }

    fn release(&self, client: &ClientId) {
        match self {
            Broker::Memory(b) => b.release(client),
            Broker::Redis(b) => b.release(client),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(b) => b.is_ready(),
            Broker::Redis(b) => b.is_ready(),
        }
    }

    async fn announce(&self, announcement: &Announcement) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(b) => b.announce(announcement).await,
            Broker::Redis(b) => b.announce(announcement).await,
        }
    }

    async fn replicas(&self) -> Result<Vec<Announcement>, BrokerError> {
        match self {
            Broker::Memory(b) => b.replicas().await,
            Broker::Redis(b) => b.replicas().await,
        }
    }
}

/// Test suite every driver must pass; run against both in their modules' tests.
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Records what an inbox received.
    #[derive(Clone, Default)]
    pub(crate) struct Collected(Arc<Mutex<Vec<Received>>>);

    type Received = (Target, Option<StreamId>, Vec<u8>);

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
            broadcast: 5,
            ttl: Duration::from_secs(60),
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
        a.hold(&client("alice")).await.unwrap();
        // b holds only a marker client, to observe absence: a replica receives its messages in
        // the order they were published, so whatever b would get of m1 or m2 comes before it.
        b.hold(&client("b-marker")).await.unwrap();
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

        b.hold(&client("alice")).await.unwrap();
        assert_eq!(receivers(a, &alice, b"m3").await, 2);
        a.release(&client("alice"));
        // release only enqueues; a hold of another client confirms the queue has moved past it
        a.hold(&client("other")).await.unwrap();
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

    pub(crate) async fn history_returns_what_came_after_an_id<D: Driver>(a: &D) {
        let carol = client("carol");
        let target = Target::Client(carol.clone());
        let (start, _) = a.newest(&carol).await.unwrap();
        assert_eq!(start, StreamId::ZERO, "a new client has no history");
        let mut ids = Vec::new();
        for i in 0..4u8 {
            ids.push(a.publish(&target, vec![i]).await.unwrap().id.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(a.newest(&carol).await.unwrap().0, ids[3]);
        let after = a.history(&target, ids[0]).await.unwrap();
        assert!(!after.gap);
        assert_eq!(
            after.entries,
            vec![(ids[1], vec![1]), (ids[2], vec![2]), (ids[3], vec![3])]
        );
        let all = a.history(&target, StreamId::ZERO).await.unwrap();
        assert_eq!(all.entries.len(), 4);
        assert!(!all.gap);
        // The window keeps 5: three more push the first two out, and a client behind them hears so.
        for i in 4..7u8 {
            a.publish(&target, vec![i]).await.unwrap();
        }
        let behind = a.history(&target, ids[0]).await.unwrap();
        assert!(behind.gap, "message 1 was trimmed");
        assert_eq!(behind.entries.len(), 5);
        assert!(!a.history(&target, ids[1]).await.unwrap().gap);
        let unknown = a
            .history(&Target::Client(client("dave")), ids[0])
            .await
            .unwrap();
        assert!(
            unknown.gap && unknown.entries.is_empty(),
            "no history to prove continuity"
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
