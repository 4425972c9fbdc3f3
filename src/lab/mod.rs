//! The state lab: what goes wrong when an app keeps state in its own process behind a load
//! balancer, next to the fix, with every step counted and logged.
//!
//! - Two visit counters: one in this replica's memory, one shared ([`shared::SharedStore`]).
//! - Each client's session state (a short list of notes) kept twice: in a bounded local cache
//!   ([`local::LocalStates`]) and in the shared store, with the same TTL. A request that lands
//!   on a replica that does not hold the client's local state misses and rebuilds it empty.
//! - Where a socket lands: on the replica that rendered its page, or on another one (which then
//!   rebuilds the client's state a second time: the app runs twice).

pub mod local;
pub mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::broker::BrokerError;
use crate::limits::Limits;
use crate::metrics::{Figures, Metrics};
use crate::records::{Event, Records};
use crate::token::ClientId;
use local::{Dropped, LocalStates};
use shared::SharedStore;

/// Longest a page render (or `/api/stats`) waits for the shared visit counter.
const VISIT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// A client's session state: the notes it added, oldest first.
pub type Notes = Arc<[String]>;

/// What one lookup of a client's state found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub notes: Notes,
    /// The client's state was there.
    pub hit: bool,
}

/// Which copy of the state a request works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// This replica's memory.
    Local,
    /// Redis (or, without Redis, the single replica's own memory).
    Shared,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Local => "local",
            Store::Shared => "shared",
        }
    }
}

/// What a request did to one copy of the client's state; the JSON the API answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub replica: Arc<str>,
    pub store: Store,
    pub notes: Notes,
    /// The state was there.
    pub hit: bool,
    /// It was not, and an empty one was started.
    pub rebuilt: bool,
    /// What a person should know (set on a rebuild).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The page's two counters after one visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visits {
    /// This replica's own count.
    pub local: u64,
    /// The deployment's count, None while Redis is unreachable.
    pub shared: Option<u64>,
}

/// Where a socket landed and what its replica knew of the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Landing {
    /// The replica that rendered the client's page, as the page said.
    pub page_replica: Option<String>,
    /// Whether that is this replica (None when the page did not say).
    pub same_replica: Option<bool>,
    /// This replica already held the client's local state.
    pub state_hit: bool,
}

/// The state lab of one replica; cheap to clone.
#[derive(Clone, Debug)]
pub struct StateLab {
    replica: Arc<str>,
    visits: Arc<AtomicU64>,
    local: LocalStates,
    shared: SharedStore,
    records: Records,
    metrics: Metrics,
}

impl StateLab {
    pub fn new(
        replica: Arc<str>,
        limits: &Limits,
        redis: Option<crate::broker::redis_conn::RedisConn>,
        records: Records,
        metrics: Metrics,
    ) -> Self {
        let ttl = limits.state_ttl();
        let on_drop: local::OnDrop = {
            let records = records.clone();
            let metrics = metrics.clone();
            let detail = match limits.state_max_entries {
                1 => "size limit: 1 entry".to_owned(),
                n => format!("size limit: {n} entries"),
            };
            let expired = format!("expired: unchanged for {}", humantime::format_duration(ttl));
            Arc::new(move |client: &ClientId, why: Dropped| {
                metrics.state_evicted(why.as_str());
                let detail = match why {
                    Dropped::Size => &detail,
                    Dropped::Expired => &expired,
                };
                records.record(Event::Evict, Some(client.as_str()), detail);
            })
        };
        let local = LocalStates::new(limits.state_max_entries, ttl, limits.max_notes, on_drop);
        let shared = match redis {
            Some(conn) => SharedStore::redis(conn, ttl, limits.max_notes),
            None => SharedStore::memory(limits.state_max_entries, ttl, limits.max_notes),
        };
        Self {
            replica,
            visits: Arc::default(),
            local,
            shared,
            records,
            metrics,
        }
    }

    /// Counts a page visit in both counters.
    pub async fn visit(&self) -> Visits {
        let local = self.visits.fetch_add(1, Ordering::Relaxed) + 1;
        // The page must not wait out a Redis outage for a number it can show as unavailable.
        let shared = match tokio::time::timeout(VISIT_WAIT, self.shared.count_visit()).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(err)) => {
                tracing::warn!(cause = %err, "shared visit counter unavailable");
                None
            }
            Err(_) => {
                tracing::warn!("shared visit counter did not answer in time");
                None
            }
        };
        self.metrics.page_visit(shared);
        Visits { local, shared }
    }

    /// The deployment's visit count, without counting one (None while Redis is unreachable).
    pub async fn shared_visits(&self) -> Option<u64> {
        tokio::time::timeout(VISIT_WAIT, self.shared.visits())
            .await
            .ok()?
            .ok()
    }

    /// Adds a note to one copy of the client's state.
    pub async fn add(
        &self,
        client: &ClientId,
        store: Store,
        note: &str,
    ) -> Result<Outcome, BrokerError> {
        let found = match store {
            Store::Local => self.local.add(client, note),
            Store::Shared => self.shared.add(client, note).await?,
        };
        Ok(self.looked_up(client, store, found, true))
    }

    /// Reads one copy of the client's state without changing it.
    pub async fn read(&self, client: &ClientId, store: Store) -> Result<Outcome, BrokerError> {
        let found = match store {
            Store::Local => self.local.get(client, false),
            Store::Shared => self.shared.get(client).await?,
        };
        Ok(self.looked_up(client, store, found, false))
    }

    /// A socket of `client` opened here: it needs the client's local state, rebuilt if this
    /// replica does not hold it. `page_replica` is the replica that rendered the client's page.
    pub fn landed(&self, client: &ClientId, page_replica: Option<String>) -> Landing {
        let found = self.local.get(client, true);
        let state_hit = found.hit;
        self.looked_up(client, Store::Local, found, true);
        let same_replica = page_replica.as_deref().map(|p| p == &*self.replica);
        self.metrics.socket_landed(same_replica);
        Landing {
            page_replica,
            same_replica,
            state_hit,
        }
    }

    /// Counts and logs a lookup, and words what a person should know about it.
    fn looked_up(
        &self,
        client: &ClientId,
        store: Store,
        Found { notes, hit }: Found,
        rebuild: bool,
    ) -> Outcome {
        let rebuilt = !hit && rebuild;
        let label = store.as_str();
        self.metrics.state_lookup(label, hit, rebuilt);
        let name = Some(client.as_str());
        let message = if hit {
            let detail = match notes.len() {
                1 => format!("{label}: holds 1 note"),
                n => format!("{label}: holds {n} notes"),
            };
            self.records.record(Event::CacheHit, name, &detail);
            None
        } else {
            self.records.record(
                Event::CacheMiss,
                name,
                format_args!("{label}: no state for this client"),
            );
            rebuilt.then(|| {
                let message = match store {
                    Store::Local => format!("{} had never seen you: state rebuilt", self.replica),
                    Store::Shared => format!(
                        "no shared state for you yet ({}): started",
                        self.shared.kind()
                    ),
                };
                self.records
                    .record(Event::Rebuild, name, format_args!("{label}: {message}"));
                message
            })
        };
        Outcome {
            replica: self.replica.clone(),
            store,
            notes,
            hit,
            rebuilt,
            message,
        }
    }

    /// Runs pending cache evictions, so counts and the records log are current.
    pub fn maintain(&self) {
        self.local.maintain();
        self.metrics.state_entries(self.local.entries());
    }

    /// This replica's key figures, current.
    pub fn figures(&self) -> Figures {
        self.maintain();
        self.metrics.figures()
    }
}
