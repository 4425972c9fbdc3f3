//! The sockets this replica holds: client id → its sockets (tabs), each fed by a bounded queue.
//!
//! `deliver` hands one pre-serialized frame to every local socket of a client with `try_send`:
//! a full queue never blocks the caller (a broker task or an HTTP handler); the socket is marked
//! a slow consumer instead and its session closes it. Registering the first socket of a client
//! holds it at the broker, removing the last releases it, both under the registry's lock so the
//! broker sees them in the order they happened. The broker is passed in by the caller and kept
//! by each registration, not owned here: the broker's inbox delivers into the registry, so a
//! registry owning its broker would make the two a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Driver, Subscribed};
use crate::frame::Outgoing;
use crate::metrics::Metrics;
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
    queue: usize,
    // A std Mutex: critical sections are map lookups and `try_send`s, never an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<ClientId, Vec<Tab>>,
    sockets: usize,
    next_id: u64,
}

/// One socket as the registry sees it.
#[derive(Debug)]
struct Tab {
    id: u64,
    queue: mpsc::Sender<Outgoing>,
    /// Cancelled when the queue overflows; the session then closes the socket with 1013.
    slow: CancellationToken,
}

/// Why a socket was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("this replica holds its maximum of {0} sockets")]
    ReplicaFull(usize),
    #[error("this client already holds its maximum of {0} sockets on this replica")]
    ClientFull(usize),
}

/// A socket's place in the registry; dropping it removes the socket.
pub struct Registration {
    registry: Registry,
    /// Released through when the last socket of the client goes.
    broker: Broker,
    client: ClientId,
    id: u64,
    /// The socket's own queue, for frames only it should get (its echoes, its errors).
    pub queue: mpsc::Sender<Outgoing>,
    /// Everything delivered to the socket, in order.
    pub outbox: Option<mpsc::Receiver<Outgoing>>,
    /// Cancelled when the socket fell behind.
    pub slow: CancellationToken,
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
}

impl Registry {
    pub fn new(metrics: Metrics, limits: &crate::limits::Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                max_sockets: limits.max_sockets,
                max_per_client: limits.max_sockets_per_client,
                queue: limits.socket_queue,
                state: Mutex::new(State::default()),
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
        let (queue, outbox) = mpsc::channel(self.inner.queue);
        let slow = CancellationToken::new();
        state.clients.entry(client.clone()).or_default().push(Tab {
            id,
            queue: queue.clone(),
            slow: slow.clone(),
        });
        let first = held == 0;
        let subscribed = first.then(|| broker.hold(client));
        drop(state);
        self.inner.metrics.socket_opened(first);
        Ok(Registration {
            registry: self.clone(),
            broker: broker.clone(),
            client: client.clone(),
            id,
            queue,
            outbox: Some(outbox),
            slow,
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
            broker.release(client);
        }
        state.sockets -= 1;
        drop(state);
        self.inner.metrics.socket_closed(last);
    }

    /// Queues `frame` on every local socket of `client`.
    pub fn deliver(&self, client: &ClientId, frame: &Outgoing) -> Delivery {
        let state = self.lock();
        let Some(tabs) = state.clients.get(client) else {
            return Delivery::default();
        };
        offer(tabs.iter(), frame, &self.inner.metrics)
    }

    /// Queues `frame` on every socket this replica holds.
    pub fn broadcast(&self, frame: &Outgoing) -> Delivery {
        let state = self.lock();
        offer(state.clients.values().flatten(), frame, &self.inner.metrics)
    }

    /// Sockets held and distinct clients.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.sockets, state.clients.len())
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
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !tab.slow.is_cancelled() {
                    tab.slow.cancel();
                    metrics.slow_consumer();
                }
                delivery.overflowed += 1;
            }
            // The session is ending; its registration is about to be dropped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    delivery
}

impl Registration {
    /// Leaves the registry now, before the session ends (a slow consumer being closed takes no
    /// more messages while its close frame waits to get through).
    pub fn leave(&self) {
        self.registry.remove(&self.client, self.id, &self.broker);
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
    use crate::target::Target;

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
        let broker = MemoryBroker::new(Arc::new(|_, _, _| {}), Limits::default().window());
        let probe = broker.join_same_hub(Arc::new(|_, _, _| {}));
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
        assert_eq!(registry.deliver(&client("a"), &frame).reached, 2);
        assert_eq!(a1.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert_eq!(a2.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert!(b.outbox.as_mut().unwrap().try_recv().is_err());
        assert_eq!(
            registry.deliver(&client("nobody"), &frame),
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
        assert_eq!(registry.deliver(&a, &frame).reached, 1);
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
            assert_eq!(registry.deliver(&client("s"), &frame).reached, 1);
        }
        let third = registry.deliver(&client("s"), &frame);
        assert_eq!(
            third,
            Delivery {
                reached: 0,
                overflowed: 1
            }
        );
        assert!(slow.slow.is_cancelled());
        assert_eq!(
            registry.broadcast(&frame),
            Delivery {
                reached: 1,
                overflowed: 1
            }
        );
        assert_eq!(fast.outbox.as_mut().unwrap().try_recv().unwrap(), frame);
        assert!(!fast.slow.is_cancelled());
    }

    #[tokio::test]
    async fn by_default_a_socket_queues_256_frames_and_overflows_on_the_next() {
        let (registry, _) = registry(Limits::default());
        let stuck = registry.register(&client("s")).unwrap();
        let frame = Outgoing::from(axum::extract::ws::Utf8Bytes::from_static("x"));
        for n in 0..256 {
            let delivery = registry.deliver(&client("s"), &frame);
            assert_eq!(delivery.reached, 1, "frame {n} queued");
        }
        assert!(!stuck.slow.is_cancelled());
        assert_eq!(registry.deliver(&client("s"), &frame).overflowed, 1);
        assert!(stuck.slow.is_cancelled());
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
}
