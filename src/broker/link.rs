//! Watching the Redis link: both connections of a replica are proven alive by pings with
//! deadlines, and the command connection is never reused once it may be out of step.
//!
//! A frozen (SIGSTOP), partitioned or black-holed Redis closes nothing, so neither connection
//! ever sees an error by itself. Here:
//! - [`watch_subscriber`] pings on the pub/sub connection (in RESP2 pub/sub mode a `PING` is
//!   allowed and answered as a `pong` message) and resolves with a reason when a pong is late;
//!   the subscriber task in `redis.rs` treats that as a lost connection.
//! - [`watch_commands`] pings through the [`CommandLink`] on a timer.
//! - [`Health`] combines the two into one readiness and says once that the link was lost and
//!   once that it is back ([`LinkEvent::Lost`], [`LinkEvent::Back`]).
//! - [`CommandLink`] is the command connection: every request carries a trailing `ECHO` of a
//!   unique token, so a reply matched to the wrong request is noticed instead of handed out, and
//!   after any timeout, connection error or mismatch the connection is dropped and a fresh one
//!   made. redis-rs's `ConnectionManager` alone does not do that: a response timeout is an I/O
//!   error of kind `TimedOut`, which `is_unrecoverable_error()` calls retryable, so it keeps the
//!   connection, and once a byte of a reply is lost every later reply goes to the wrong caller.
//!
//! Subscribing, resubscribing and delivery stay in `redis.rs`; what the events mean for the
//! records log and metrics is the replica's (`server.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio_util::sync::CancellationToken;

/// Subscriber-side events the replica reports (records log, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected and subscribed to the broadcast channel and every held client channel.
    Subscribed { channels: usize, reconnect: bool },
    /// A connection (subscriber or commands) stopped answering; said once per outage.
    Lost { reason: String },
    /// Both connections answer again after a [`LinkEvent::Lost`] or
    /// [`LinkEvent::Unreachable`].
    Back { after: Duration },
    /// The first connection attempt after start-up failed (`REDIS_URL` pointing at nothing, or
    /// Redis not up yet); said once. `addr` is the host and port, never the URL's password.
    Unreachable { addr: String, reason: String },
}

/// Receives [`LinkEvent`]s; called from the subscriber task.
pub type LinkObserver = Arc<dyn Fn(LinkEvent) + Send + Sync>;

/// How often each connection is pinged.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a ping may take. With [`PING_EVERY`], a dead link is noticed within 2 s: the
/// contract's "no answer within a few seconds", and issue #14's 3 s.
pub const PING_DEADLINE: Duration = Duration::from_millis(1500);

/// Which of the two connections a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    Subscriber,
    Commands,
}

impl Connection {
    fn as_str(self) -> &'static str {
        match self {
            Connection::Subscriber => "subscriber",
            Connection::Commands => "commands",
        }
    }
}

/// Whether each connection works, and what has been said about it.
pub struct Health {
    subscriber: AtomicBool,
    commands: AtomicBool,
    /// When the loss now being reported began; `None` when nothing is lost or a loss was never
    /// said (start-up with Redis away is not a loss: nothing was there to lose). Under a lock so
    /// "lost" and "back" are said in the order they happened.
    lost_since: Mutex<Option<Instant>>,
    /// The last reason a connection was said to fail, for [`Health::detail`]; kept after the
    /// link is back only to be overwritten by the next failure.
    last_failure: Mutex<Option<String>>,
    observer: LinkObserver,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("subscriber", &self.is_up(Connection::Subscriber))
            .field("commands", &self.is_up(Connection::Commands))
            .finish()
    }
}

impl Health {
    pub fn new(observer: LinkObserver) -> Self {
        Self {
            subscriber: AtomicBool::new(false),
            commands: AtomicBool::new(false),
            lost_since: Mutex::new(None),
            last_failure: Mutex::new(None),
            observer,
        }
    }

