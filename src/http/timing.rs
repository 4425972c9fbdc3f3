//! Per-route request timing into `stickyws_http_request_duration_seconds{route, status}`: a
//! small tower layer put on each handler by the router ([`super::router`]). What is measured is
//! the metrics' business ([`crate::metrics`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::handler::{Handler, Layered};
use axum::response::Response;
use prometheus_client::metrics::histogram::Histogram;
use tower_layer::Layer;
use tower_service::Service;

use super::AppState;
use crate::metrics::Metrics;

/// `handler`, timed. One layer per route: the layer keeps the route's histograms, and axum
/// applies a handler's layer anew to every request.
pub(super) fn timed<H, T>(metrics: &Metrics, handler: H) -> Layered<TimedLayer, H, T, AppState>
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
pub(super) struct TimedLayer(Arc<RouteTiming>);

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
pub(super) struct Timed<S> {
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
pub(super) struct TimedFuture<F> {
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
