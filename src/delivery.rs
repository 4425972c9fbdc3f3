//! Delivery: the return leg of every message, in one place. What the broker hands this replica
//! (publish, broadcast, channel messages and presence notes), what an HTTP request delivers in
//! memory (`direct`) and what a socket echoes (`ws`) all become a frame here, reach the local sockets through the [`Registry`], and
//! are counted and written to the records log the same way. Sending to the broker is the HTTP
//! handlers' business; which sockets exist is the registry's.

use std::sync::Arc;

use crate::broker::Inbox;
use crate::cursor::Position;
use crate::frame::{Envelope, Outgoing, PresenceNote, Via, now_micros};
use crate::metrics::Metrics;
use crate::records::{Event, Records};
use crate::registry::Registry;
use crate::target::Target;
use crate::token::ClientId;

/// Handle on this replica's delivery; cheap to clone (one pointer, which a socket also holds).
#[derive(Clone, Debug)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `config.app_id`, shared without copying into every frame and record.
    replica: Arc<str>,
    registry: Registry,
    records: Records,
    metrics: Metrics,
}

impl Delivery {
    pub fn new(replica: Arc<str>, registry: Registry, records: Records, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                replica,
                registry,
                records,
                metrics,
            }),
        }
    }

    pub fn replica(&self) -> &Arc<str> {
        &self.inner.replica
    }

    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The callback the broker calls for every message that reaches this replica.
    pub fn inbox(&self) -> Inbox {
        let delivery = self.clone();
        Arc::new(move |target, id, payload| delivery.deliver_brokered(target, id, payload))
    }

    /// An envelope from this replica, stamped now: what a publish hands the broker.
    pub fn envelope<'a>(&'a self, via: Via, text: &'a str) -> Envelope<'a> {
        Envelope {
            at: now_micros(),
            ..self.unstamped(via, text)
        }
    }

    /// An envelope from this replica that never crosses the broker (direct, echo): no publish
    /// time, so it is not timed as publish-to-delivery.
    fn unstamped<'a>(&'a self, via: Via, text: &'a str) -> Envelope<'a> {
        Envelope {
            via,
            from: (*self.inner.replica).into(),
            text: text.into(),
            at: 0,
        }
    }

    /// Delivers a message from the broker to the local sockets of its target.
    fn deliver_brokered(&self, target: &Target, position: Option<Position>, payload: &[u8]) {
        let Inner {
            replica,
            registry,
            records,
            metrics,
        } = &*self.inner;
        if let (Target::Channel(channel), Some(note)) = (target, PresenceNote::decode(payload)) {
            let frame = Outgoing::from(note.frame(channel.as_str()));
            let reached = registry.deliver(target, &frame).reached;
            metrics.presence_delivered(reached as u64);
            let event = if note.presence == "join" {
                Event::Join
            } else {
                Event::Leave
            };
            records.record(
                event,
                Some(&format!("#{channel}")),
                format_args!(
                    "client={} on={} sockets={reached}",
                    note.client_id, note.replica
                ),
            );
            return;
        }
        let Ok(envelope) = Envelope::decode(payload) else {
            tracing::warn!(bytes = payload.len(), "undecodable broker message dropped");
            return;
        };
        // Serialized once here; every local socket of the target shares these bytes.
        let frame = envelope.outgoing(replica, target, position, false);
        let delivery = registry.deliver(target, &frame);
        if delivery.held || delivery.duplicate {
            // Held while a gap is filled (it goes out after the fill), or a fill delivered it.
            return;
        }
        let reached = delivery.reached;
        let label = target.label();
        let client = label.as_deref();
        metrics.delivered(envelope.via, reached as u64);
        if envelope.at > 0 && reached > 0 {
            // Wall clocks of two processes: exact on one host, as good as NTP across hosts.
            let micros = now_micros().saturating_sub(envelope.at);
            metrics.publish_to_delivery(envelope.via, micros as f64 / 1e6);
        }
        if reached == 0 && envelope.via != Via::Broadcast {
            // Subscribed a moment ago and the last socket just left: the race is real.
            records.record(Event::NotHere, client, "no local socket for this message");
            return;
        }
        let event = match target {
            Target::Channel(_) => Event::ChannelDeliver,
            Target::Client(_) | Target::Broadcast => Event::Deliver,
        };
        records.record(
            event,
            client,
            format_args!(
                "via={} from={} sockets={reached}",
                envelope.via.as_str(),
                envelope.from,
            ),
        );
    }

    /// `direct`: to the sockets of `client` this replica holds itself, and no others; returns
    /// how many it reached (0: the message is lost, and the records log says so).
    pub fn direct(&self, client: &ClientId, text: &str) -> usize {
        let Inner {
            replica,
            registry,
            records,
            metrics,
        } = &*self.inner;
        let frame = self.unstamped(Via::Direct, text).frame_for(replica);
        let delivered = registry
            .deliver(&Target::Client(client.clone()), &frame.into())
            .reached;
        metrics.delivered(Via::Direct, delivered as u64);
        let name = Some(client.as_str());
        records.record(Event::Direct, name, format_args!("delivered={delivered}"));
        if delivered == 0 {
            records.record(
                Event::NotHere,
                name,
                "direct: no socket of this client here; message lost",
            );
        } else {
            records.record(
                Event::Deliver,
                name,
                format_args!("via=direct sockets={delivered}"),
            );
        }
        delivered
    }

    /// `ws`: the frame that echoes what a socket of `client` sent, for that socket only.
    pub fn echo(&self, client: &ClientId, text: &str) -> Outgoing {
        let Inner {
            replica,
            records,
            metrics,
            ..
        } = &*self.inner;
        records.record(Event::WsRecv, Some(client.as_str()), text);
        metrics.delivered(Via::Ws, 1);
        self.unstamped(Via::Ws, text).frame_for(replica).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::broker::memory::MemoryBroker;
    use crate::channel::ChannelName;
    use crate::cursor::{Epoch, StreamId};
    use crate::limits::Limits;
    use crate::registry::Registration;

    /// One replica's delivery over a registry, its records written to a file the test reads.
    struct Fixture {
        delivery: Delivery,
        registry: Registry,
        broker: Broker,
        records: Records,
        metrics: Metrics,
        log: tempfile::NamedTempFile,
    }

    impl Fixture {
        fn new() -> Self {
            let log = tempfile::NamedTempFile::new().unwrap();
            let records = Records::open("app-1", log.path()).unwrap();
            let metrics = Metrics::new();
            let registry = Registry::new(metrics.clone(), &Limits::default());
            let broker = Broker::Memory(MemoryBroker::new(
                "app-1",
                Arc::new(|_, _, _| {}),
                Limits::default().window(),
            ));
            let delivery = Delivery::new(
                "app-1".into(),
                registry.clone(),
                records.clone(),
                metrics.clone(),
            );
            Self {
                delivery,
                registry,
                broker,
                records,
                metrics,
                log,
            }
        }

        fn socket(&self, client: &str) -> Registration {
            self.registry
                .register(&ClientId::parse(client).unwrap(), &self.broker)
                .unwrap()
        }

        /// The records log's event and client columns, in order.
        fn records(&self) -> Vec<(String, String)> {
            self.records.close();
            std::fs::read_to_string(self.log.path())
                .unwrap()
                .lines()
                .map(|line| {
                    let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
                    (cols[2].to_owned(), cols[3].to_owned())
                })
                .collect()
        }

        /// One line of `/metrics` by its series name and labels, e.g.
        /// `stickyws_publish_to_delivery_seconds_count{via="publish"}`.
        fn series(&self, name: &str) -> f64 {
            let wanted = format!("{name} ");
            self.metrics
                .render()
                .lines()
                .find_map(|line| line.strip_prefix(&wanted)?.parse().ok())
                .unwrap_or_else(|| panic!("no series {name}"))
        }

        fn delivered(&self, via: &str) -> u64 {
            let wanted = format!("stickyws_messages_delivered_total{{via=\"{via}\"}} ");
            self.metrics
                .render()
                .lines()
                .find_map(|line| line.strip_prefix(&wanted)?.parse().ok())
                .unwrap()
        }
    }

    fn frames(socket: &mut Registration) -> Vec<serde_json::Value> {
        let outbox = socket.outbox.as_mut().unwrap();
        std::iter::from_fn(|| outbox.try_recv().ok())
            .map(|frame| serde_json::from_str(&frame.bytes).unwrap())
            .collect()
    }

    fn published(via: Via, text: &str) -> Vec<u8> {
        Envelope {
            via,
            from: "app-2".into(),
            text: text.into(),
            at: now_micros(),
        }
        .encode()
    }

    #[test]
    fn a_brokered_message_reaches_every_local_socket_of_its_client_once() {
        let f = Fixture::new();
        let (mut a1, mut a2, mut b) = (f.socket("a"), f.socket("a"), f.socket("b"));
        let inbox = f.delivery.inbox();
        let at = Position::new(Epoch(0xe), StreamId { ms: 7, seq: 1 });
        let target = Target::Client(ClientId::parse("a").unwrap());
        inbox(&target, Some(at), &published(Via::Publish, "hi \"a\""));
        for socket in [&mut a1, &mut a2] {
            let got = frames(socket);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(
                (&got[0]["via"], &got[0]["from"], &got[0]["replica"]),
                (&"publish".into(), &"app-2".into(), &"app-1".into())
            );
            assert_eq!(
                (&got[0]["text"], &got[0]["id"], &got[0]["cursor"]),
                (&"hi \"a\"".into(), &"7-1".into(), &"e:7-1".into())
            );
        }
        assert!(frames(&mut b).is_empty(), "b is another client");
        assert_eq!(f.delivered("publish"), 2);
        assert_eq!(f.records(), vec![("deliver".into(), "a".into())]);
    }

    #[test]
    fn a_brokered_message_for_a_client_gone_from_here_is_recorded_as_not_here() {
        let f = Fixture::new();
        let inbox = f.delivery.inbox();
        let target = Target::Client(ClientId::parse("gone").unwrap());
        inbox(&target, None, &published(Via::Publish, "late"));
        // A broadcast with nobody here is nobody's loss: a delivery to no socket, not not-here.
        inbox(&Target::Broadcast, None, &published(Via::Broadcast, "all"));
        // Bytes that are no envelope are dropped, not delivered and not a panic.
        inbox(&target, None, b"not json");
        assert_eq!(f.delivered("publish"), 0);
        assert_eq!(
            f.records(),
            vec![
                ("not-here".into(), "gone".into()),
                ("deliver".into(), "-".into())
            ]
        );
    }

    #[test]
    fn publish_to_delivery_is_timed_once_per_delivered_message_from_its_publish_time() {
        let f = Fixture::new();
        let _a = f.socket("a");
        let inbox = f.delivery.inbox();
        let a = Target::Client(ClientId::parse("a").unwrap());
        let count = "stickyws_publish_to_delivery_seconds_count{via=\"publish\"}";
        let sum = "stickyws_publish_to_delivery_seconds_sum{via=\"publish\"}";
        // Published 1.5 s ago by another replica's clock.
        let mut envelope = Envelope {
            via: Via::Publish,
            from: "app-2".into(),
            text: "t".into(),
            at: now_micros() - 1_500_000,
        };
        let started = std::time::Instant::now();
        inbox(&a, None, &envelope.encode());
        let took = started.elapsed().as_secs_f64();
        assert_eq!(f.series(count), 1.0);
        let seconds = f.series(sum);
        assert!(
            (1.5..=1.5 + took + 0.001).contains(&seconds),
            "timed {seconds} s for a message published 1.5 s ago"
        );
        // Not timed: a message without a publish time, and one that reached no socket here.
        envelope.at = 0;
        inbox(&a, None, &envelope.encode());
        envelope.at = now_micros();
        inbox(
            &Target::Client(ClientId::parse("b").unwrap()),
            None,
            &envelope.encode(),
        );
        assert_eq!(f.series(count), 1.0);
    }

    #[test]
    fn a_broadcast_reaches_every_socket_of_every_client() {
        let f = Fixture::new();
        let mut sockets = [f.socket("a"), f.socket("a"), f.socket("b")];
        f.delivery.inbox()(
            &Target::Broadcast,
            Some(Position::new(Epoch(1), StreamId { ms: 9, seq: 0 })),
            &published(Via::Broadcast, "all"),
        );
        for socket in &mut sockets {
            let got = frames(socket);
            assert_eq!(got.len(), 1);
            assert_eq!(
                (&got[0]["via"], &got[0]["text"]),
                (&"broadcast".into(), &"all".into())
            );
        }
        assert_eq!(f.delivered("broadcast"), 3);
        assert_eq!(f.records(), vec![("deliver".into(), "-".into())]);
    }

    #[test]
    fn direct_reaches_only_the_sockets_held_here_and_says_when_it_reached_none() {
        let f = Fixture::new();
        let mut a = f.socket("a");
        let here = ClientId::parse("a").unwrap();
        let elsewhere = ClientId::parse("z").unwrap();
        assert_eq!(f.delivery.direct(&here, "d1"), 1);
        assert_eq!(f.delivery.direct(&elsewhere, "d2"), 0);
        let got = frames(&mut a);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                &got[0]["via"],
                &got[0]["from"],
                &got[0]["replica"],
                &got[0]["text"]
            ),
            (
                &"direct".into(),
                &"app-1".into(),
                &"app-1".into(),
                &"d1".into()
            )
        );
        assert!(got[0].get("id").is_none(), "direct keeps no history");
        assert_eq!(f.delivered("direct"), 1);
        let events = f.records();
        assert_eq!(
            events,
            vec![
                ("direct".into(), "a".into()),
                ("deliver".into(), "a".into()),
                ("direct".into(), "z".into()),
                ("not-here".into(), "z".into()),
            ]
        );
    }

    #[test]
    fn the_echo_comes_from_this_replica_with_the_text_unchanged() {
        let f = Fixture::new();
        let client = ClientId::parse("a").unwrap();
        let frame = f.delivery.echo(&client, "ünïcode \"q\"");
        let got: serde_json::Value = serde_json::from_str(&frame.bytes).unwrap();
        assert_eq!(
            (&got["via"], &got["from"], &got["replica"], &got["text"]),
            (
                &"ws".into(),
                &"app-1".into(),
                &"app-1".into(),
                &"ünïcode \"q\"".into()
            )
        );
        assert_eq!(f.delivered("ws"), 1);
        assert_eq!(f.records(), vec![("ws-recv".into(), "a".into())]);
    }

    #[test]
    fn the_metrics_and_records_it_lends_a_session_are_the_replicas_own() {
        let f = Fixture::new();
        f.delivery.metrics().slow_consumer();
        assert_eq!(f.series("stickyws_slow_consumer_disconnects_total"), 1.0);
        f.delivery
            .records()
            .record(Event::Disconnect, Some("a"), "closed by client");
        assert_eq!(f.records(), vec![("disconnect".into(), "a".into())]);
    }

    #[test]
    fn an_envelope_is_from_this_replica_and_stamped_now() {
        let f = Fixture::new();
        let before = now_micros();
        let envelope = f.delivery.envelope(Via::Publish, "t");
        assert_eq!(
            (envelope.from.as_ref(), envelope.text.as_ref()),
            ("app-1", "t")
        );
        assert_eq!(envelope.via, Via::Publish);
        assert!(envelope.at >= before && envelope.at <= now_micros());
        assert_eq!(f.delivery.replica().as_ref(), "app-1");
    }

    #[tokio::test]
    async fn a_channel_message_and_a_presence_note_reach_only_its_subscribers() {
        let f = Fixture::new();
        let lobby = ChannelName::parse("public:lobby").unwrap();
        let (mut a, mut b) = (f.socket("a"), f.socket("b"));
        a.subscribe(&lobby).unwrap();
        let target = Target::Channel(lobby);
        let at = Position::new(Epoch(2), StreamId { ms: 4, seq: 0 });
        f.delivery.inbox()(&target, Some(at), &published(Via::Channel, "to the room"));
        let got = frames(&mut a);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (
                &got[0]["via"],
                &got[0]["channel"],
                &got[0]["text"],
                &got[0]["cursor"]
            ),
            (
                &"channel".into(),
                &"public:lobby".into(),
                &"to the room".into(),
                &"2:4-0".into()
            )
        );
        let note = crate::broker::members::note("join", &ClientId::parse("z").unwrap(), "app-3");
        f.delivery.inbox()(&target, None, &note);
        let got = frames(&mut a);
        assert_eq!(
            got,
            vec![
                serde_json::json!({"type": "presence", "channel": "public:lobby",
                                    "event": "join", "client_id": "z", "replica": "app-3"})
            ]
        );
        assert!(frames(&mut b).is_empty(), "b is not subscribed");
        assert_eq!(f.delivered("channel"), 1);
        assert_eq!(
            f.records(),
            vec![
                ("channel-deliver".into(), "#public:lobby".into()),
                ("join".into(), "#public:lobby".into())
            ]
        );
    }
}