    fn flag(&self, which: Connection) -> &AtomicBool {
        match which {
            Connection::Subscriber => &self.subscriber,
            Connection::Commands => &self.commands,
        }
    }

    pub fn is_up(&self, which: Connection) -> bool {
        self.flag(which).load(Ordering::Relaxed)
    }

    /// Both connections answer: what `/readyz` and `stickyws_broker_up` report.
    pub fn is_ready(&self) -> bool {
        self.is_up(Connection::Subscriber) && self.is_up(Connection::Commands)
    }

    /// One short sentence on the link as it is now: what `/api/stats` shows beside readiness.
    pub fn detail(&self) -> String {
        if self.is_ready() {
            return "connected and subscribed".to_owned();
        }
        let down: Vec<&str> = [Connection::Subscriber, Connection::Commands]
            .into_iter()
            .filter(|which| !self.is_up(*which))
            .map(Connection::as_str)
            .collect();
        let last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match last {
            Some(reason) => format!("{} not answering ({reason})", down.join(" and ")),
            None => format!("{} not connected yet", down.join(" and ")),
        }
    }

    /// The subscriber connection is subscribed again; `event` says to what.
    pub fn subscribed(&self, event: LinkEvent) {
        self.subscriber.store(true, Ordering::Relaxed);
        (self.observer)(event);
        self.settle();
    }

    pub fn up(&self, which: Connection) {
        if !self.flag(which).swap(true, Ordering::Relaxed) {
            self.settle();
        }
    }

    /// `which` stopped answering. The first connection to fail says so for the link; the
    /// other one failing too adds nothing a reader needs.
    pub fn down(&self, which: Connection, reason: &str) {
        let was_up = self.flag(which).swap(false, Ordering::Relaxed);
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(format!("{}: {reason}", which.as_str()));
        let mut lost = self
            .lost_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if was_up && lost.is_none() {
            *lost = Some(Instant::now());
            (self.observer)(LinkEvent::Lost {
                reason: format!("{}: {reason}", which.as_str()),
            });
        }
    }

    /// The link could not be made at start-up; said once, and the wait counted from here, so
    /// the [`LinkEvent::Back`] that follows says how long the replica ran without it.
    pub fn unreachable(&self, addr: &str, reason: &str) {
        let mut lost = self
            .lost_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if lost.is_none() && !self.is_ready() {
            *lost = Some(Instant::now());
            (self.observer)(LinkEvent::Unreachable {
                addr: addr.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    fn settle(&self) {
        let mut lost = self
            .lost_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_ready()
            && let Some(since) = lost.take()
        {
            (self.observer)(LinkEvent::Back {
                after: since.elapsed(),
            });
        }
    }
}

/// Pings on the pub/sub connection until a pong is late or the ping fails; resolves with why.
/// The caller polls this alongside its own work and drops it with the connection.
pub async fn watch_subscriber(mut sink: PubSubSink) -> String {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(PING_DEADLINE, sink.ping::<Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return format!("ping failed: {err}"),
            Err(_) => return format!("no pong within {PING_DEADLINE:?}"),
        }
    }
}

/// Pings through the command connection until `stop`, reporting each change to `health`.
pub async fn watch_commands(link: CommandLink, health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let ping = tokio::select! {
            ping = link.ping(PING_DEADLINE) => ping,
            () = stop.cancelled() => return,
        };
        match ping {
            Ok(()) => health.up(Connection::Commands),
            Err(err) => {
                tracing::debug!(%err, "redis command ping failed");
                health.down(Connection::Commands, &err.to_string());
            }
        }
    }
}

/// The command connection: a [`ConnectionManager`] (multiplexed, reconnects when the socket
/// closes) that is replaced whole whenever a reply may belong to another request. Clones share
/// it; used wherever redis-rs takes a connection (`AsyncCommands`, scripts, pipelines).
#[derive(Clone)]
pub struct CommandLink {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection in use and its generation, so of two requests that failed on the same
    /// connection only the first replaces it.
    current: Mutex<(u64, ConnectionManager)>,
    /// Tokens for the trailing `ECHO`: unique per link, so no other reply can match.
    tokens: AtomicU64,
    /// Longest wait for a reply, past which the connection is given up.
    deadline: Duration,
}

impl std::fmt::Debug for CommandLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandLink")
            .field("generation", &self.generation())
            .finish()
    }
}

