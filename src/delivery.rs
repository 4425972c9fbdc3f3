//! Delivery: the return leg of every message, in one place. What the broker hands this replica
//! (publish, broadcast), what an HTTP request delivers in memory (`direct`) and what a socket
//! echoes (`ws`) all become a frame here, reach the local sockets through the [`Registry`], and
//! are counted and written to the records log the same way. Sending to the broker is the HTTP
//! handlers' business; which sockets exist is the registry's.

use std::sync::Arc;

use crate::broker::Inbox;
use crate::cursor::StreamId;
use crate::frame::{Envelope, Outgoing, Via, now_micros};
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
            via,
            from: (*self.inner.replica).into(),
            text: text.into(),
            at: now_micros(),
        }
    }

    /// Delivers a message from the broker to the local sockets of its target.
    fn deliver_brokered(&self, target: &Target, id: Option<StreamId>, payload: &[u8]) {
        let Inner {
            replica,
            registry,
            records,
            metrics,
        } = &*self.inner;
        let Ok(envelope) = Envelope::decode(payload) else {
            tracing::warn!(bytes = payload.len(), "undecodable broker message dropped");
            return;
        };
        // Serialized once here; every local socket of the target shares these bytes.
        let frame = envelope.outgoing(replica, id, false);
        let (client, reached) = match target {
            Target::Client(client) => (Some(client.as_str()), registry.deliver(client, &frame)),
            Target::Broadcast => (None, registry.broadcast(&frame)),
        };
        let reached = reached.reached;
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
        records.record(
            Event::Deliver,
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
        let envelope = Envelope {
            via: Via::Direct,
            from: (**replica).into(),
            text: text.into(),
            at: 0,
        };
        let delivered = registry
            .deliver(client, &envelope.frame_for(replica).into())
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
        let envelope = Envelope {
            via: Via::Ws,
            from: (**replica).into(),
            text: text.into(),
            at: 0,
        };
        metrics.delivered(Via::Ws, 1);
        envelope.frame_for(replica).into()
    }
}
