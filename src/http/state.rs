//! What every handler can reach: the replica's handles behind one pointer, the per-client
//! send rate limit and the per-address mint limit. Built once by [`crate::server`]; the routes are in [`super`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::broker::Broker;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::lab::StateLab;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::records::Records;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::token::Signer;

/// What every handler can reach: one reference-counted handle, because axum clones the state
/// several times per request (the router, each `State` extractor); cloning a struct of a dozen
/// handles cost one atomic increment and decrement per field each time.
#[derive(Clone, Debug)]
pub struct AppState {
    shared: Arc<Shared>,
}

/// The replica's handles, shared by every request; each field is a cheap handle itself.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    /// `config.app_id`, shared without copying into every frame and record.
    pub replica: Arc<str>,
    pub signer: Signer,
    pub registry: Registry,
    pub broker: Broker,
    /// Every delivery to local sockets, counted and recorded in one place.
    pub delivery: Delivery,
    /// What this replica announces, and the list of live replicas.
    pub presence: Presence,
    /// The state lab: visit counters and session state, local and shared.
    pub lab: StateLab,
    pub records: Records,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Set when the replica starts draining: readiness fails and new sockets are refused.
    pub draining: Arc<AtomicBool>,
    /// Sends per client per second on this replica (`PUBLISH_RATE`).
    pub rate: Arc<RateLimit>,
    /// Channel publishes per client per second on this replica (`CHANNEL_PUBLISH_RATE`),
    /// over HTTP and sockets alike.
    pub channel_rate: Arc<RateLimit>,
    /// Clients minted per source address per second (`MINT_RATE`).
    pub mint: Arc<MintLimit>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

pub use crate::limits::{RateLimit, rate_limit};

/// A token bucket per source address (an IPv6 client's /64, see [`crate::peer::limit_key`]).
pub type MintLimit = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// The per-address limiter for `per_second` mints, with bursts of twice that.
pub fn mint_limit(per_second: u32) -> MintLimit {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(rate));
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