fn out_of_step(detail: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "redis replies out of step",
        detail.to_owned(),
    ))
}

fn timed_out(deadline: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from redis within {deadline:?}"),
    ))
}

impl CommandLink {
    /// Connects lazily: the first request (or ping) makes the connection.
    pub fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
        deadline: Duration,
    ) -> RedisResult<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new((0, conn)),
                tokens: AtomicU64::new(0),
                deadline,
            }),
        })
    }

    /// How many times the connection has been replaced.
    pub fn generation(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (current.0, current.1.clone())
    }

    /// Drops connection `generation` (if still current) for a fresh one. The old socket closes
    /// once the requests still waiting on it have given up.
    fn replace(&self, generation: u64, why: &RedisError) {
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            self.shared.config.clone(),
        ) {
            Ok(fresh) => {
                *current = (generation + 1, fresh);
                tracing::debug!(%why, generation = generation + 1, "redis command connection replaced");
            }
            Err(err) => tracing::warn!(%err, "redis command connection not replaced"),
        }
    }

    pub async fn ping(&self, deadline: Duration) -> RedisResult<()> {
        let value = self.send(redis::pipe().cmd("PING"), 0, 1, deadline).await?;
        match value.as_slice() {
            [Value::SimpleString(pong)] if pong == "PONG" => Ok(()),
            other => Err(out_of_step(&format!("PING answered with {other:?}"))),
        }
    }

    /// Sends `pipeline` followed by `ECHO <token>` and returns the replies the caller asked for
    /// (`count` after `offset`) once the echo proves they are theirs.
    async fn send(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
        deadline: Duration,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut conn) = self.current();
        let token = format!(
            "stickyws:{generation}:{}",
            self.shared.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let mut checked = pipeline.clone();
        checked.cmd("ECHO").arg(&token);
        let result = tokio::time::timeout(
            deadline,
            conn.req_packed_commands(&checked, offset, count + 1),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out(deadline)));
        let result = result.and_then(|mut values| match values.pop() {
            Some(Value::BulkString(echo)) if echo == token.as_bytes() && values.len() == count => {
                Ok(values)
            }
            last => Err(out_of_step(&format!(
                "expected the echo of {token}, got {last:?} after {} replies",
                values.len()
            ))),
        });
        // Server errors are values here (`Value::ServerError`), so any error is about the
        // connection itself: whatever it answers next may be meant for someone else.
        if let Err(err) = &result {
            self.replace(generation, err);
        }
        result
    }
}

impl ConnectionLike for CommandLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut pipeline = redis::pipe();
            pipeline.add_command(cmd.clone());
            let mut values = self.send(&pipeline, 0, 1, self.shared.deadline).await?;
            values
                .pop()
                .ok_or_else(|| out_of_step("no reply to a command"))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if pipeline.is_transaction() {
                // MULTI/EXEC would swallow the ECHO into the transaction; nothing here sends one,
                // and refusing is safer than an unchecked reply.
                return Err(RedisError::from((
                    ErrorKind::Client,
                    "transactions are not sent on the checked command connection",
                )));
            }
            self.send(pipeline, offset, count, self.shared.deadline)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collecting() -> (Health, Arc<Mutex<Vec<LinkEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let health = Health::new(Arc::new(move |event| sink.lock().unwrap().push(event)));
        (health, seen)
    }

    fn subscribed(reconnect: bool) -> LinkEvent {
        LinkEvent::Subscribed {
            channels: 1,
            reconnect,
        }
    }

    #[test]
    fn ready_only_while_both_connections_answer_and_each_outage_is_said_once() {
        let (health, seen) = collecting();
        health.subscribed(subscribed(false));
        assert!(!health.is_ready(), "commands not proven yet");
        health.up(Connection::Commands);
        assert!(health.is_ready());
        assert_eq!(seen.lock().unwrap().len(), 1, "start-up is not a loss");

        // Commands fail first, then the subscriber: one loss, naming the first.
        health.down(Connection::Commands, "no answer");
        health.down(Connection::Subscriber, "no pong");
        health.down(Connection::Commands, "no answer");
        assert!(!health.is_ready());
        // Commands back alone: still not ready, nothing said.
        health.up(Connection::Commands);
        assert!(!health.is_ready());
        health.subscribed(subscribed(true));
        assert!(health.is_ready());
        let seen = seen.lock().unwrap();
        assert!(
            matches!(&seen[1], LinkEvent::Lost { reason } if reason == "commands: no answer"),
            "{seen:?}"
        );
        assert_eq!(seen[2], subscribed(true));
        assert!(matches!(seen[3], LinkEvent::Back { .. }), "{seen:?}");
        assert_eq!(seen.len(), 4, "{seen:?}");
    }
}

