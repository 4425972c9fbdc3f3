//! Prometheus metrics: names, help texts and the text exposition served on `/metrics`.
//!
//! Counters count events; gauges that describe the process (resident memory, open files) are
//! read from `/proc` at scrape time rather than kept up to date on every change. A replica's
//! exposition names it once, in `stickyws_replica_info{replica="<APP_ID>"} 1`, rather than as a
//! label on every series: a scrape through nginx can say which replica answered (the
//! `X-Replica` header says it too), and Prometheus joins the name onto any series by instance.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::frame::Via;
use crate::target::{Kind, Target};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViaLabel {
    pub via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// `client`, `channel` or `broadcast`.
    pub target: &'static str,
    /// `ok` or `unavailable`.
    pub outcome: &'static str,
}

/// Where the state lab's session state lives: `local` (this replica's cache) or `shared` (Redis).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: &'static str,
}

/// Why the local cache dropped an entry: `size` (the entry limit) or `expired` (its TTL).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: &'static str,
}

/// Where a socket landed relative to the page that opened it: `same` replica, `other`, or
/// `unknown` (the client did not say which replica rendered its page).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabel {
    pub page: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's pattern (`/api/publish/{client_id}`), never the raw path, so ids do not
    /// become label values.
    pub route: String,
    /// `2xx`, `4xx`, `5xx`…
    pub status: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 50 µs to about 3.3 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The figures a replica shows on the page's panel and announces to the others.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Figures {
    /// Page visits this replica counted in its own memory.
    pub visits: u64,
    /// Sessions in the local cache now.
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub rebuilds: u64,
    /// Dropped by the entry limit.
    pub evictions: u64,
    /// Dropped by the TTL.
    pub expiries: u64,
    /// Sockets that landed on the replica that rendered their page, and elsewhere.
    pub landed_same: u64,
    pub landed_other: u64,
    /// Frames delivered to this replica's sockets, all ways together.
    pub delivered: u64,
    pub resident_bytes: u64,
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
    channels: Gauge,
    subscriptions: Gauge,
    presence_events: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
    page_visits: Counter,
    shared_page_visits: Gauge,
    state_hits: Family<StoreLabel, Counter>,
    state_misses: Family<StoreLabel, Counter>,
    state_rebuilds: Family<StoreLabel, Counter>,
    state_evictions: Family<CauseLabel, Counter>,
    state_entries: Gauge,
    landings: Family<PageLabel, Counter>,
    publish_to_delivery: HistogramFamily<ViaLabel>,
    request_duration: HistogramFamily<RouteLabels>,
    // The series every message touches, found in their families once, at start-up: a family
    // lookup hashes the labels under a lock on every call.
    /// `delivered` by `Via as usize`.
    delivered_by: [Counter; 5],
    /// `publish_to_delivery` by [`Kind`]: the messages that cross the broker.
    publish_to_delivery_by: [Histogram; 3],
    /// `publishes` by [`publish_index`].
    publishes_by: [Counter; 6],
}

impl Inner {
    /// Every metric at zero, registered nowhere yet.
    fn zeroed() -> Self {
        Inner {
            sockets: Gauge::default(),
            clients: Gauge::default(),
            delivered: Family::default(),
            publishes: Family::default(),
            slow_consumers: Counter::default(),
            broker_up: Gauge::default(),
            broker_reconnects: Counter::default(),
            channels: Gauge::default(),
            subscriptions: Gauge::default(),
            presence_events: Counter::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            page_visits: Counter::default(),
            shared_page_visits: Gauge::default(),
            state_hits: Family::default(),
            state_misses: Family::default(),
            state_rebuilds: Family::default(),
            state_evictions: Family::default(),
            state_entries: Gauge::default(),
            landings: Family::default(),
            publish_to_delivery: Family::new_with_constructor(latency_histogram),
            request_duration: Family::new_with_constructor(latency_histogram),
            delivered_by: Default::default(),
            publish_to_delivery_by: [
                latency_histogram(),
                latency_histogram(),
                latency_histogram(),
            ],
            publishes_by: Default::default(),
            registry: Registry::default(),
        }
    }

    /// Process figures keep their conventional unprefixed names; ours carry `stickyws_`.
    fn register_process(&self, root: &mut Registry) {
        root.register(
            "process_resident_memory_bytes",
            "Resident memory of this replica process",
            self.resident_memory.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors of this replica process",
            self.open_fds.clone(),
        );
    }

