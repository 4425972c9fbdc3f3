//! The HTTP surface: the router, its shared state and the limits every route runs under.

mod api;
mod error;
mod extract;
mod health;
mod lab;
mod page;
mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::handler::{Handler, Layered};
use axum::response::Response;
use axum::routing::{get, post};
use prometheus_client::metrics::histogram::Histogram;
use tower_layer::Layer;
use tower_service::Service;

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

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
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
    pub fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Every route of the contract. Each handler is timed by its own layer (`Timed`), not by
/// `Router::route_layer`: every router-level layer wraps each route in one more boxed service,
/// and axum clones the whole chain of boxes on every request.
pub fn router(state: AppState) -> Router {
    let m = &state.metrics;
    Router::new()
        .route("/", get(timed(m, page::index)))
        .route("/static/{file}", get(timed(m, page::asset)))
        .route("/api/clients", post(timed(m, api::mint_client)))
        .route("/api/echo/{client_id}", post(timed(m, api::echo)))
        .route("/api/direct/{client_id}", post(timed(m, api::direct)))
        .route("/api/publish/{client_id}", post(timed(m, api::publish)))
        .route("/api/broadcast", post(timed(m, api::broadcast)))
        .route("/api/replicas", get(timed(m, api::replicas)))
        .route("/api/stats", get(timed(m, lab::stats)))
        .route("/api/notes/{client_id}", get(timed(m, lab::read)))
        .route(
            "/api/notes/{client_id}/local",
            post(timed(m, lab::add_local)),
        )
        .route(
            "/api/notes/{client_id}/shared",
            post(timed(m, lab::add_shared)),
        )
        .route("/api/sticky/forget", post(timed(m, lab::forget_cookie)))
        .route("/ws/{client_id}", get(timed(m, ws::upgrade)))
        .route("/healthz", get(timed(m, health::healthz)))
        .route("/readyz", get(timed(m, health::readyz)))
        .route("/metrics", get(timed(m, health::metrics)))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// `handler`, timed. One layer per route: the layer keeps the route's histograms, and axum
/// applies a handler's layer anew to every request.
fn timed<H, T>(metrics: &Metrics, handler: H) -> Layered<TimedLayer, H, T, AppState>
where
    H: Handler<T, AppState>,
    H::Future: Unpin,
    T: 'static,
{
    handler.layer(TimedLayer(Arc::new(RouteTiming {
        metrics: metrics.clone(),
        timers: OnceLock::new(),
    })))
}

/// Times every routed request into `stickyws_http_request_duration_seconds{route, status}`.
///
/// A tower layer rather than `middleware::from_fn`, which boxes the inner service and its future
/// and clones the state on every request, and labelled the histogram with a fresh `String`
/// looked up in the family each time. Here each route finds its histograms once.
#[derive(Clone, Debug)]
struct TimedLayer(Arc<RouteTiming>);

impl<S> Layer<S> for TimedLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            timing: self.0.clone(),
        }
    }
}

/// One route's service, timed.
#[derive(Clone, Debug)]
struct Timed<S> {
    inner: S,
    timing: Arc<RouteTiming>,
}

/// What every request of one route shares.
#[derive(Debug)]
struct RouteTiming {
    metrics: Metrics,
    /// Each route has its own layer, so its pattern (and its histograms) are fixed by its first
    /// request.
    timers: OnceLock<RouteTimers>,
}

#[derive(Debug)]
struct RouteTimers {
    route: Box<str>,
    /// By status class, 1xx to 5xx.
    by_class: [OnceLock<Histogram>; 5],
}

impl RouteTiming {
    fn observe(&self, status: u16, seconds: f64) {
        let Some(timers) = self.timers.get() else {
            return;
        };
        let class = usize::from(status.clamp(100, 599) / 100 - 1);
        timers.by_class[class]
            .get_or_init(|| self.metrics.request_histogram(&timers.route, status))
            .observe(seconds);
    }
}

impl<S> Service<Request> for Timed<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.timing.timers.get_or_init(|| RouteTimers {
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .into(),
            by_class: Default::default(),
        });
        TimedFuture {
            started: Instant::now(),
            inner: self.inner.call(request),
            timing: self.timing.clone(),
        }
    }
}

#[derive(Debug)]
struct TimedFuture<F> {
    inner: F,
    started: Instant,
    timing: Arc<RouteTiming>,
}

impl<F, E> Future for TimedFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let result = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        if let Ok(response) = &result {
            let seconds = this.started.elapsed().as_secs_f64();
            this.timing.observe(response.status().as_u16(), seconds);
        }
        Poll::Ready(result)
    }
}
