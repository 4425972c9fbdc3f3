//! The sockets this replica holds: client id → its sockets (tabs), and channel → its subscribed
//! sockets, each socket fed by one bounded queue.
//!
//! `deliver` hands one pre-serialized frame to every local socket of a target with `try_send`:
//! a full queue never blocks the caller (a broker task or an HTTP handler); the socket is marked
//! a slow consumer instead and its session closes it. Registering the first socket of a client,
//! or subscribing the first socket to a channel, holds that target at the broker; removing the
//! last releases it; each subscription is a presence join and each unsubscription a leave. All
//! of it happens under the registry's lock so the broker sees it in the order it happened. The broker is passed in by the caller and kept
//! by each registration, not owned here: the broker's inbox delivers into the registry, so a
//! registry owning its broker would make the two a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::alarm::{Alarm, Reason};

use crate::broker::{Broker, Driver, Subscribed};
use crate::channel::ChannelName;
use crate::continuity::{Admit, Landed, Track};
use crate::cursor::Position;
use crate::frame::Outgoing;
use crate::metrics::Metrics;
use crate::socket_queue;
use crate::target::Target;
use crate::token::ClientId;

/// Handle on the registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metrics: Metrics,
    max_sockets: usize,
    max_per_client: usize,
    max_channels: usize,
    queue: usize,
    // A std Mutex: critical sections are map lookups and `try_send`s, never an `.await`.
    state: Mutex<State>,
    /// Rung when targets start waiting for a gap fill, or when the broker is back for fills
    /// that were put off ([`crate::gap_fill`] waits on it).
    fills_due: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<ClientId, Vec<Tab>>,
    /// Each channel with a local subscriber, and those subscribers.
    channels: HashMap<ChannelName, Vec<Subscriber>>,
    /// The channels of each socket that has any, so a closing socket leaves them all.
    subscriptions: HashMap<u64, Vec<ChannelName>>,
    /// Where each held target's delivery stands ([`crate::continuity`]); removed with the
    /// target's last socket.
    tracks: HashMap<Target, Track>,
    /// Bytes of live messages held by all targets being filled.
    held_bytes: usize,
    /// Counts resubscribes after a loss; each one starts a fill round.
    fill_round: u64,
    sockets: usize,
    next_id: u64,
}

/// A socket subscribed to a channel.
#[derive(Debug)]
struct Subscriber {
    client: ClientId,
    tab: Tab,
}

/// One socket as the registry sees it.
#[derive(Debug, Clone)]
struct Tab {
    id: u64,
    queue: socket_queue::Sender<Outgoing>,
    /// Raised when the queue overflows (the session then closes the socket with 1013), or when
    /// messages this socket's target missed could not be filled (1012, so the client resumes
    /// from its cursor).
    alarm: Alarm,
}

/// Why a socket was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("this replica holds its maximum of {0} sockets")]
    ReplicaFull(usize),
    #[error("this client already holds its maximum of {0} sockets on this replica")]
    ClientFull(usize),
}

/// Why a socket could not subscribe or unsubscribe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("this socket is already subscribed to the channel")]
    AlreadySubscribed,
    #[error("this socket is not subscribed to the channel")]
    NotSubscribed,
    #[error("a socket may subscribe to at most {0} channels")]
    TooManyChannels(usize),
    #[error("the socket is closing")]
    Gone,
}

impl SubscribeError {
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::AlreadySubscribed => "already_subscribed",
            SubscribeError::NotSubscribed => "not_subscribed",
            SubscribeError::TooManyChannels(_) => "too_many_channels",
            SubscribeError::Gone => "closing",
        }
    }
}

/// A socket's place in the registry; dropping it removes the socket.
pub struct Registration {
    registry: Registry,
    /// Released through when the last socket of the client goes.
    broker: Broker,
    client: ClientId,
    id: u64,
    /// The socket's own queue, for frames only it should get (its echoes, its errors).
    pub queue: socket_queue::Sender<Outgoing>,
    /// Everything delivered to the socket, in order.
    pub outbox: Option<socket_queue::Receiver<Outgoing>>,
    /// Raised when the socket fell behind, or must resume from its cursor (a gap that could
    /// not be filled).
    pub alarm: Alarm,
    /// Set for the first socket of a client: resolves once the broker subscribed.
    pub subscribed: Option<Subscribed>,
}

