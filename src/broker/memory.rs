//! The in-process broker: what a single replica with no `REDIS_URL` runs on. Several handles can
//! join one hub, which is how the trait's test suite stands two replicas up in one process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::history::MemoryHistory;
use super::{
    Announcement, BrokerError, ClientId, Driver, History, Inbox, Published, Subscribed, Window,
};
use crate::cursor::StreamId;
use crate::target::Target;

/// A replica that has not announced itself for this long is no longer listed.
const PRESENCE_TTL: Duration = Duration::from_secs(6);

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
    members: HashMap<u64, Inbox>,
    holders: HashMap<ClientId, HashSet<u64>>,
    presence: BTreeMap<String, (Announcement, Instant)>,
    history: MemoryHistory,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // No code path panics while holding the lock, and the maps stay consistent even if one did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryBroker {
    /// A broker with a hub of its own, keeping `window` of history.
    pub fn new(inbox: Inbox, window: Window) -> Self {
        let hub = Hub {
            state: Mutex::default(),
            window,
        };
        Self::join(&Arc::new(hub), inbox)
    }

    /// Another replica on the same hub as `self`.
    pub fn join_same_hub(&self, inbox: Inbox) -> Self {
        Self::join(&self.hub, inbox)
    }

    fn join(hub: &Arc<Hub>, inbox: Inbox) -> Self {
        let mut state = hub.lock();
        let member = state.next_member;
        state.next_member += 1;
        state.members.insert(member, inbox);
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
    async fn publish(&self, target: &Target, payload: Vec<u8>) -> Result<Published, BrokerError> {
        let payload = bytes::Bytes::from(payload);
        // Collect the inboxes first and call them outside the hub's lock: an inbox takes the
        // registry's lock, and the registry calls hold/release (which take ours) under it.
        let (id, inboxes): (Option<StreamId>, Vec<Inbox>) = {
            let mut state = self.hub.lock();
            let window = self.hub.window;
            let id = window
                .enabled()
                .then(|| state.history.append(target, payload.clone(), &window));
            let inboxes = match target {
                Target::Broadcast => state.members.values().cloned().collect(),
                Target::Client(client) => state
                    .holders
                    .get(client)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| state.members.get(m).cloned())
                    .collect(),
            };
            (id, inboxes)
        };
        for inbox in &inboxes {
            inbox(target, id, &payload);
        }
        Ok(Published {
            receivers: inboxes.len() as u64,
            id,
        })
    }

    async fn history(&self, target: &Target, after: StreamId) -> Result<History, BrokerError> {
        let window = self.hub.window;
        Ok(self.hub.lock().history.after(target, after, &window))
    }

    async fn newest(&self, client: &ClientId) -> Result<(StreamId, StreamId), BrokerError> {
        let window = self.hub.window;
        let mut state = self.hub.lock();
        let own = state
            .history
            .newest(&Target::Client(client.clone()), &window);
        let broadcast = state.history.newest(&Target::Broadcast, &window);
        Ok((own, broadcast))
    }

    fn hold(&self, client: &ClientId) -> Subscribed {
        self.hub
            .lock()
            .holders
            .entry(client.clone())
            .or_default()
            .insert(self.member.id);
        Box::pin(async { Ok(()) })
    }

    fn release(&self, client: &ClientId) {
        let mut state = self.hub.lock();
        if let Some(set) = state.holders.get_mut(client) {
            set.remove(&self.member.id);
            if set.is_empty() {
                state.holders.remove(client);
            }
        }
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

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.members.remove(&self.id);
        for set in state.holders.values_mut() {
            set.remove(&self.id);
        }
        state.holders.retain(|_, set| !set.is_empty());
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
        let a = MemoryBroker::new(seen_a.inbox(), suite::window());
        let b = a.join_same_hub(seen_b.inbox());
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
    async fn history_returns_what_came_after_an_id() {
        let (a, _, _, _) = pair();
        suite::history_returns_what_came_after_an_id(&a).await;
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
        b.hold(&alice).await.unwrap();
        a.hold(&bob).await.unwrap();
        drop(b);
        let to_alice = a.publish(&Target::Client(alice), b"x".to_vec()).await;
        assert_eq!(to_alice.unwrap().receivers, 0);
        let to_bob = a.publish(&Target::Client(bob), b"x".to_vec()).await;
        assert_eq!(to_bob.unwrap().receivers, 1, "the others' holds outlive it");
        let to_all = a.publish(&Target::Broadcast, b"x".to_vec()).await;
        assert_eq!(to_all.unwrap().receivers, 1);
    }
}
