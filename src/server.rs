//! One replica: builds its state (registry, delivery, broker, presence, records, metrics),
//! binds its listener and serves until shut down, then drains its sockets. What each piece does
//! is its own module's business; this one only assembles, runs and drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{LinkEvent, RedisBroker};
use crate::broker::redis_cluster::RedisClusterBroker;
use crate::broker::{Broker, Inbox};
use crate::config::{Config, SecretSource};
use crate::delivery::Delivery;
use crate::gap_fill::GapFill;
use crate::http::{ApiError, AppState, Shared, cross_site, router};
use crate::lab::StateLab;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::presence::Presence;
use crate::records::{Event, Records};
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::token::Signer;

/// How long a stopping replica keeps answering (readiness 503, upgrades refused with 503) before
/// it stops accepting connections: long enough for a load balancer to see it go.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How often idle clients' rate buckets are dropped.
const RATE_HOUSEKEEPING_EVERY: Duration = Duration::from_secs(2);
/// How long a connection may take to send a request's headers, counted from when it is ready
/// for one: a connection that trickles them, or opens and says nothing (before its upgrade, or
/// idle between keep-alive requests), is closed after this. nginx sends a request's headers at
/// once and notices an idle upstream connection being closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of request headers one connection may buffer (hyper's default is about 400 KiB).
/// Above nginx's own default of 4 × 8 KiB, so what nginx passes on always fits.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The response header naming the replica that answered (its `APP_ID`), on every response.
pub const X_REPLICA: axum::http::HeaderName = axum::http::HeaderName::from_static("x-replica");

/// A replica, bound and ready to serve.
#[derive(Debug)]
pub struct Replica {
    state: AppState,
    listener: TcpListener,
}