/// The result of one delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Sockets whose queue took the frame.
    pub reached: usize,
    /// Sockets whose queue was full; they are being closed.
    pub overflowed: usize,
    /// Held while the target is being filled (or dropped, the hold budget being spent).
    pub held: bool,
    /// Already delivered by a fill: dropped.
    pub duplicate: bool,
}

impl Registry {
    pub fn new(metrics: Metrics, limits: &crate::limits::Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                max_sockets: limits.max_sockets,
                max_per_client: limits.max_sockets_per_client,
                max_channels: limits.channels_per_socket,
                queue: limits.socket_queue,
                state: Mutex::new(State::default()),
                fills_due: tokio::sync::Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; the maps stay consistent even if something did.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one socket of `client`; the first one of a client holds it at `broker`.
    pub fn register(&self, client: &ClientId, broker: &Broker) -> Result<Registration, AdmitError> {
        let mut state = self.lock();
        if state.sockets >= self.inner.max_sockets {
            return Err(AdmitError::ReplicaFull(self.inner.max_sockets));
        }
        let held = state.clients.get(client).map_or(0, Vec::len);
        if held >= self.inner.max_per_client {
            return Err(AdmitError::ClientFull(self.inner.max_per_client));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.sockets += 1;
        let (queue, outbox) = socket_queue::channel(self.inner.queue);
        let alarm = Alarm::default();
        // Most clients hold one socket: a Vec's first growth would make room for four.
        state
            .clients
            .entry(client.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Tab {
                id,
                queue: queue.clone(),
                alarm: alarm.clone(),
            });
        let first = held == 0;
        let subscribed = first.then(|| broker.hold(&Target::Client(client.clone())));
        drop(state);
        self.inner.metrics.socket_opened(first);
        Ok(Registration {
            registry: self.clone(),
            broker: broker.clone(),
            client: client.clone(),
            id,
            queue,
            outbox: Some(outbox),
            alarm,
            subscribed,
        })
    }

    fn remove(&self, client: &ClientId, id: u64, broker: &Broker) {
        let mut state = self.lock();
        let Some(tabs) = state.clients.get_mut(client) else {
            return;
        };
        let before = tabs.len();
        tabs.retain(|tab| tab.id != id);
        if tabs.len() == before {
            return;
        }
        let last = tabs.is_empty();
        if last {
            state.clients.remove(client);
            let target = Target::Client(client.clone());
            state.forget(&target);
            broker.release(&target);
            if state.clients.is_empty() {
                state.forget(&Target::Broadcast);
            }
        }
        state.sockets -= 1;
        for channel in state.subscriptions.remove(&id).unwrap_or_default() {
            state.drop_subscriber(&channel, id, broker, &self.inner.metrics);
        }
        drop(state);
        self.inner.metrics.socket_closed(last);
    }

    /// Queues `frame` on every local socket of `target`. A message with a history position
    /// passes the target's [`Track`] first: held while the target is being filled, dropped if
    /// a fill already delivered it.
    pub fn deliver(&self, target: &Target, frame: &Outgoing) -> Delivery {
        let mut state = self.lock();
        if let (Some(cursor), None) = (&frame.cursor, &frame.mark)
            && state.holds(target)
        {
            let State {
                tracks, held_bytes, ..
            } = &mut *state;
            let track = match tracks.get_mut(target) {
                Some(track) => track,
                None => tracks.entry(target.clone()).or_default(),
            };
            match track.admit(cursor.position(), frame, held_bytes) {
                Admit::Pass => {}
                Admit::Held | Admit::Overflow => {
                    return Delivery {
                        held: true,
                        ..Delivery::default()
                    };
                }
                Admit::Duplicate => {
                    return Delivery {
                        duplicate: true,
                        ..Delivery::default()
                    };
                }
            }
        }
        state.offer(target, frame, &self.inner.metrics)
    }

    /// The subscriber is subscribed again after a loss: every held target starts holding its
    /// live messages until its fill lands. Returns the round and how many targets wait.
    /// Called before any message of the new subscription is delivered.
    pub fn begin_fill(&self) -> (u64, usize) {
        let mut state = self.lock();
        state.fill_round += 1;
        let round = state.fill_round;
        let mut targets: Vec<Target> = state.clients.keys().cloned().map(Target::Client).collect();
        targets.extend(state.channels.keys().cloned().map(Target::Channel));
        if !state.clients.is_empty() {
            targets.push(Target::Broadcast);
        }
        for target in &targets {
            state.tracks.entry(target.clone()).or_default().begin(round);
        }
        drop(state);
        self.wake_fills();
        (round, targets.len())
    }

    /// One socket of `target` resumed from `from` while its history could not be read: the
    /// target waits for a fill from there, as after a lost subscription. False when a fill
    /// cannot stand for the replay: `from` has no epoch to check a history against, or other
    /// sockets of the target here were already delivered past it (a fill goes to every socket
    /// of the target, so it would repeat to them what they have).
    pub fn refill(&self, target: &Target, from: Position) -> bool {
        if !from.epoch.is_known() {
            return false;
        }
        let mut state = self.lock();
        if !state.holds(target) {
            return false;
        }
        state.fill_round += 1;
        let round = state.fill_round;
        let track = state.tracks.entry(target.clone()).or_default();
        if track.delivered().is_some_and(|last| last != from) {
            return false;
        }
        track.started(from);
        track.begin(round);
        drop(state);
        self.wake_fills();
        true
    }

    /// Asks the gap fill to look at what is waiting (e.g. the broker is back for fills it put
    /// off while the broker could not answer).
    pub fn wake_fills(&self) {
        self.inner.fills_due.notify_one();
    }

    /// Resolves when fills may be due (see [`Registry::wake_fills`]).
    pub async fn fills_due(&self) {
        self.inner.fills_due.notified().await;
    }

    /// Where a fill of `target` reads history from, and the round it answers; None when the
    /// target is not waiting for a fill.
    pub fn fill_from(&self, target: &Target) -> Option<(u64, Option<Position>)> {
        let state = self.lock();
        let track = state.tracks.get(target)?;
        Some((track.round()?, track.from()))
    }

    /// Targets waiting for a fill.
    pub fn filling(&self) -> Vec<Target> {
        let state = self.lock();
        state
            .tracks
            .iter()
            .filter(|(_, track)| track.is_filling())
            .map(|(target, _)| target.clone())
            .collect()
    }

    /// A fill of `target` for `round` read `filled`: what the sockets have not had yet, then
    /// the held live messages after it, become ready to go out ([`Registry::pump`]). Returns
    /// how many are ready, or (as the error) how many sockets were told to resume instead,
    /// what was held having overflowed the budget.
    pub fn land(
        &self,
        target: &Target,
        filled: Vec<(Position, Outgoing)>,
        round: u64,
    ) -> Result<usize, usize> {
        let mut state = self.lock();
        let State {
            tracks, held_bytes, ..
        } = &mut *state;
        let Some(track) = tracks.get_mut(target) else {
            return Ok(0);
        };
        match track.land(filled, round, held_bytes) {
            Landed::Ready(n) => Ok(n),
            // The next round reads again; nothing of this one goes out.
            Landed::Stale => Ok(0),
            Landed::Resync => Err(state.resync(target)),
        }
    }

    /// Queues as many of `target`'s ready messages as every one of its sockets has room for
    /// (all of them when `force`: then a socket without room is a slow consumer, as for any
    /// message). Returns how many are still ready.
    pub fn pump(&self, target: &Target, force: bool) -> usize {
        let mut state = self.lock();
        let room = if force {
            usize::MAX
        } else {
            state.room(target)
        };
        let State {
            tracks, held_bytes, ..
        } = &mut *state;
        let Some(track) = tracks.get_mut(target) else {
            return 0;
        };
        let frames = track.take(room, held_bytes);
        let left = track.ready();
        for frame in &frames {
            state.offer(target, frame, &self.inner.metrics);
        }
        left
    }

    /// What `target` missed cannot be delivered (lost history, or unreadable): its sockets are
    /// closed with 1012 so their clients resume from their cursors. Returns how many.
    pub fn resync(&self, target: &Target) -> usize {
        self.lock().resync(target)
    }

    /// A socket of `target` started at `at` (its welcome or `subscribed` cursor).
    pub fn started(&self, target: &Target, at: Position) {
        let mut state = self.lock();
        if state.holds(target) {
            state.tracks.entry(target.clone()).or_default().started(at);
        }
    }

    /// Sockets held and distinct clients.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.sockets, state.clients.len())
    }

    /// Channels with a local subscriber, and subscriptions (socket × channel) held.
    pub fn channel_counts(&self) -> (usize, usize) {
        let state = self.lock();
        let subscriptions = state.channels.values().map(Vec::len).sum();
        (state.channels.len(), subscriptions)
    }

    /// Local sockets subscribed to `channel`.
    pub fn subscribers_of(&self, channel: &ChannelName) -> usize {
        self.lock().channels.get(channel).map_or(0, Vec::len)
    }

    /// Local sockets of one client.
    pub fn sockets_of(&self, client: &ClientId) -> usize {
        self.lock().clients.get(client).map_or(0, Vec::len)
    }
}

fn offer<'a>(tabs: impl Iterator<Item = &'a Tab>, frame: &Outgoing, metrics: &Metrics) -> Delivery {
    let mut delivery = Delivery::default();
    for tab in tabs {
        match tab.queue.try_send(frame.clone()) {
            Ok(()) => delivery.reached += 1,
            Err(socket_queue::TrySendError::Full(_)) => {
                if tab.alarm.raise(Reason::Slow) {
                    metrics.slow_consumer();
                }
                delivery.overflowed += 1;
            }
            // The session is ending; its registration is about to be dropped.
            Err(socket_queue::TrySendError::Closed(_)) => {}
        }
    }
    delivery
}