    /// Sockets, messages and the broker link.
    fn register_delivery(&self, ours: &mut Registry) {
        ours.register(
            "sockets",
            "WebSocket connections this replica holds",
            self.sockets.clone(),
        );
        ours.register(
            "clients",
            "Distinct clients with a socket on this replica",
            self.clients.clone(),
        );
        ours.register(
            "messages_delivered",
            "Frames delivered to sockets of this replica, by how they came",
            self.delivered.clone(),
        );
        ours.register(
            "publishes",
            "Messages this replica handed the broker, by target and outcome",
            self.publishes.clone(),
        );
        ours.register(
            "slow_consumer_disconnects",
            "Sockets closed (1013) because their send queue was full",
            self.slow_consumers.clone(),
        );
        ours.register(
            "broker_up",
            "1 while the broker is connected and subscribed",
            self.broker_up.clone(),
        );
        ours.register(
            "broker_reconnects",
            "Times the broker subscription was re-established after a loss",
            self.broker_reconnects.clone(),
        );
        ours.register(
            "channels",
            "Channels with at least one subscriber on this replica (each one subscribed at the broker)",
            self.channels.clone(),
        );
        ours.register(
            "channel_subscriptions",
            "Channel subscriptions (socket x channel) this replica holds",
            self.subscriptions.clone(),
        );
        ours.register(
            "presence_events",
            "Presence join/leave frames delivered to sockets of this replica",
            self.presence_events.clone(),
        );
        // The unit is in the name, without a `# UNIT` line: some OpenMetrics parsers refuse
        // units on histograms.
        ours.register(
            "publish_to_delivery_seconds",
            "From the publish request to the hand-off to this replica's sockets (wall clock)",
            self.publish_to_delivery.clone(),
        );
        ours.register(
            "http_request_duration_seconds",
            "HTTP requests this replica answered, by route pattern and status class",
            self.request_duration.clone(),
        );
    }

    /// The state lab's counters.
    fn register_lab(&self, ours: &mut Registry) {
        ours.register(
            "page_visits",
            "Page visits counted in this replica's memory (each replica has its own count)",
            self.page_visits.clone(),
        );
        ours.register(
            "shared_page_visits",
            "Page visits counted in Redis (INCR) across the deployment, as this replica last saw it",
            self.shared_page_visits.clone(),
        );
        ours.register(
            "state_hits",
            "Session-state lookups that found the client's state, by store",
            self.state_hits.clone(),
        );
        ours.register(
            "state_misses",
            "Session-state lookups that found nothing, by store",
            self.state_misses.clone(),
        );
        ours.register(
            "state_rebuilds",
            "Session states started empty after a miss, by store",
            self.state_rebuilds.clone(),
        );
        ours.register(
            "state_evictions",
            "Session states the local cache dropped, by cause (size limit or TTL)",
            self.state_evictions.clone(),
        );
        ours.register(
            "state_entries",
            "Session states in this replica's local cache",
            self.state_entries.clone(),
        );
        ours.register(
            "socket_landings",
            "Sockets opened, by whether they landed on the replica that rendered their page",
            self.landings.clone(),
        );
    }

