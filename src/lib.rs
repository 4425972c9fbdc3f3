//! stickyws: a WebSocket fan-out gateway, and a hands-on demonstration of sticky sessions.
//!
//! Several replicas of this binary each hold WebSocket connections in memory. A message for a
//! client is published to a broker; only the replicas holding a socket of that client deliver
//! it. nginx in front routes on the `sticky` cookie to the replica that issued it.
//!
//! # Layout
//! - [`config`], [`limits`]: the replica's validated configuration and every client-facing limit.
//! - [`peer`]: who is on the other end of a request, and which proxies are believed about it.
//! - [`server`]: one replica — builds the state, serves, drains on shutdown.
//! - [`http`]: router, page, `/api/*`, `/ws/*` upgrade, probes, the error shape.
//! - [`session`]: one WebSocket — reader loop, writer with its bounded queue, pings, close codes.
//! - [`resume`]: where a socket's stream starts; replay of what a reconnecting client missed.
//! - [`registry`]: the sockets a replica holds, by client id, each with its bounded queue.
//! - [`socket_queue`]: one socket's bounded queue of outgoing frames, one small allocation while idle.
//! - [`alarm`]: how the registry tells a session its socket must close (slow consumer, resync).
//! - [`delivery`]: the return leg of every message — the broker's inbox, `direct` and the
//!   socket echo — into the registry, counted and recorded in one place.
//! - [`broker`]: how messages reach the replicas holding a client — in-process, Redis or a
//!   Redis Cluster.
//! - [`presence`]: what a replica announces about itself, and the list of live replicas.
//! - [`target`]: where a message goes (a client, a channel, or everyone).
//! - [`channel`]: channel names, who may subscribe, subscription tokens.
//! - [`cursor`]: positions in a history (message ids), as frames and the broker write them.
//! - [`frame`]: frames in and out, and the envelope replicas exchange through the broker.
//! - [`lab`]: the state lab — visit counters and session state, process-local vs shared.
//! - [`token`]: client ids and the HMAC tokens proving who may act as one.
//! - [`records`]: the shared, human-readable records log.  [`metrics`]: Prometheus metrics.
//! - [`shutdown`], [`backoff`], [`telemetry`]: signals and draining, retry delays, diagnostics.
//! - [`drill`]: the fault drills' wire model (kill, drain, restart, Redis stop/start/freeze),
//!   checked alike by a replica's `/api/drills*` and the cluster's control server.
//! - [`ops`]: what runs beside replicas on one machine — `stickyws cluster` (the local demo
//!   without Docker), `WORKERS=N` sharing a port, the nginx.conf rewrite, starting `redis-server`.
//!
//! # On the wire (Redis)
//! - `stickyws:client:<client id>` — channel of one client; a replica subscribes while it holds
//!   at least one socket of that client and unsubscribes when the last one closes, so PUBLISH's
//!   reply counts exactly the replicas that deliver.
//! - `stickyws:broadcast` — channel every replica subscribes to for `/api/broadcast`.
//! - `stickyws:replicas` (sorted set, score = last announcement in ms) and
//!   `stickyws:replica:<id>` (JSON, expiring) — who is alive and its key figures, for
//!   `/api/replicas` and `/api/stats`.
//! - `stickyws:channel:<name>` — channel of one channel's messages (and presence notes),
//!   subscribed by the replicas holding a subscriber of it.
//! - `stickyws:history:<client id>`, `stickyws:history:#<channel>`,
//!   `stickyws:history:*broadcast` — streams kept for recovery; `stickyws:epoch:<same>` — the
//!   epoch of each, expiring with it (a lost history comes back with a new epoch).
//! - `stickyws:idem:<same>:<SHA-256 of an Idempotency-Key>` — the first outcome of a keyed
//!   publish (`<epoch> <id> <receivers>`), expiring with the history.
//! - `stickyws:members:<channel>` — channel presence: a field per client,
//!   `replica=sockets@expires_ms;…`.
//! - `stickyws:visits`, `stickyws:notes:<client id>` — the state lab's shared counter and
//!   session state.
//!
//! On a Redis Cluster (`REDIS_CLUSTER_NODES`) the same things carry a hash tag per target, so
//! each target's channel, history, epoch, records and presence live in one slot and the
//! publish runs on its shard: `stickyws:{client:<id>}` (sharded pub/sub), `…:history`,
//! `…:epoch`, `…:idem:<sha256>`; `stickyws:{channel:<name>}` and `…:members`;
//! `stickyws:{broadcast}`; `stickyws:{replicas}` and `stickyws:{replicas}:<id>`
//! ([`broker::cluster_keys`]).
//!
//! Payloads are JSON envelopes `{"via", "from", "text", "at"}` (`at`: publish time, µs since the
//! epoch); each receiving replica adds itself as `replica` when it builds the frame, once for all
//! its local recipients.

pub mod alarm;
pub mod backoff;
pub mod broker;
pub mod channel;
pub mod config;
pub mod continuity;
pub mod cursor;
pub mod delivery;
pub mod drill;
pub mod frame;
pub mod gap_fill;
pub mod http;
pub mod lab;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod peer;
pub mod presence;
pub mod records;
pub mod registry;
pub mod resume;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket_queue;
pub mod target;
pub mod telemetry;
pub mod token;

pub use config::{Config, ServeArgs};
pub use server::Replica;

use ops::workers;

/// `stickyws serve`: runs one replica until Ctrl-C or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_files_limit();
    if config.workers > 1 {
        return workers::supervise(config).await;
    }
    let token = tokio_util::sync::CancellationToken::new();
    let replica = if std::env::var_os(workers::REUSEPORT_ENV).is_some() {
        let listener = workers::reuseport_listener(config.bind)?;
        Replica::with_listener(config, listener, token.clone())?
    } else {
        Replica::build(config, token.clone()).await?
    };
    tokio::spawn(async move {
        shutdown::signal().await;
        token.cancel();
    });
    replica.run().await
}

/// The runtime a replica runs on: `THREADS=1` is a current-thread runtime, where a request and
/// the socket it delivers to never wake another thread; more threads, a multi-thread one.
pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.threads);
        builder
    };
    builder.enable_all().build()
}

/// Every socket is a descriptor: lift the soft limit to the hard one.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open files limit"),
    }
}