impl Replica {
    /// Connects the pieces and binds `config.bind`.
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding {}", config.bind))?;
        Self::with_listener(config, listener, shutdown)
    }

    /// Like [`Replica::build`] on a listener bound elsewhere (workers sharing a port).
    pub fn with_listener(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let replica: Arc<str> = config.app_id.as_str().into();
        let records = match &config.records_log {
            Some(path) => Records::open(&replica, path)
                .with_context(|| format!("opening records log {}", path.display()))?,
            None => Records::disabled(&replica),
        };
        if config.secret_source == SecretSource::Random {
            tracing::warn!(
                "STICKY_SECRET is not set: using a random secret, so tokens minted here are \
                 refused by every other replica; set one shared secret for a deployment"
            );
        }
        let metrics = Metrics::for_replica(&replica);
        // Built in the order messages flow back: sockets, then delivery into them, then the
        // broker whose inbox is that delivery. The registry does not own the broker (each
        // socket's registration carries it), so nothing here needs to be filled in later.
        let registry = Registry::new(metrics.clone(), &config.limits);
        let delivery = Delivery::new(
            replica.clone(),
            registry.clone(),
            records.clone(),
            metrics.clone(),
        );
        // Told by the broker's subscriber when it resubscribed after a loss, before the new
        // subscription delivers anything; fills what the held targets missed meanwhile.
        let gap_fill = GapFill::new(registry.clone(), delivery.clone());
        let broker = start_broker(&config, delivery.inbox(), &records, &metrics, &gap_fill)?;
        tokio::spawn(gap_fill.run(broker.clone(), shutdown.clone()));
        let lab = StateLab::new(
            replica.clone(),
            &config.limits,
            broker.redis_connection(),
            records.clone(),
            metrics.clone(),
        );
        let presence = Presence::new(
            replica.clone(),
            registry.clone(),
            lab.clone(),
            broker.clone(),
        );
        let config_rate = config.limits.publish_rate;
        let channel_rate = config.limits.channel_publish_rate;
        let mint_rate = config.limits.mint_rate;
        let state = AppState::new(Shared {
            signer: Signer::new(&config.secret),
            config: Arc::new(config),
            replica,
            registry,
            broker,
            delivery,
            presence,
            lab,
            records,
            metrics,
            shutdown: Shutdown::new(shutdown),
            draining: Arc::new(AtomicBool::new(false)),
            rate: Arc::new(crate::http::rate_limit(config_rate)),
            channel_rate: Arc::new(crate::http::rate_limit(channel_rate)),
            mint: Arc::new(crate::http::mint_limit(mint_rate)),
        });
        Ok(Self { state, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { state, listener } = self;
        let token = state.shutdown.token.clone();
        let addr = listener.local_addr()?;
        let detail = format!(
            "listening on {addr}, broker {}, pid {}",
            state.broker.kind(),
            std::process::id()
        );
        state.records.record(Event::Start, None, &detail);
        tracing::info!(replica = %state.replica, %addr, broker = state.broker.kind(), "replica started");

        let announcer = tokio::spawn(state.presence.clone().announce_until(token.clone()));
        let housekeeper = tokio::spawn(forget_quiet_clients(state.clone(), token.clone()));

        // 1. Serve until the token is cancelled (SIGTERM, Ctrl-C).
        let draining = state.draining.clone();
        let drain_timeout = state.config.drain_timeout;
        // The body limit of axum's own body extractors, set once around the router: as a
        // `Router::layer` it would wrap every route in one more boxed service, cloned on every
        // request. (Ours, `TextBody`, enforces MAX_BODY_BYTES itself.)
        let body_limit = DefaultBodyLimit::max(state.config.limits.max_body_bytes);
        let app = body_limit.layer(router(state.clone()));
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let stopping = {
            let token = token.clone();
            async move {
                token.cancelled().await;
                let _ = stopped_tx.send(tokio::time::Instant::now());
                // 2. At once: readiness answers 503 and new sockets are refused with 503, which
                //    nginx passes to another replica. Every session saw the same token and is
                //    closing its socket with 1012 (service restart), so clients reconnect.
                draining.store(true, Ordering::Relaxed);
                // 3. Keep answering for a moment so load balancers see the 503s, then stop
                //    accepting connections; axum lets in-flight requests finish.
                tokio::time::sleep(DRAIN_GRACE.min(drain_timeout / 2)).await;
            }
        };
        serve(listener, app, state.config.clone(), stopping).await;

        // 4. Wait for the sessions to end, within what is left of the drain timeout.
        let (sockets, _) = state.registry.counts();
        let left = match stopped_rx.await {
            Ok(at) => drain_timeout.saturating_sub(at.elapsed()),
            Err(_) => drain_timeout,
        };
        let drained = state.shutdown.drain(left).await;
        if !drained {
            tracing::warn!(sockets, "drain timeout: closing remaining sockets");
        }
        announcer.abort();
        housekeeper.abort();
        state
            .records
            .record(Event::Stop, None, format_args!("drained {sockets} sockets"));
        // 5. Flush the records log last, so the stop line is in it.
        state.records.close();
        tracing::info!(replica = %state.replica, "replica stopped");
        Ok(())
    }
}

/// The broker `config` asks for, delivering into `inbox`.
fn start_broker(
    config: &Config,
    inbox: Inbox,
    records: &Records,
    metrics: &Metrics,
    gap_fill: &GapFill,
) -> anyhow::Result<Broker> {
    let window = config.limits.window();
    if !config.redis_cluster_nodes.is_empty() {
        let observer = link_observer(records.clone(), metrics.clone(), gap_fill.clone());
        return Ok(Broker::RedisCluster(RedisClusterBroker::start(
            &config.redis_cluster_nodes,
            &config.app_id,
            inbox,
            observer,
            window,
        )?));
    }
    Ok(match &config.redis_url {
        Some(url) => {
            let observer = link_observer(records.clone(), metrics.clone(), gap_fill.clone());
            Broker::Redis(RedisBroker::start(
                url,
                &config.app_id,
                inbox,
                observer,
                window,
            )?)
        }
        None => {
            records.record(
                Event::Subscribed,
                None,
                "in-process broker (one replica only)",
            );
            Broker::Memory(MemoryBroker::new(&config.app_id, inbox, window))
        }
    })
}

/// Turns the Redis link's events into records and metrics.
fn link_observer(
    records: Records,
    metrics: Metrics,
    gap_fill: GapFill,
) -> crate::broker::redis::LinkObserver {
    Arc::new(move |event| match event {
        LinkEvent::Subscribed {
            channels,
            reconnect,
        } => {
            // Up-ness is the link's (both connections), said by `Back`; this is the subscription.
            if reconnect {
                metrics.broker_reconnected();
                // Messages published while the subscription was down are only in history.
                gap_fill.resubscribed();
            }
            let detail = format!(
                "redis {} ({channels} channels)",
                if reconnect {
                    "re-subscribed"
                } else {
                    "subscribed"
                }
            );
            records.record(Event::Subscribed, None, &detail);
            tracing::info!(channels, reconnect, "broker subscribed");
        }
        LinkEvent::Lost { reason } => {
            metrics.broker_up(false);
            records.record(
                Event::BrokerLost,
                None,
                format_args!("redis link lost: {reason}"),
            );
            tracing::warn!(%reason, "broker link lost; reconnecting");
        }
        LinkEvent::Unreachable { addr, reason } => {
            metrics.broker_up(false);
            records.record(
                Event::BrokerLost,
                None,
                format_args!(
                    "redis at {addr} unreachable at start ({reason}); serving without it, \
                     /readyz 503 until it answers"
                ),
            );
            tracing::warn!(
                %addr,
                %reason,
                "cannot reach redis (REDIS_URL): serving the page, echo, direct and sockets \
                 without it; publish and /readyz answer 503 until it answers"
            );
        }
        LinkEvent::Back { after } => {
            metrics.broker_up(true);
            gap_fill.link_back();
            records.record(
                Event::Subscribed,
                None,
                format_args!("redis link back after {:.1} s", after.as_secs_f64()),
            );
            tracing::info!(?after, "broker link back");
        }
    })
}

/// Forgets the rate buckets of clients and source addresses that have gone quiet, so they
/// cannot pile up.
async fn forget_quiet_clients(state: AppState, token: CancellationToken) {
    let mut tick = tokio::time::interval(RATE_HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.rate.retain_recent();
                state.channel_rate.retain_recent();
                state.mint.retain_recent();
                // A bucket is dropped once it is full again (2 s after a burst), so at most the
                // addresses of the last two seconds are held; give the memory of a spike back.
                state.mint.shrink_to_fit();
            }
            () = token.cancelled() => return,
        }
    }
}

