//! The HTTP surface: the router, its shared state and the limits every route runs under.

mod api;
mod error;
mod extract;
mod health;
mod lab;
mod page;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;
pub use extract::{bearer, sticky_cookie};

use crate::broker::Broker;
use crate::config::Config;
use crate::lab::StateLab;
use crate::metrics::Metrics;
use crate::records::Records;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::token::Signer;

/// What every handler can reach; each field is a cheap handle.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    /// `config.app_id`, shared without copying into every frame and record.
    pub replica: Arc<str>,
    pub signer: Signer,
    pub registry: Registry,
    pub broker: Broker,
    /// The state lab: visit counters and session state, local and shared.
    pub lab: StateLab,
    pub records: Records,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Set when the replica starts draining: readiness fails and new sockets are refused.
    pub draining: Arc<AtomicBool>,
    /// Sends per client per second on this replica (`PUBLISH_RATE`).
    pub rate: Arc<RateLimit>,
}

/// A token bucket per client id.
pub type RateLimit = governor::DefaultKeyedRateLimiter<crate::token::ClientId>;

/// The per-client limiter for `per_second` sends, with bursts of twice that.
pub fn rate_limit(per_second: u32) -> RateLimit {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(rate));
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Every route of the contract.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/", get(page::index))
        .route("/static/app.js", get(page::script))
        .route("/static/app.css", get(page::style))
        .route("/api/clients", post(api::mint_client))
        .route("/api/echo/{client_id}", post(api::echo))
        .route("/api/direct/{client_id}", post(api::direct))
        .route("/api/publish/{client_id}", post(api::publish))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/replicas", get(api::replicas))
        .route("/api/stats", get(lab::stats))
        .route("/api/notes/{client_id}", get(lab::read))
        .route("/api/notes/{client_id}/local", post(lab::add_local))
        .route("/api/notes/{client_id}/shared", post(lab::add_shared))
        .route("/api/sticky/forget", post(lab::forget_cookie))
        .route("/ws/{client_id}", get(ws::upgrade))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), timed))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Observes every routed request's latency, labelled by its route pattern.
async fn timed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.request_finished(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
