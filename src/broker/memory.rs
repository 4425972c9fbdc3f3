//! The in-process broker: what a single replica with no `REDIS_URL` runs on. Several handles can
//! join one hub, which is how the trait's test suite stands two replicas up in one process.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::history::MemoryHistory;
use super::members::{self, Change, Member};
use super::{
    Announcement, BrokerError, ClientId, Driver, History, IdempotencyKey, Inbox, Published,
    Subscribed, Window,
};
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::target::Target;

/// A replica that has not announced itself for this long is no longer listed.
const PRESENCE_TTL: Duration = Duration::from_secs(6);
/// Most idempotency keys remembered at once: past it the oldest are forgotten early (a repeat
/// of one of those would be delivered again), so a flood of keys costs bounded memory.
const MAX_REMEMBERED_KEYS: usize = 100_000;

/// One handle on a shared hub; each handle is one replica.
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    member: Arc<Membership>,
}

/// Leaves the hub when the last clone of a handle is dropped.
struct Membership {
    hub: Arc<Hub>,
    id: u64,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("member", &self.member.id)
            .finish()
    }
}

struct Hub {
    // A std Mutex: every critical section is a few map operations and never awaits.
    state: Mutex<HubState>,
    window: Window,
}

#[derive(Default)]
struct HubState {
    next_member: u64,
    /// Each replica on the hub: its inbox and the name it announced itself with.
    members: HashMap<u64, Inbox>,
    names: HashMap<u64, String>,
    holders: HashMap<Target, HashSet<u64>>,
    presence: BTreeMap<String, (Announcement, Instant)>,
    /// channel → client → replica on the hub → sockets.
    subscribers: HashMap<ChannelName, HashMap<ClientId, HashMap<u64, u32>>>,
    history: MemoryHistory,
    /// The first outcome of each idempotency key per target, until it expires.
    outcomes: HashMap<(Target, IdempotencyKey), Published>,
    /// The same keys in the order they were first used, with when each expires.
    outcome_order: VecDeque<(Instant, Target, IdempotencyKey)>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // No code path panics while holding the lock, and the maps stay consistent even if one did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryBroker {
    /// A broker with a hub of its own, keeping `window` of history, for the replica `replica`.
    pub fn new(replica: &str, inbox: Inbox, window: Window) -> Self {
        let hub = Hub {
            state: Mutex::default(),
            window,
        };
        Self::enter(&Arc::new(hub), replica, inbox)
    }

    /// Another replica, `replica`, on the same hub as `self`.
    pub fn join_same_hub(&self, replica: &str, inbox: Inbox) -> Self {
        Self::enter(&self.hub, replica, inbox)
    }

    fn enter(hub: &Arc<Hub>, replica: &str, inbox: Inbox) -> Self {
        let mut state = hub.lock();
        let member = state.next_member;
        state.next_member += 1;
        state.members.insert(member, inbox);
        state.names.insert(member, replica.to_owned());
        drop(state);
        Self {
            hub: hub.clone(),
            member: Arc::new(Membership {
                hub: hub.clone(),
                id: member,
            }),
        }
    }
}

impl Driver for MemoryBroker {
    async fn publish_once(
        &self,
        target: &Target,
        payload: Vec<u8>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        let payload = bytes::Bytes::from(payload);
        // Collect the inboxes first and call them outside the hub's lock: an inbox takes the
        // registry's lock, and the registry calls hold/release (which take ours) under it.
        // The key is looked up and recorded under the same lock as the append, which is what
        // makes one of two concurrent repeats the only one delivered.
        let (published, inboxes) = {
            let mut state = self.hub.lock();
            let window = self.hub.window;
            if let Some(key) = key {
                state.forget_expired_outcomes();
                if let Some(first) = state.outcomes.get(&(target.clone(), *key)) {
                    return Ok(Published {
                        repeated: true,
                        ..*first
                    });
                }
            }
            let position = window
                .enabled()
                .then(|| state.history.append(target, payload.clone(), &window));
            let inboxes = state.inboxes(target);
            let published = Published {
                receivers: inboxes.len() as u64,
                position,
                repeated: false,
            };
            if let Some(key) = key {
                state.remember_outcome(target, *key, published, window.ttl);
            }
            (published, inboxes)
        };
        for inbox in &inboxes {
            inbox(target, published.position, &payload);
        }
        Ok(published)
    }