impl State {
    /// Whether any local socket belongs to `target`.
    fn holds(&self, target: &Target) -> bool {
        match target {
            Target::Client(client) => self.clients.contains_key(client),
            Target::Channel(channel) => self.channels.contains_key(channel),
            Target::Broadcast => !self.clients.is_empty(),
        }
    }

    fn offer(&self, target: &Target, frame: &Outgoing, metrics: &Metrics) -> Delivery {
        match target {
            Target::Client(client) => match self.clients.get(client) {
                Some(tabs) => offer(tabs.iter(), frame, metrics),
                None => Delivery::default(),
            },
            Target::Channel(channel) => match self.channels.get(channel) {
                Some(subscribers) => offer(subscribers.iter().map(|s| &s.tab), frame, metrics),
                None => Delivery::default(),
            },
            Target::Broadcast => offer(self.clients.values().flatten(), frame, metrics),
        }
    }

    /// The least free room in the queues of `target`'s sockets.
    fn room(&self, target: &Target) -> usize {
        let room = |tabs: &mut dyn Iterator<Item = &Tab>| {
            tabs.map(|tab| tab.queue.capacity())
                .min()
                .unwrap_or(usize::MAX)
        };
        match target {
            Target::Client(client) => room(&mut self.clients.get(client).into_iter().flatten()),
            Target::Channel(channel) => room(
                &mut self
                    .channels
                    .get(channel)
                    .into_iter()
                    .flatten()
                    .map(|s| &s.tab),
            ),
            Target::Broadcast => room(&mut self.clients.values().flatten()),
        }
    }

