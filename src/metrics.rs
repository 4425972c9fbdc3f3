//! Prometheus metrics: names, help texts and the text exposition served on `/metrics`.
//!
//! Counters count events; gauges that describe the process (resident memory, open files) are
//! read from `/proc` at scrape time rather than kept up to date on every change.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::frame::Via;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViaLabel {
    pub via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// `client` or `broadcast`.
    pub target: &'static str,
    /// `ok` or `unavailable`.
    pub outcome: &'static str,
}

/// Handle on this replica's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    sockets: Gauge,
    clients: Gauge,
    delivered: Family<ViaLabel, Counter>,
    publishes: Family<PublishLabels, Counter>,
    slow_consumers: Counter,
    broker_up: Gauge,
    broker_reconnects: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let inner = Inner {
            sockets: Gauge::default(),
            clients: Gauge::default(),
            delivered: Family::default(),
            publishes: Family::default(),
            slow_consumers: Counter::default(),
            broker_up: Gauge::default(),
            broker_reconnects: Counter::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            registry: Registry::default(),
        };
        // Process figures keep their conventional unprefixed names; ours carry `stickyws_`.
        root.register(
            "process_resident_memory_bytes",
            "Resident memory of this replica process",
            inner.resident_memory.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors of this replica process",
            inner.open_fds.clone(),
        );
        let ours = root.sub_registry_with_prefix("stickyws");
        ours.register(
            "sockets",
            "WebSocket connections this replica holds",
            inner.sockets.clone(),
        );
        ours.register(
            "clients",
            "Distinct clients with a socket on this replica",
            inner.clients.clone(),
        );
        ours.register(
            "messages_delivered",
            "Frames delivered to sockets of this replica, by how they came",
            inner.delivered.clone(),
        );
        ours.register(
            "publishes",
            "Messages this replica handed the broker, by target and outcome",
            inner.publishes.clone(),
        );
        ours.register(
            "slow_consumer_disconnects",
            "Sockets closed (1013) because their send queue was full",
            inner.slow_consumers.clone(),
        );
        ours.register(
            "broker_up",
            "1 while the broker is connected and subscribed",
            inner.broker_up.clone(),
        );
        ours.register(
            "broker_reconnects",
            "Times the broker subscription was re-established after a loss",
            inner.broker_reconnects.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: root,
                ..inner
            }),
        }
    }

    pub fn socket_opened(&self, new_client: bool) {
        self.inner.sockets.inc();
        if new_client {
            self.inner.clients.inc();
        }
    }

    pub fn socket_closed(&self, last_of_client: bool) {
        self.inner.sockets.dec();
        if last_of_client {
            self.inner.clients.dec();
        }
    }

    pub fn delivered(&self, via: Via, n: u64) {
        self.inner
            .delivered
            .get_or_create(&ViaLabel { via: via.as_str() })
            .inc_by(n);
    }

    pub fn published(&self, target: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "unavailable" };
        self.inner
            .publishes
            .get_or_create(&PublishLabels { target, outcome })
            .inc();
    }

    pub fn slow_consumer(&self) {
        self.inner.slow_consumers.inc();
    }

    pub fn broker_up(&self, up: bool) {
        self.inner.broker_up.set(i64::from(up));
    }

    pub fn broker_reconnected(&self) {
        self.inner.broker_reconnects.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some((rss, fds)) = process_figures() {
            self.inner.resident_memory.set(rss);
            self.inner.open_fds.set(fds);
        }
        let mut out = String::new();
        // Encoding into a String only fails if a metric's own Display fails; ours cannot.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Resident bytes and open descriptors of this process, from `/proc` (Linux only).
pub fn process_figures() -> Option<(i64, i64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some((pages * 4096, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.socket_opened(true);
        metrics.delivered(Via::Publish, 3);
        metrics.published("client", true);
        let text = metrics.render();
        assert!(text.contains("stickyws_sockets 1\n"), "{text}");
        assert!(
            text.contains("stickyws_messages_delivered_total{via=\"publish\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("stickyws_publishes_total{target=\"client\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