/// Serves HTTP/1 on `listener` until `stopping` resolves, then lets in-flight requests finish.
/// Written out instead of `axum::serve`, which sets neither a header-read timeout nor a bound on
/// header bytes. Each request carries its connection's [`Peer`]; a cross-site POST is refused
/// here, before routing, so no state-changing route can forget the check.
async fn serve<S>(
    listener: TcpListener,
    app: S,
    config: Arc<Config>,
    stopping: impl std::future::Future<Output = ()>,
) where
    S: tower_service::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connections = tokio_util::task::TaskTracker::new();
    let stop = CancellationToken::new();
    // Every answer names the replica that gave it, so a scrape or a probe through nginx says
    // which replica it reached. APP_ID is checked to be header-safe; if it were not, no header.
    let named = axum::http::HeaderValue::from_str(config.app_id.as_str()).ok();
    tokio::pin!(stopping);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: give sockets a moment to close.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = Peer::new(addr, &config.trusted_proxies);
        let app = app.clone();
        let config = config.clone();
        let named = named.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut app = app.clone();
            let named = named.clone();
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(peer);
            let refused = request.method() == axum::http::Method::POST && {
                let headers = request.headers();
                cross_site(headers, peer.scheme(headers), &config.allowed_origins)
            };
            async move {
                let mut response = if refused {
                    ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "forbidden_origin",
                        "a cross-site request may not change state here; add its origin to \
                         ALLOWED_ORIGINS to allow it",
                    )
                    .into_response()
                } else {
                    std::future::poll_fn(|cx| app.poll_ready(cx)).await?;
                    app.call(request).await?
                };
                if let Some(named) = named {
                    response.headers_mut().insert(X_REPLICA, named);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                // Header timeouts, oversized heads, resets: the client's business.
                tracing::debug!(%err, %addr, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}