    fn resync(&mut self, target: &Target) -> usize {
        let State {
            tracks, held_bytes, ..
        } = self;
        if let Some(track) = tracks.get_mut(target) {
            track.abandon(held_bytes);
        }
        let tabs: Vec<&Tab> = match target {
            Target::Client(client) => self.clients.get(client).into_iter().flatten().collect(),
            Target::Channel(channel) => self
                .channels
                .get(channel)
                .into_iter()
                .flatten()
                .map(|s| &s.tab)
                .collect(),
            Target::Broadcast => self.clients.values().flatten().collect(),
        };
        for tab in &tabs {
            tab.alarm.raise(Reason::Resync);
        }
        tabs.len()
    }

    /// The target's last socket is gone: so is what was held for it.
    fn forget(&mut self, target: &Target) {
        if let Some(mut track) = self.tracks.remove(target) {
            track.abandon(&mut self.held_bytes);
        }
    }

    /// Removes socket `id` from `channel`'s subscribers; the last one releases the channel.
    fn drop_subscriber(
        &mut self,
        channel: &ChannelName,
        id: u64,
        broker: &Broker,
        metrics: &Metrics,
    ) {
        let Some(subscribers) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(at) = subscribers.iter().position(|s| s.tab.id == id) else {
            return;
        };
        let gone = subscribers.swap_remove(at);
        broker.leave(channel, &gone.client);
        let last = subscribers.is_empty();
        if last {
            self.channels.remove(channel);
            let target = Target::Channel(channel.clone());
            self.forget(&target);
            broker.release(&target);
        }
        metrics.unsubscribed(last);
    }
}