    async fn history(&self, target: &Target, after: Position) -> Result<History, BrokerError> {
        let window = self.hub.window;
        Ok(self.hub.lock().history.after(target, after, &window))
    }

    async fn newest(&self, targets: &[Target]) -> Result<Vec<Position>, BrokerError> {
        let window = self.hub.window;
        let mut state = self.hub.lock();
        if !window.enabled() {
            return Ok(vec![Position::START; targets.len()]);
        }
        Ok(targets
            .iter()
            .map(|t| state.history.newest(t, &window))
            .collect())
    }

    fn hold(&self, target: &Target) -> Subscribed {
        self.hub
            .lock()
            .holders
            .entry(target.clone())
            .or_default()
            .insert(self.member.id);
        Box::pin(async { Ok(()) })
    }

    fn release(&self, target: &Target) {
        let mut state = self.hub.lock();
        if let Some(set) = state.holders.get_mut(target) {
            set.remove(&self.member.id);
            if set.is_empty() {
                state.holders.remove(target);
            }
        }
    }

    fn join(&self, channel: &ChannelName, client: &ClientId) {
        self.change(channel, client, Change::Join);
    }

    fn leave(&self, channel: &ChannelName, client: &ClientId) {
        self.change(channel, client, Change::Leave);
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, BrokerError> {
        let state = self.hub.lock();
        let mut list: Vec<Member> = state
            .subscribers
            .get(channel)
            .into_iter()
            .flatten()
            .flat_map(|(client, on)| {
                on.iter().map(|(member, sockets)| Member {
                    client_id: client.to_string(),
                    replica: state.names.get(member).cloned().unwrap_or_default(),
                    sockets: *sockets,
                })
            })
            .collect();
        list.sort();
        Ok(list)
    }

    fn is_ready(&self) -> bool {
        true
    }

    async fn announce(&self, announcement: &Announcement) -> Result<(), BrokerError> {
        self.hub.lock().presence.insert(
            announcement.replica.clone(),
            (announcement.clone(), Instant::now()),
        );
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<Announcement>, BrokerError> {
        let mut state = self.hub.lock();
        state
            .presence
            .retain(|_, (_, seen)| seen.elapsed() < PRESENCE_TTL);
        Ok(state.presence.values().map(|(i, _)| i.clone()).collect())
    }
}

impl HubState {
    fn forget_expired_outcomes(&mut self) {
        let now = Instant::now();
        while let Some((expires, _, _)) = self.outcome_order.front() {
            if *expires > now && self.outcome_order.len() <= MAX_REMEMBERED_KEYS {
                break;
            }
            if let Some((_, target, key)) = self.outcome_order.pop_front() {
                self.outcomes.remove(&(target, key));
            }
        }
    }

    fn remember_outcome(
        &mut self,
        target: &Target,
        key: IdempotencyKey,
        published: Published,
        ttl: Duration,
    ) {
        self.outcomes.insert((target.clone(), key), published);
        self.outcome_order
            .push_back((Instant::now() + ttl, target.clone(), key));
        self.forget_expired_outcomes();
    }

    /// The inboxes of the replicas a message for `target` goes to.
    fn inboxes(&self, target: &Target) -> Vec<Inbox> {
        match target {
            Target::Broadcast => self.members.values().cloned().collect(),
            Target::Client(_) | Target::Channel(_) => self
                .holders
                .get(target)
                .into_iter()
                .flatten()
                .filter_map(|m| self.members.get(m).cloned())
                .collect(),
        }
    }
}

impl MemoryBroker {
    /// Records one socket more or less of `client` on `channel` here, and tells the channel's
    /// subscribers when that makes the client's first or last socket anywhere.
    fn change(&self, channel: &ChannelName, client: &ClientId, change: Change) {
        let mut state = self.hub.lock();
        let me = self.member.id;
        let clients = state.subscribers.entry(channel.clone()).or_default();
        let on = clients.entry(client.clone()).or_default();
        let before = !on.is_empty();
        match change {
            Change::Join => *on.entry(me).or_default() += 1,
            Change::Leave => {
                if let Some(n) = on.get_mut(&me) {
                    *n -= 1;
                    if *n == 0 {
                        on.remove(&me);
                    }
                }
            }
        }
        let after = !on.is_empty();
        if !after {
            clients.remove(client);
        }
        if clients.is_empty() {
            state.subscribers.remove(channel);
        }
        let event = match (before, after) {
            (false, true) => "join",
            (true, false) => "leave",
            _ => return,
        };
        let name = state.names.get(&me).cloned().unwrap_or_default();
        let target = Target::Channel(channel.clone());
        let inboxes = state.inboxes(&target);
        drop(state);
        let note = members::note(event, client, &name);
        // Called under the registry's lock, and an inbox takes that lock: the note goes out
        // from a task of its own (none outside a runtime: nobody would be there to hear it).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for inbox in &inboxes {
                    inbox(&target, None, &note);
                }
            });
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.members.remove(&self.id);
        state.names.remove(&self.id);
        for set in state.holders.values_mut() {
            set.remove(&self.id);
        }
        state.holders.retain(|_, set| !set.is_empty());
        for clients in state.subscribers.values_mut() {
            for on in clients.values_mut() {
                on.remove(&self.id);
            }
            clients.retain(|_, on| !on.is_empty());
        }
        state.subscribers.retain(|_, clients| !clients.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::super::Broker;
    use super::super::suite::{self, Collected};
    use super::*;

    /// Two replicas on one hub, each as the `Broker` a replica runs with, so the suite covers
    /// the dispatch as well as the driver.
    fn pair() -> (Broker, Broker, Collected, Collected) {
        let (seen_a, seen_b) = (Collected::default(), Collected::default());
        let a = MemoryBroker::new("ra", seen_a.inbox(), suite::window());
        let b = a.join_same_hub("rb", seen_b.inbox());
        (Broker::Memory(a), Broker::Memory(b), seen_a, seen_b)
    }

    #[test]
    fn it_says_what_it_is_and_lends_no_redis() {
        let (a, _, _, _) = pair();
        assert_eq!(a.kind(), "memory");
        assert!(a.redis_connection().is_none());
        assert!(a.is_ready(), "in-process: ready from the start");
    }

    #[tokio::test]
    async fn targeted_publish_reaches_only_holders() {
        let (a, b, seen_a, seen_b) = pair();
        suite::targeted_publish_reaches_only_holders(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn broadcast_reaches_every_replica() {
        let (a, b, seen_a, seen_b) = pair();
        suite::broadcast_reaches_every_replica(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn history_returns_what_came_after_a_position() {
        let (a, _, _, _) = pair();
        suite::history_returns_what_came_after_a_position(&a).await;
    }

    #[tokio::test]
    async fn channel_messages_and_presence_reach_only_subscribers() {
        let (a, b, seen_a, seen_b) = pair();
        suite::channel_messages_and_presence_reach_only_subscribers(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn a_key_publishes_once_per_target() {
        let (a, b, seen_a, _) = pair();
        suite::a_key_publishes_once_per_target(&a, &b, &seen_a).await;
    }

    #[tokio::test]
    async fn a_batch_publishes_each_message_as_a_single_publish_would() {
        let (a, b, seen_a, seen_b) = pair();
        suite::a_batch_publishes_each_message_as_a_single_publish_would(&a, &b, &seen_a, &seen_b)
            .await;
    }

    #[tokio::test]
    async fn announced_replicas_are_listed() {
        let (a, b, _, _) = pair();
        suite::announced_replicas_are_listed(&a, &b).await;
    }

    #[tokio::test]
    async fn a_dropped_replica_no_longer_receives() {
        let (a, b, _, _) = pair();
        let alice = ClientId::parse("alice").unwrap();
        let bob = ClientId::parse("bob").unwrap();
        b.hold(&Target::Client(alice.clone())).await.unwrap();
        a.hold(&Target::Client(bob.clone())).await.unwrap();
        let lobby = ChannelName::parse("public:lobby").unwrap();
        b.join(&lobby, &alice);
        drop(b);
        assert!(
            a.members(&lobby).await.unwrap().is_empty(),
            "its presence went with it"
        );
        let to_alice = a.publish(&Target::Client(alice), b"x".to_vec()).await;
        assert_eq!(to_alice.unwrap().receivers, 0);
        let to_bob = a.publish(&Target::Client(bob), b"x".to_vec()).await;
        assert_eq!(to_bob.unwrap().receivers, 1, "the others' holds outlive it");
        let to_all = a.publish(&Target::Broadcast, b"x".to_vec()).await;
        assert_eq!(to_all.unwrap().receivers, 1);
    }
}