/// Against a real `redis-server` frozen with SIGSTOP: each connection's watcher on its own.
#[cfg(test)]
mod frozen {
    use std::time::Instant;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::*;
    use crate::broker::redis::RedisBroker;
    use crate::broker::suite::{self, Collected};
    use crate::broker::{Driver, Target};
    use crate::ops::redis_server::RedisServer;
    use crate::token::ClientId;

    const DETECT_WITHIN: Duration = Duration::from_millis(3500);

    async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < limit, "{what} not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_redis_is_noticed_on_both_connections_within_3s_and_left_behind_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let server = RedisServer::start(dir.path(), &[]).unwrap_or_else(|err| panic!("{err}"));
        let pid = Pid::from_raw(server.pid().unwrap() as i32);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let observer: LinkObserver = Arc::new(move |event| sink.lock().unwrap().push(event));
        let seen = Collected::default();
        let broker =
            RedisBroker::start(&server.url(), "r", seen.inbox(), observer, suite::window())
                .unwrap();
        until("ready", Duration::from_secs(5), || broker.is_ready()).await;
        let client = ClientId::parse("frozen").unwrap();
        broker.hold(&Target::Client(client.clone())).await.unwrap();
        let health = broker.health();
        let generation = broker.connection().generation();

        kill(pid, Signal::SIGSTOP).unwrap();
        let frozen = Instant::now();
        let mut noticed = [None, None];
        while noticed.contains(&None) {
            for (at, which) in [Connection::Subscriber, Connection::Commands]
                .into_iter()
                .enumerate()
            {
                if noticed[at].is_none() && !health.is_up(which) {
                    noticed[at] = Some(frozen.elapsed());
                }
            }
            assert!(
                frozen.elapsed() < DETECT_WITHIN,
                "[subscriber, commands] noticed after {noticed:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!broker.is_ready());
        assert!(
            broker.connection().generation() > generation,
            "the timed-out command connection was replaced, not reused"
        );

        kill(pid, Signal::SIGCONT).unwrap();
        let back = until("ready again", Duration::from_secs(15), || broker.is_ready()).await;
        eprintln!(
            "frozen redis: [subscriber, commands] noticed after {noticed:?}; ready {back:?} after SIGCONT"
        );
        let published = broker
            .publish(&Target::Client(client), b"after".to_vec())
            .await
            .unwrap();
        assert_eq!(published.receivers, 1, "resubscribed");
        assert_eq!(seen.payloads(1).await, vec![b"after".to_vec()]);
        let events = events.lock().unwrap();
        let lost = events
            .iter()
            .filter(|e| matches!(e, LinkEvent::Lost { .. }))
            .count();
        let back = events
            .iter()
            .filter(|e| matches!(e, LinkEvent::Back { .. }))
            .count();
        assert_eq!((lost, back), (1, 1), "{events:?}");
    }
}