impl Registration {
    /// Leaves the registry now, before the session ends (a slow consumer being closed takes no
    /// more messages while its close frame waits to get through).
    pub fn leave(&self) {
        self.registry.remove(&self.client, self.id, &self.broker);
    }

    /// Subscribes this socket to `channel`: from now on the channel's messages are queued for
    /// it. Returns the broker's confirmation when this is the replica's first subscriber.
    pub fn subscribe(&self, channel: &ChannelName) -> Result<Option<Subscribed>, SubscribeError> {
        let registry = &self.registry;
        let mut state = registry.lock();
        let State {
            clients,
            channels,
            subscriptions,
            ..
        } = &mut *state;
        let tab = clients
            .get(&self.client)
            .and_then(|tabs| tabs.iter().find(|t| t.id == self.id))
            .ok_or(SubscribeError::Gone)?;
        let mine = subscriptions.entry(self.id).or_default();
        if mine.contains(channel) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        if mine.len() >= registry.inner.max_channels {
            if mine.is_empty() {
                subscriptions.remove(&self.id);
            }
            return Err(SubscribeError::TooManyChannels(registry.inner.max_channels));
        }
        mine.push(channel.clone());
        let subscribers = channels.entry(channel.clone()).or_default();
        let first = subscribers.is_empty();
        subscribers.push(Subscriber {
            client: self.client.clone(),
            tab: tab.clone(),
        });
        let subscribed = first.then(|| self.broker.hold(&Target::Channel(channel.clone())));
        self.broker.join(channel, &self.client);
        drop(state);
        registry.inner.metrics.subscribed(first);
        Ok(subscribed)
    }

    /// Unsubscribes this socket from `channel`.
    pub fn unsubscribe(&self, channel: &ChannelName) -> Result<(), SubscribeError> {
        let mut state = self.registry.lock();
        let mine = state
            .subscriptions
            .get_mut(&self.id)
            .ok_or(SubscribeError::NotSubscribed)?;
        let at = mine
            .iter()
            .position(|c| c == channel)
            .ok_or(SubscribeError::NotSubscribed)?;
        mine.swap_remove(at);
        if mine.is_empty() {
            state.subscriptions.remove(&self.id);
        }
        state.drop_subscriber(channel, self.id, &self.broker, &self.registry.inner.metrics);
        Ok(())
    }

    /// This socket's stream of `target` starts at `at` (see [`Registry::started`]).
    pub fn started(&self, target: &Target, at: Position) {
        self.registry.started(target, at);
    }

    /// This socket resumed `target` from `from` without reading its history (see
    /// [`Registry::refill`]).
    pub fn refill(&self, target: &Target, from: Position) -> bool {
        self.registry.refill(target, from)
    }

    /// Whether this socket is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.registry
            .lock()
            .subscriptions
            .get(&self.id)
            .is_some_and(|mine| mine.contains(channel))
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("client", &self.client)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.client, self.id, &self.broker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Driver;
    use crate::broker::memory::MemoryBroker;
    use crate::limits::Limits;

    /// A registry and the broker its sockets are held at.
    struct Fixture {
        registry: Registry,
        broker: Broker,
    }

    impl Fixture {
        fn register(&self, client: &ClientId) -> Result<Registration, AdmitError> {
            self.registry.register(client, &self.broker)
        }
    }

    impl std::ops::Deref for Fixture {
        type Target = Registry;

        fn deref(&self) -> &Registry {
            &self.registry
        }
    }

    /// The registry, and a probe: another replica on the same in-process hub.
    fn registry(limits: Limits) -> (Fixture, MemoryBroker) {
        let broker = MemoryBroker::new("app-1", Arc::new(|_, _, _| {}), Limits::default().window());
        let probe = broker.join_same_hub("probe", Arc::new(|_, _, _| {}));
        let registry = Registry::new(Metrics::new(), &limits);
        let broker = Broker::Memory(broker);
        (Fixture { registry, broker }, probe)
    }