    /// Creates every known series at zero, so a scrape never has to guess whether a missing
    /// series means "none yet" or "not exported"; keeps the ones every message touches.
    fn create_every_series(&mut self) {
        for via in Via::ALL {
            self.delivered_by[via as usize] = self
                .delivered
                .get_or_create(&ViaLabel { via: via.as_str() })
                .clone();
        }
        for kind in Kind::ALL {
            self.publish_to_delivery_by[kind as usize] = self
                .publish_to_delivery
                .get_or_create(&ViaLabel {
                    via: via_of(kind).as_str(),
                })
                .clone();
            for ok in [true, false] {
                let outcome = if ok { "ok" } else { "unavailable" };
                let target = kind.as_str();
                self.publishes_by[publish_index(kind, ok)] = self
                    .publishes
                    .get_or_create(&PublishLabels { target, outcome })
                    .clone();
            }
        }
        for store in ["local", "shared"] {
            let label = StoreLabel { store };
            let _ = self.state_hits.get_or_create(&label);
            let _ = self.state_misses.get_or_create(&label);
            let _ = self.state_rebuilds.get_or_create(&label);
        }
        for cause in ["size", "expired"] {
            let _ = self.state_evictions.get_or_create(&CauseLabel { cause });
        }
        for page in ["same", "other", "unknown"] {
            let _ = self.landings.get_or_create(&PageLabel { page });
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics that name no replica (unit tests of the parts that count).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A replica's metrics, its name in `stickyws_replica_info`.
    pub fn for_replica(replica: &str) -> Self {
        Self::build(Some(replica))
    }

    fn build(replica: Option<&str>) -> Self {
        let mut inner = Inner::zeroed();
        let mut root = Registry::default();
        inner.register_process(&mut root);
        let ours = root.sub_registry_with_prefix("stickyws");
        if let Some(replica) = replica {
            ours.register(
                "replica",
                "The replica that answered this scrape (its APP_ID)",
                Info::new(vec![("replica".to_owned(), replica.to_owned())]),
            );
        }
        inner.register_delivery(ours);
        inner.register_lab(ours);
        inner.create_every_series();
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
        self.inner.delivered_by[via as usize].inc_by(n);
    }

    pub fn published(&self, target: &Target, ok: bool) {
        self.inner.publishes_by[publish_index(target.kind(), ok)].inc();
    }

    /// A socket subscribed to a channel; `first`: the replica's first subscriber of it.
    pub fn subscribed(&self, first: bool) {
        self.inner.subscriptions.inc();
        if first {
            self.inner.channels.inc();
        }
    }

    /// A socket left a channel; `last`: the replica's last subscriber of it.
    pub fn unsubscribed(&self, last: bool) {
        self.inner.subscriptions.dec();
        if last {
            self.inner.channels.dec();
        }
    }

    pub fn presence_delivered(&self, n: u64) {
        self.inner.presence_events.inc_by(n);
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

    pub fn page_visit(&self, shared: Option<u64>) {
        self.inner.page_visits.inc();
        if let Some(shared) = shared {
            self.inner.shared_page_visits.set(saturating_i64(shared));
        }
    }

    /// A session-state lookup in `store`: a hit, or a miss that may have rebuilt the state.
    pub fn state_lookup(&self, store: &'static str, hit: bool, rebuilt: bool) {
        let label = StoreLabel { store };
        if hit {
            self.inner.state_hits.get_or_create(&label).inc();
        } else {
            self.inner.state_misses.get_or_create(&label).inc();
        }
        if rebuilt {
            self.inner.state_rebuilds.get_or_create(&label).inc();
        }
    }

    /// The local cache dropped an entry; `cause` is `size` or `expired`.
    pub fn state_evicted(&self, cause: &'static str) {
        self.inner
            .state_evictions
            .get_or_create(&CauseLabel { cause })
            .inc();
    }

    pub fn state_entries(&self, entries: u64) {
        self.inner.state_entries.set(saturating_i64(entries));
    }

    /// A socket opened; `same` says whether it landed on its page's replica (None: unknown).
    pub fn socket_landed(&self, same: Option<bool>) {
        let page = match same {
            Some(true) => "same",
            Some(false) => "other",
            None => "unknown",
        };
        self.inner.landings.get_or_create(&PageLabel { page }).inc();
    }

    /// Only messages that crossed the broker (`publish`, `broadcast`, `channel`) have a
    /// publish time.
    pub fn publish_to_delivery(&self, via: Via, seconds: f64) {
        let kind = match via {
            Via::Publish => Kind::Client,
            Via::Channel => Kind::Channel,
            Via::Broadcast => Kind::Broadcast,
            Via::Ws | Via::Direct => return,
        };
        self.inner.publish_to_delivery_by[kind as usize].observe(seconds);
    }

    /// The request-duration histogram of one route pattern and status class, for the HTTP
    /// layer to keep and observe without a lookup per request.
    pub fn request_histogram(&self, route: &str, status: u16) -> Histogram {
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.inner
            .request_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                status,
            })
            .clone()
    }

    /// This replica's key figures, read from the same counters `/metrics` shows.
    pub fn figures(&self) -> Figures {
        let inner = &self.inner;
        let local = StoreLabel { store: "local" };
        let cause = |cause| {
            inner
                .state_evictions
                .get_or_create(&CauseLabel { cause })
                .get()
        };
        let landed = |page| inner.landings.get_or_create(&PageLabel { page }).get();
        let delivered = inner.delivered_by.iter().map(Counter::get).sum();
        Figures {
            visits: inner.page_visits.get(),
            entries: u64::try_from(inner.state_entries.get()).unwrap_or(0),
            hits: inner.state_hits.get_or_create(&local).get(),
            misses: inner.state_misses.get_or_create(&local).get(),
            rebuilds: inner.state_rebuilds.get_or_create(&local).get(),
            evictions: cause("size"),
            expiries: cause("expired"),
            landed_same: landed("same"),
            landed_other: landed("other"),
            delivered,
            resident_bytes: process_figures()
                .and_then(|(rss, _)| u64::try_from(rss).ok())
                .unwrap_or(0),
        }
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

/// How a message to a target of `kind` reaches a socket.
fn via_of(kind: Kind) -> Via {
    match kind {
        Kind::Client => Via::Publish,
        Kind::Channel => Via::Channel,
        Kind::Broadcast => Via::Broadcast,
    }
}

/// Where a publish's counter sits in `publishes_by`.
fn publish_index(kind: Kind, ok: bool) -> usize {
    kind as usize * 2 + usize::from(ok)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
        let client = crate::token::ClientId::parse("c").unwrap();
        metrics.published(&Target::Client(client), true);
        metrics.published(&Target::Broadcast, false);
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
        assert!(
            text.contains(
                "stickyws_publishes_total{target=\"broadcast\",outcome=\"unavailable\"} 1\n"
            ),
            "{text}"
        );
        for series in [
            "{target=\"client\",outcome=\"unavailable\"} 0\n",
            "{target=\"broadcast\",outcome=\"ok\"} 0\n",
        ] {
            assert!(text.contains(series), "{series} missing: {text}");
        }
        // `delivered_by` is indexed by `Via as usize`.
        assert!(
            Via::ALL
                .iter()
                .enumerate()
                .all(|(i, via)| *via as usize == i)
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("stickyws_replica_info"), "{text}");
    }

    #[test]
    fn a_replicas_exposition_names_it() {
        let text = Metrics::for_replica("app-2").render();
        assert!(
            text.contains("\nstickyws_replica_info{replica=\"app-2\"} 1\n"),
            "{text}"
        );
    }
}