    fn client(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    async fn receivers(probe: &MemoryBroker, c: &ClientId) -> u64 {
        probe
            .publish(&Target::Client(c.clone()), b"{}".to_vec())
            .await
            .unwrap()
            .receivers
    }

    #[tokio::test]
    async fn a_frame_reaches_every_tab_of_its_client_and_no_other() {
        let (registry, _) = registry(Limits::default());
        let mut a1 = registry.register(&client("a")).unwrap();
        let mut a2 = registry.register(&client("a")).unwrap();
        let mut b = registry.register(&client("b")).unwrap();
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("hi"));
        assert_eq!(
            registry
                .deliver(&Target::Client(client("a")), &frame)
                .reached,
            2
        );
        assert_eq!(a1.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert_eq!(a2.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert!(b.outbox.as_mut().unwrap().try_recv().is_err());
        assert_eq!(
            registry.deliver(&Target::Client(client("nobody")), &frame),
            Delivery::default()
        );
    }

    #[tokio::test]
    async fn it_counts_sockets_and_clients_and_a_socket_can_leave_before_it_is_dropped() {
        let (registry, probe) = registry(Limits::default());
        let (a, b, nobody) = (client("a"), client("b"), client("nobody"));
        let mut a1 = registry.register(&a).unwrap();
        let a2 = registry.register(&a).unwrap();
        let _b1 = registry.register(&b).unwrap();
        assert_eq!(registry.counts(), (3, 2), "3 sockets of 2 clients");
        assert_eq!(
            (
                registry.sockets_of(&a),
                registry.sockets_of(&b),
                registry.sockets_of(&nobody)
            ),
            (2, 1, 0)
        );
        // A slow consumer leaves at once: it takes nothing more while its close is pending.
        a2.leave();
        assert_eq!((registry.counts(), registry.sockets_of(&a)), ((2, 2), 1));
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("x"));
        assert_eq!(
            registry.deliver(&Target::Client(a.clone()), &frame).reached,
            1
        );
        assert_eq!(a1.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        // Dropping it after leaving changes nothing more.
        drop(a2);
        assert_eq!(registry.counts(), (2, 2));
        drop(a1);
        assert_eq!((registry.counts(), registry.sockets_of(&a)), ((1, 1), 0));
        assert_eq!(
            receivers(&probe, &a).await,
            0,
            "a's last socket released it"
        );
    }

    #[tokio::test]
    async fn the_broker_holds_a_client_from_its_first_socket_to_its_last() {
        let (registry, probe) = registry(Limits::default());
        let c = client("c");
        let first = registry.register(&c).unwrap();
        assert!(first.subscribed.is_some());
        let second = registry.register(&c).unwrap();
        assert!(
            second.subscribed.is_none(),
            "only the first socket subscribes"
        );
        assert_eq!(receivers(&probe, &c).await, 1);
        drop(first);
        assert_eq!(receivers(&probe, &c).await, 1, "one tab still open");
        drop(second);
        assert_eq!(receivers(&probe, &c).await, 0);
        assert_eq!(registry.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_socket_slow_without_blocking_others() {
        let limits = Limits {
            socket_queue: 2,
            ..Limits::default()
        };
        let (registry, _) = registry(limits);
        let slow = registry.register(&client("s")).unwrap();
        let mut fast = registry.register(&client("f")).unwrap();
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("x"));
        for _ in 0..2 {
            assert_eq!(
                registry
                    .deliver(&Target::Client(client("s")), &frame)
                    .reached,
                1
            );
        }
        let third = registry.deliver(&Target::Client(client("s")), &frame);
        assert_eq!(
            third,
            Delivery {
                reached: 0,
                overflowed: 1,
                ..Delivery::default()
            }
        );
        assert!(slow.alarm.is_raised(Reason::Slow));
        assert_eq!(
            registry.deliver(&Target::Broadcast, &frame),
            Delivery {
                reached: 1,
                overflowed: 1,
                ..Delivery::default()
            }
        );
        assert_eq!(fast.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert!(!fast.alarm.is_raised(Reason::Slow));
    }

    #[tokio::test]
    async fn by_default_a_socket_queues_256_frames_and_overflows_on_the_next() {
        let (registry, _) = registry(Limits::default());
        let stuck = registry.register(&client("s")).unwrap();
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("x"));
        for n in 0..256 {
            let delivery = registry.deliver(&Target::Client(client("s")), &frame);
            assert_eq!(delivery.reached, 1, "frame {n} queued");
        }
        assert!(!stuck.alarm.is_raised(Reason::Slow));
        assert_eq!(
            registry
                .deliver(&Target::Client(client("s")), &frame)
                .overflowed,
            1
        );
        assert!(stuck.alarm.is_raised(Reason::Slow));
    }

    #[tokio::test]
    async fn socket_limits_are_enforced_per_replica_and_per_client() {
        let limits = Limits {
            max_sockets: 3,
            max_sockets_per_client: 2,
            ..Limits::default()
        };
        let (registry, _) = registry(limits);
        let _a1 = registry.register(&client("a")).unwrap();
        let _a2 = registry.register(&client("a")).unwrap();
        assert_eq!(
            registry.register(&client("a")).unwrap_err(),
            AdmitError::ClientFull(2)
        );
        let b1 = registry.register(&client("b")).unwrap();
        assert_eq!(
            registry.register(&client("c")).unwrap_err(),
            AdmitError::ReplicaFull(3)
        );
        drop(b1);
        assert!(registry.register(&client("c")).is_ok());
    }

    fn channel(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    async fn channel_receivers(probe: &MemoryBroker, c: &ChannelName) -> u64 {
        probe
            .publish(&Target::Channel(c.clone()), b"{}".to_vec())
            .await
            .unwrap()
            .receivers
    }

    #[tokio::test]
    async fn a_channel_is_held_from_its_first_local_subscriber_to_its_last() {
        let (registry, probe) = registry(Limits::default());
        let lobby = channel("public:lobby");
        let mut a = registry.register(&client("a")).unwrap();
        let mut b = registry.register(&client("b")).unwrap();
        let _c = registry.register(&client("c")).unwrap();
        assert!(
            a.subscribe(&lobby).unwrap().is_some(),
            "the first subscribes"
        );
        assert!(
            b.subscribe(&lobby).unwrap().is_none(),
            "the second does not"
        );
        assert_eq!(channel_receivers(&probe, &lobby).await, 1);
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("x"));
        assert_eq!(
            registry
                .deliver(&Target::Channel(lobby.clone()), &frame)
                .reached,
            2,
            "both subscribers, not c"
        );
        assert_eq!(a.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert_eq!(b.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert_eq!(registry.channel_counts(), (1, 2));
        a.unsubscribe(&lobby).unwrap();
        assert_eq!(channel_receivers(&probe, &lobby).await, 1, "b still there");
        assert_eq!(a.unsubscribe(&lobby), Err(SubscribeError::NotSubscribed));
        // Closing the last subscriber's socket releases the channel.
        drop(b);
        assert_eq!(channel_receivers(&probe, &lobby).await, 0);
        assert_eq!(registry.channel_counts(), (0, 0));
        assert_eq!(registry.subscribers_of(&lobby), 0);
        assert!(
            probe.members(&lobby).await.unwrap().is_empty(),
            "their presence left with them"
        );
    }

    #[tokio::test]
    async fn a_socket_subscribes_once_per_channel_and_to_at_most_its_limit() {
        let (registry, _) = registry(Limits {
            channels_per_socket: 2,
            ..Limits::default()
        });
        let a = registry.register(&client("a")).unwrap();
        a.subscribe(&channel("x")).unwrap();
        assert_eq!(
            a.subscribe(&channel("x")).err().unwrap(),
            SubscribeError::AlreadySubscribed
        );
        a.subscribe(&channel("y")).unwrap();
        assert_eq!(
            a.subscribe(&channel("z")).err().unwrap(),
            SubscribeError::TooManyChannels(2)
        );
        a.unsubscribe(&channel("x")).unwrap();
        assert!(
            a.subscribe(&channel("z")).is_ok(),
            "room again after leaving one"
        );
        assert!(a.is_subscribed(&channel("z")) && !a.is_subscribed(&channel("x")));
        a.leave();
        assert_eq!(
            a.subscribe(&channel("w")).err().unwrap(),
            SubscribeError::Gone,
            "a socket that left subscribes to nothing"
        );
        assert_eq!(registry.channel_counts(), (0, 0));
    }

    #[tokio::test]
    async fn each_subscription_is_one_presence_socket() {
        let (registry, probe) = registry(Limits::default());
        let lobby = channel("public:lobby");
        let a1 = registry.register(&client("a")).unwrap();
        let a2 = registry.register(&client("a")).unwrap();
        a1.subscribe(&lobby).unwrap();
        a2.subscribe(&lobby).unwrap();
        let listed = probe.members(&lobby).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].client_id.as_str(), listed[0].sockets), ("a", 2));
        drop(a1);
        assert_eq!(probe.members(&lobby).await.unwrap()[0].sockets, 1);
    }
}
