//! The Redis Cluster broker (`REDIS_CLUSTER_NODES`): the same promises as [`super::redis`] on
//! a cluster, with sharded pub/sub, so a message costs work only on the replicas holding a
//! recipient and only on the shard that owns its target.
//!
//! Each target's channel, history, epoch and idempotency records share a hash tag
//! ([`super::cluster_keys`]), so the single-Redis driver's publish script runs unchanged but for
//! `SPUBLISH` in place of `PUBLISH`: history and delivery stay one atomic step, on the target's
//! shard, and `SPUBLISH`'s reply counts the replicas subscribed there (each replica subscribes
//! with one connection per shard). Channel presence is [`super::redis_members`]'s task with the
//! cluster's naming.
//!
//! One redis-rs cluster connection (RESP3) carries commands and subscriptions: it routes each
//! command to the shard owning its key, follows `MOVED`/`ASK`, refreshes the slot map, and
//! resubscribes what it tracks after a lost node or a slot-map change. Its pushes reach the
//! subscriber task here. A lost node connection (`Disconnection` push) or a subscription Redis
//! dropped by itself (`sunsubscribe` for a held channel, as when a slot moves) makes this
//! replica not-ready until the task has `SSUBSCRIBE`d everything it holds again, confirmed by
//! the shards that own it now; then [`LinkEvent::Subscribed`] `{ reconnect: true }` tells the
//! replica to fill the gap from history ([`crate::gap_fill`]). Readiness is that, and every
//! master answering a `PING` within [`link::PING_DEADLINE`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{AsyncCommands, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::cluster_keys::{self, KeyScheme, REPLICA_KEY_PREFIX, REPLICAS_KEY};
use super::link::{self, Connection, Health, LinkEvent, LinkObserver};
use super::members::{Change, Member};
use super::redis::{
    CONNECT_TIMEOUT, HISTORY_SCRIPT, HistoryAnswer, MAX_BATCH, NEWEST_SCRIPT, PRESENCE_TTL,
    PUBLISH_ONCE_SCRIPT, PUBLISH_SCRIPT, RESPONSE_TIMEOUT, history_of, now_ms, publish_failed,
    published_at, split_payload, unavailable,
};
use super::redis_conn::RedisConn;
use super::redis_members;
use super::{
    Announcement, BrokerError, ClientId, Driver, History, IdempotencyKey, Inbox, Published,
    Subscribed, Window,
};
use crate::backoff::Backoff;
use crate::channel::ChannelName;
use crate::cursor::{Epoch, Position};
use crate::target::Target;

const SCHEME: KeyScheme = KeyScheme::Cluster;

/// Why `REDIS_CLUSTER_NODES` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("REDIS_CLUSTER_NODES must be host:port seed nodes separated by commas, got {0:?}")]
pub struct BadSeeds(pub String);

/// Most seed nodes taken from `REDIS_CLUSTER_NODES`.
pub const MAX_SEEDS: usize = 64;

/// `host:port,host:port,…` as connection URLs (RESP3, which sharded pub/sub here needs).
pub fn parse_seeds(raw: &str) -> Result<Vec<String>, BadSeeds> {
    let bad = || BadSeeds(raw.to_owned());
    let seeds: Vec<&str> = raw.split(',').map(str::trim).collect();
    if seeds.is_empty() || seeds.len() > MAX_SEEDS {
        return Err(bad());
    }
    seeds
        .into_iter()
        .map(|seed| {
            let (host, port) = seed.rsplit_once(':').ok_or_else(bad)?;
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            match port.parse::<u16>() {
                Ok(port) if host_ok && port > 0 => {
                    Ok(format!("redis://{host}:{port}/?protocol=resp3"))
                }
                _ => Err(bad()),
            }
        })
        .collect()
}

/// What the subscriber task is asked to do, in the order the registry decided it.
enum Command {
    Hold(Target, oneshot::Sender<Result<(), BrokerError>>),
    Release(Target),
}

/// Handle on the Redis Cluster broker; clones share the connection and the subscriber task.
#[derive(Clone)]
pub struct RedisClusterBroker {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    /// Presence changes, in the order the registry made them, for the members task.
    members: mpsc::UnboundedSender<(ChannelName, ClientId, Change)>,
    health: Arc<Health>,
    conn: ClusterConnection,
    window: Window,
    publish_script: redis::Script,
    publish_once_script: redis::Script,
    history_script: redis::Script,
    newest_script: redis::Script,
    /// Ends the subscriber and watcher tasks when the last handle goes.
    _stop: DropGuard,
}

impl fmt::Debug for RedisClusterBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterBroker")
            .field("health", &self.inner.health)
            .finish()
    }
}

impl RedisClusterBroker {
    /// Starts the subscriber task and returns at once; the connection is made in the
    /// background, so a cluster that is down at start-up is an outage like any other.
    pub fn start(
        seeds: &[String],
        replica: &str,
        inbox: Inbox,
        observer: LinkObserver,
        window: Window,
    ) -> Result<Self, BrokerError> {
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let client = ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(ProtocolVersion::RESP3)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(unavailable)?;
        let config = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_push_sender(push_tx);
        let conn = client.get_pending_async_connection_with_config(config);
        let (commands, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::new(observer));
        let stop = CancellationToken::new();
        let task = Subscriber {
            conn: conn.clone(),
            commands: rx,
            pushes,
            inbox,
            health: health.clone(),
            held: HashSet::new(),
            recovering: None,
        };
        tokio::spawn(task.run(stop.clone()));
        tokio::spawn(watch_masters(conn.clone(), health.clone(), stop.clone()));
        let members = redis_members::start(
            RedisConn::Cluster(conn.clone()),
            SCHEME,
            replica,
            stop.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                commands,
                members,
                health,
                conn,
                window,
                publish_script: SCHEME.script(PUBLISH_SCRIPT),
                publish_once_script: SCHEME.script(PUBLISH_ONCE_SCRIPT),
                history_script: redis::Script::new(HISTORY_SCRIPT),
                newest_script: redis::Script::new(NEWEST_SCRIPT),
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The cluster connection, for other users of the same cluster (the state lab's shared
    /// state, each of whose commands touches one key).
    /// See [`super::Broker::link_detail`].
    pub fn link_detail(&self) -> String {
        self.inner.health.detail()
    }

    /// See [`super::Broker::subscriber_down`].
    pub fn subscriber_down(&self) -> bool {
        !self.inner.health.is_up(Connection::Subscriber)
    }

    pub fn connection(&self) -> ClusterConnection {
        self.inner.conn.clone()
    }
}

/// Bounds a request: the cluster connection's own response timeout covers one try, not its
/// retries and slot refreshes.
async fn bounded<T>(request: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(RESPONSE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the redis cluster within {RESPONSE_TIMEOUT:?}"),
            )))
        })
}

/// Where a target lives on the cluster: its slot and the master serving that slot now, as the
/// cluster's slot map says (`None` when no node answered within the response timeout).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    pub slot: u16,
    pub master: Option<String>,
}

impl RedisClusterBroker {
    /// The shard of each of `targets`: slots computed here, masters from one `CLUSTER SLOTS`.
    pub async fn shards(&self, targets: &[Target]) -> Vec<Shard> {
        let mut conn = self.connection();
        let ranges: Vec<(u16, u16, String)> = match bounded(
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(answer) => slot_ranges(&answer),
            Err(err) => {
                tracing::debug!(%err, "CLUSTER SLOTS for the shard view failed");
                Vec::new()
            }
        };
        targets
            .iter()
            .map(|target| {
                let slot = cluster_keys::slot(&cluster_keys::pubsub_channel(target));
                let master = ranges
                    .iter()
                    .find(|(start, end, _)| (*start..=*end).contains(&slot))
                    .map(|(_, _, master)| master.clone());
                Shard { slot, master }
            })
            .collect()
    }
}

/// `CLUSTER SLOTS`' answer as (start, end, "host:port" of the master); entries it cannot read
/// are skipped.
fn slot_ranges(answer: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(entries) = answer else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let number = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = number(master.get(1)?)?;
            Some((
                number(parts.first()?)?,
                number(parts.get(1)?)?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

/// Most targets of one batch published at once.
const BATCH_TARGETS_AT_ONCE: usize = 64;

impl Driver for RedisClusterBroker {
    /// A batch spans slots, so it cannot be one pipeline: the messages of different targets go
    /// at once (the cluster connection sends each to its shard, so a shard gets its part of the
    /// batch together), those of one target one after another, so its history keeps their order.
    async fn publish_many(
        &self,
        batch: Vec<super::Publication>,
    ) -> Vec<Result<Published, BrokerError>> {
        use futures_util::StreamExt;
        let count = batch.len();
        let mut by_target: std::collections::HashMap<Target, Vec<(usize, super::Publication)>> =
            std::collections::HashMap::new();
        for (i, message) in batch.into_iter().enumerate() {
            by_target
                .entry(message.target.clone())
                .or_default()
                .push((i, message));
        }
        let runs = by_target.into_values().map(|messages| async move {
            let mut outcomes = Vec::with_capacity(messages.len());
            for (i, message) in messages {
                let outcome = self
                    .publish_once(&message.target, message.payload, message.key.as_ref())
                    .await;
                outcomes.push((i, outcome));
            }
            outcomes
        });
        let mut results: Vec<Option<Result<Published, BrokerError>>> =
            std::iter::repeat_with(|| None).take(count).collect();
        let mut done = futures_util::stream::iter(runs).buffer_unordered(BATCH_TARGETS_AT_ONCE);
        while let Some(outcomes) = done.next().await {
            for (i, outcome) in outcomes {
                results[i] = Some(outcome);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::Unavailable("not sent".to_owned()))))
            .collect()
    }

    async fn publish_once(
        &self,
        target: &Target,
        payload: Vec<u8>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        let keys = cluster_keys::keys(target);
        let record = key.map(|key| cluster_keys::idempotency_record(target, key));
        let mut conn = self.inner.conn.clone();
        let window = &self.inner.window;
        let ttl = window.ttl.as_millis().max(1) as u64;
        // SPUBLISH answers with the subscribers on the target's shard: with one connection per
        // shard per replica, the number of receiving replicas.
        if !window.enabled() {
            let (receivers, repeated) = match &record {
                None => (
                    bounded(
                        redis::cmd("SPUBLISH")
                            .arg(&keys.channel)
                            .arg(payload)
                            .query_async(&mut conn),
                    )
                    .await
                    .map_err(publish_failed)?,
                    0u8,
                ),
                Some(record) => bounded(
                    self.inner
                        .publish_once_script
                        .key(&keys.channel)
                        .key(record)
                        .arg(payload)
                        .arg(ttl)
                        .invoke_async(&mut conn),
                )
                .await
                .map_err(publish_failed)?,
            };
            return Ok(Published {
                receivers,
                position: None,
                repeated: repeated == 1,
            });
        }
        let mut invocation = self.inner.publish_script.key(keys.stream);
        invocation.key(keys.channel).key(keys.epoch);
        if let Some(record) = &record {
            invocation.key(record);
        }
        let (epoch, id, receivers, repeated): (String, String, u64, u8) = bounded(
            invocation
                .arg(payload)
                .arg(window.cap(target))
                .arg(ttl)
                .arg(Epoch::fresh().to_string())
                .invoke_async(&mut conn),
        )
        .await
        .map_err(publish_failed)?;
        Ok(Published {
            receivers,
            position: Some(published_at(&epoch, &id)?),
            repeated: repeated == 1,
        })
    }

    async fn history(&self, target: &Target, after: Position) -> Result<History, BrokerError> {
        let keys = cluster_keys::keys(target);
        let mut conn = self.inner.conn.clone();
        let epoch = if after.epoch.is_known() {
            after.epoch.to_string()
        } else {
            String::new()
        };
        let answer: HistoryAnswer = bounded(
            self.inner
                .history_script
                .key(keys.stream)
                .key(keys.epoch)
                .arg(after.id.to_string())
                .arg(self.inner.window.cap(target).max(1))
                .arg(epoch)
                .arg(self.inner.window.read_bytes.min(i64::MAX as usize))
                .invoke_async(&mut conn),
        )
        .await
        .map_err(unavailable)?;
        Ok(history_of(after, answer))
    }

    async fn newest(&self, targets: &[Target]) -> Result<Vec<Position>, BrokerError> {
        if !self.inner.window.enabled() {
            return Ok(vec![Position::START; targets.len()]);
        }
        let ttl = self.inner.window.ttl.as_millis() as u64;
        // Each target's history is in its own slot: one invocation each, all in flight at once.
        let reads = targets.iter().map(|target| {
            let keys = cluster_keys::keys(target);
            let mut conn = self.inner.conn.clone();
            let script = &self.inner.newest_script;
            async move {
                let (epoch, id): (String, String) = bounded(
                    script
                        .key(keys.stream)
                        .key(keys.epoch)
                        .arg(Epoch::fresh().to_string())
                        .arg(ttl)
                        .invoke_async(&mut conn),
                )
                .await
                .map_err(unavailable)?;
                Ok::<_, BrokerError>(Position::new(
                    epoch.parse().unwrap_or_default(),
                    id.parse().unwrap_or_default(),
                ))
            }
        });
        join_all(reads).await.into_iter().collect()
    }

    fn hold(&self, target: &Target) -> Subscribed {
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.commands.send(Command::Hold(target.clone(), tx));
        Box::pin(async move {
            sent.map_err(|_| unavailable("broker stopped"))?;
            rx.await.map_err(|_| unavailable("broker stopped"))?
        })
    }

    fn release(&self, target: &Target) {
        // A stopped subscriber task holds nothing, so there is nothing to release.
        let _ = self.inner.commands.send(Command::Release(target.clone()));
    }

    fn join(&self, channel: &ChannelName, client: &ClientId) {
        let _ = self
            .inner
            .members
            .send((channel.clone(), client.clone(), Change::Join));
    }

    fn leave(&self, channel: &ChannelName, client: &ClientId) {
        let _ = self
            .inner
            .members
            .send((channel.clone(), client.clone(), Change::Leave));
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<Member>, BrokerError> {
        bounded(redis_members::list(
            RedisConn::Cluster(self.inner.conn.clone()),
            SCHEME,
            channel,
        ))
        .await
        .map_err(unavailable)
    }

    fn is_ready(&self) -> bool {
        self.inner.health.is_ready()
    }

    async fn announce(&self, announcement: &Announcement) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut conn = self.inner.conn.clone();
        // All in the `{replicas}` slot: one pipeline, one shard.
        bounded(
            redis::pipe()
                .set_options(
                    format!("{REPLICA_KEY_PREFIX}{}", announcement.replica),
                    &announcement.body,
                    redis::SetOptions::default()
                        .with_expiration(redis::SetExpiry::PX(PRESENCE_TTL.as_millis() as u64)),
                )
                .ignore()
                .zadd(REPLICAS_KEY, &announcement.replica, now)
                .ignore()
                .zrembyscore(
                    REPLICAS_KEY,
                    0,
                    now.saturating_sub(PRESENCE_TTL.as_millis() as u64),
                )
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
        .map_err(unavailable)
    }

    async fn replicas(&self) -> Result<Vec<Announcement>, BrokerError> {
        let mut conn = self.inner.conn.clone();
        let since = now_ms().saturating_sub(PRESENCE_TTL.as_millis() as u64);
        let ids: Vec<String> = bounded(conn.zrangebyscore(REPLICAS_KEY, since, "+inf"))
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{REPLICA_KEY_PREFIX}{id}"))
            .collect();
        let values: Vec<Option<String>> = bounded(conn.mget(keys)).await.map_err(unavailable)?;
        let mut listed: Vec<Announcement> = ids
            .into_iter()
            .zip(values)
            .filter_map(|(replica, body)| {
                Some(Announcement {
                    replica,
                    body: body?,
                })
            })
            .collect();
        listed.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(listed)
    }
}

/// Pings every master through the cluster connection on a timer until `stop`: the command side
/// of readiness. A master that is gone fails the ping until the cluster has promoted its
/// replica and the connection has learnt the new slot map.
async fn watch_masters(conn: ClusterConnection, health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(link::PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let routing = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::AllSucceeded),
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut pinging = conn.clone();
        let ping = pinging.route_command(redis::cmd("PING"), routing.clone());
        let answer = tokio::select! {
            answer = tokio::time::timeout(link::PING_DEADLINE, ping) => answer,
            () = stop.cancelled() => return,
        };
        match answer {
            Ok(Ok(_)) => health.up(Connection::Commands),
            Ok(Err(err)) => health.down(Connection::Commands, &format!("ping failed: {err}")),
            Err(_) => health.down(
                Connection::Commands,
                &format!("no pong from every master within {:?}", link::PING_DEADLINE),
            ),
        }
    }
}

/// The task that owns this replica's subscriptions on the cluster.
struct Subscriber {
    conn: ClusterConnection,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Every push of the cluster connection: messages, confirmations, lost nodes.
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    inbox: Inbox,
    health: Arc<Health>,
    /// Every client and channel this replica holds a socket of: what to subscribe again.
    held: HashSet<Target>,
    /// Messages that came while the subscriptions were being made again after a loss, kept
    /// until the replica has been told to fill the gap (the shards that still work deliver
    /// meanwhile, and so may a restored one before every subscription is confirmed): handed
    /// over earlier, a message newer than the gap would move the target's position past it
    /// and the fill would skip what the gap holds.
    recovering: Option<Buffered>,
}

/// Messages kept while recovering, within [`MAX_BUFFERED_BYTES`]: beyond it they are dropped,
/// which costs nothing where history is kept (the fill reads everything after the position
/// last delivered, these included).
#[derive(Default)]
struct Buffered {
    messages: Vec<(Target, Option<Position>, Vec<u8>)>,
    bytes: usize,
    dropped: usize,
}

/// Most bytes of messages kept while the subscriptions are being made again.
const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

/// Why the subscribed loop ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Subscriber {
    async fn run(mut self, stop: CancellationToken) {
        // Short: after a failover the promoted master serves within a second or two, and every
        // attempt until then costs one probe per held target.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut subscribed_before = false;
        loop {
            let attempt = tokio::select! {
                attempt = self.subscribe_all() => attempt,
                () = stop.cancelled() => return,
            };
            if let Err(reason) = attempt {
                let delay = backoff.next_delay();
                tracing::debug!(%reason, ?delay, "redis cluster subscribe failed");
                if !self.wait_answering(delay, &stop).await {
                    return;
                }
                continue;
            }
            backoff.reset();
            self.health.subscribed(LinkEvent::Subscribed {
                channels: self.held.len() + 1,
                reconnect: subscribed_before,
            });
            subscribed_before = true;
            // The fill has begun: what came meanwhile is held behind it (and dropped where
            // the fill already delivered it).
            if let Some(buffered) = self.recovering.take() {
                if buffered.dropped > 0 {
                    tracing::info!(
                        dropped = buffered.dropped,
                        "messages beyond the recovery buffer left to the gap fill"
                    );
                }
                for (target, id, payload) in buffered.messages {
                    (self.inbox)(&target, id, &payload);
                }
            }
            match self.serve(&stop).await {
                Ended::Stopped => return,
                Ended::Lost(reason) => {
                    self.recovering = Some(Buffered::default());
                    self.health.down(Connection::Subscriber, &reason);
                }
            }
        }
    }

    /// `SSUBSCRIBE`s the broadcast channel and every held target, each confirmed by the shard
    /// that owns it now. A channel this connection already has is confirmed again at no cost.
    async fn subscribe_all(&mut self) -> Result<(), String> {
        let mut targets = vec![Target::Broadcast];
        targets.extend(self.held.iter().cloned());
        for chunk in targets.chunks(MAX_BATCH) {
            self.owners_answer(chunk).await?;
            let channels: Vec<String> = chunk.iter().map(cluster_keys::pubsub_channel).collect();
            self.ssubscribe(&channels, true).await?;
        }
        Ok(())
    }

    /// Succeeds once the master owning each target's slot answers. While a master is away the
    /// connection places subscriptions on its replica, which hears the shard's messages, but
    /// the history the gap fill must read is only served by a master: until the replica is
    /// promoted (or the master back) the loss is not over. A read of the target's stream key
    /// goes to the slot's master, following `MOVED` and refreshing the slot map as needed.
    async fn owners_answer(&self, targets: &[Target]) -> Result<(), String> {
        let probes = targets.iter().map(|target| {
            let mut conn = self.conn.clone();
            let stream = cluster_keys::keys(target).stream;
            async move { conn.exists::<_, bool>(stream).await }
        });
        match tokio::time::timeout(RESPONSE_TIMEOUT, join_all(probes)).await {
            Ok(results) => match results.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(err) => Err(format!("a shard has no master answering: {err}")),
            },
            Err(_) => Err("a shard's master did not answer in time".to_owned()),
        }
    }

    /// (Un)subscribes `channels`, one command each (each is in its own slot), all in flight
    /// at once, within one response timeout.
    async fn ssubscribe(&self, channels: &[String], subscribe: bool) -> Result<(), String> {
        let requests = channels.iter().map(|channel| {
            let mut conn = self.conn.clone();
            async move {
                if subscribe {
                    conn.ssubscribe(channel).await
                } else {
                    conn.sunsubscribe(channel).await
                }
            }
        });
        match tokio::time::timeout(RESPONSE_TIMEOUT, join_all(requests)).await {
            Ok(results) => match results.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(err) => Err(err.to_string()),
            },
            Err(_) if subscribe => Err("ssubscribe timed out".to_owned()),
            Err(_) => Err("sunsubscribe timed out".to_owned()),
        }
    }

    /// Subscribed: apply the registry's holds and releases, hand every message to the inbox,
    /// and end on anything that means a subscription may be gone.
    async fn serve(&mut self, stop: &CancellationToken) -> Ended {
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Stopped };
                    let mut batch = vec![command];
                    while batch.len() < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(reason) = self.apply(batch).await {
                        return Ended::Lost(reason);
                    }
                }
                push = self.pushes.recv() => {
                    let Some(push) = push else { return Ended::Stopped };
                    if let Some(reason) = self.on_push(push) {
                        return Ended::Lost(reason);
                    }
                }
                () = stop.cancelled() => return Ended::Stopped,
            }
        }
    }

    /// Delivers a message; returns why the subscriptions must be made again, if they must.
    fn on_push(&mut self, push: PushInfo) -> Option<String> {
        let channel = |data: &[Value]| match data.first() {
            Some(Value::BulkString(name)) => std::str::from_utf8(name).ok().map(str::to_owned),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                let target = channel(&push.data).and_then(|c| cluster_keys::target_of(&c))?;
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return None;
                };
                let (id, payload) = split_payload(payload);
                match &mut self.recovering {
                    None => (self.inbox)(&target, id, payload),
                    Some(kept) if kept.bytes + payload.len() <= MAX_BUFFERED_BYTES => {
                        kept.bytes += payload.len();
                        kept.messages.push((target, id, payload.to_vec()));
                    }
                    Some(kept) => kept.dropped += 1,
                }
                None
            }
            PushKind::Disconnection => Some("a cluster node connection was lost".to_owned()),
            // Redis drops a shard channel's subscribers when its slot moves away; ours are
            // removed from `held` before their own SUNSUBSCRIBE is sent.
            PushKind::SUnsubscribe => {
                let target = channel(&push.data).and_then(|c| cluster_keys::target_of(&c))?;
                let ours = target == Target::Broadcast || self.held.contains(&target);
                ours.then(|| format!("{} was unsubscribed by the cluster", target_name(&target)))
            }
            _ => None,
        }
    }

    /// Applies `commands` in order, each run of holds as one round of `SSUBSCRIBE`s and each
    /// run of releases as one of `SUNSUBSCRIBE`s. On a failure the rest are only noted, and the
    /// caller subscribes everything held again.
    async fn apply(&mut self, commands: Vec<Command>) -> Result<(), String> {
        let mut commands = commands.into_iter().peekable();
        while let Some(first) = commands.next() {
            let hold = matches!(first, Command::Hold(..));
            let mut run = vec![first];
            while let Some(next) = commands.next_if(|c| matches!(c, Command::Hold(..)) == hold) {
                run.push(next);
            }
            let mut channels = Vec::with_capacity(run.len());
            let mut waiting = Vec::new();
            for command in run {
                match command {
                    Command::Hold(target, done) => {
                        channels.push(cluster_keys::pubsub_channel(&target));
                        self.held.insert(target);
                        waiting.push(done);
                    }
                    Command::Release(target) => {
                        channels.push(cluster_keys::pubsub_channel(&target));
                        self.held.remove(&target);
                    }
                }
            }
            let result = self.ssubscribe(&channels, hold).await;
            for done in waiting {
                let _ = done.send(result.clone().map_err(unavailable));
            }
            if let Err(reason) = result {
                for command in commands {
                    self.note_disconnected(command);
                }
                return Err(reason);
            }
        }
        Ok(())
    }

    /// What a command means while the subscriptions are being made again: the held set is
    /// kept current, and a hold is answered at once.
    fn note_disconnected(&mut self, command: Command) {
        match command {
            Command::Hold(target, done) => {
                self.held.insert(target);
                let _ = done.send(Err(unavailable("redis cluster is not subscribed")));
            }
            Command::Release(target) => {
                self.held.remove(&target);
            }
        }
    }

    /// Between attempts: keep the held set current, answer holds, and keep delivering what
    /// the shards that still work send. Returns false when the broker is stopping.
    async fn wait_answering(&mut self, delay: Duration, stop: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = stop.cancelled() => return false,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(command) => self.note_disconnected(command),
                },
                push = self.pushes.recv() => match push {
                    None => return false,
                    Some(push) => { let _ = self.on_push(push); }
                },
            }
        }
    }
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Client(client) => format!("client {client}"),
        Target::Channel(channel) => format!("channel {channel}"),
        Target::Broadcast => "broadcast".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! The driver suite against a real local Redis Cluster (six `redis-server` nodes started by
    //! [`crate::ops::redis_cluster`]); where `redis-server` or `redis-cli` is missing these
    //! tests fail saying which package to install.
    use super::super::Broker;
    use super::super::suite::{self, Collected};
    use super::*;
    use crate::ops::redis_cluster::RedisCluster;

    struct Cluster {
        nodes: RedisCluster,
        _dir: tempfile::TempDir,
    }

    fn start_cluster() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes = RedisCluster::start(dir.path()).unwrap_or_else(|err| panic!("{err}"));
        Cluster { nodes, _dir: dir }
    }

    async fn pair(cluster: &Cluster) -> (Broker, Broker, Collected, Collected) {
        let seeds = parse_seeds(&cluster.nodes.seeds()).unwrap();
        let (seen_a, seen_b) = (Collected::default(), Collected::default());
        let observer: LinkObserver = Arc::new(|_| {});
        let a = RedisClusterBroker::start(
            &seeds,
            "ra",
            seen_a.inbox(),
            observer.clone(),
            suite::window(),
        )
        .unwrap();
        let b = RedisClusterBroker::start(&seeds, "rb", seen_b.inbox(), observer, suite::window())
            .unwrap();
        for _ in 0..500 {
            if a.is_ready() && b.is_ready() {
                return (
                    Broker::RedisCluster(a),
                    Broker::RedisCluster(b),
                    seen_a,
                    seen_b,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "brokers did not become ready\n{}",
            cluster.nodes.log_tails()
        );
    }

    #[tokio::test]
    async fn targeted_publish_reaches_only_holders() {
        let cluster = start_cluster();
        let (a, b, seen_a, seen_b) = pair(&cluster).await;
        suite::targeted_publish_reaches_only_holders(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn broadcast_reaches_every_replica() {
        let cluster = start_cluster();
        let (a, b, seen_a, seen_b) = pair(&cluster).await;
        suite::broadcast_reaches_every_replica(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn history_returns_what_came_after_a_position() {
        let cluster = start_cluster();
        let (a, _, _, _) = pair(&cluster).await;
        suite::history_returns_what_came_after_a_position(&a).await;
    }

    #[tokio::test]
    async fn channel_messages_and_presence_reach_only_subscribers() {
        let cluster = start_cluster();
        let (a, b, seen_a, seen_b) = pair(&cluster).await;
        suite::channel_messages_and_presence_reach_only_subscribers(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn a_key_publishes_once_per_target() {
        let cluster = start_cluster();
        let (a, b, seen_a, _) = pair(&cluster).await;
        suite::a_key_publishes_once_per_target(&a, &b, &seen_a).await;
    }

    #[tokio::test]
    async fn a_batch_publishes_each_message_as_a_single_publish_would() {
        let cluster = start_cluster();
        let (a, b, seen_a, seen_b) = pair(&cluster).await;
        suite::a_batch_publishes_each_message_as_a_single_publish_would(&a, &b, &seen_a, &seen_b)
            .await;
    }

    #[tokio::test]
    async fn announced_replicas_are_listed_and_the_lab_shares_the_cluster() {
        let cluster = start_cluster();
        let (a, b, _, _) = pair(&cluster).await;
        assert_eq!(a.kind(), "redis-cluster");
        suite::announced_replicas_are_listed(&a, &b).await;
        let conn = a
            .redis_connection()
            .expect("the state lab shares the cluster");
        let store = crate::lab::shared::SharedStore::redis(conn, Duration::from_secs(60), 3);
        let client = ClientId::parse("lab-client").unwrap();
        assert!(!store.add(&client, "n1").await.unwrap().hit);
        assert!(store.add(&client, "n2").await.unwrap().hit);
        assert_eq!(store.count_visit().await.unwrap(), 1);
        assert_eq!(store.visits().await.unwrap(), 1);
        assert_eq!(store.get(&client).await.unwrap().notes.len(), 2);
    }

    #[test]
    fn seeds_are_host_port_pairs() {
        assert_eq!(
            parse_seeds("127.0.0.1:7000, redis-1:7001").unwrap(),
            [
                "redis://127.0.0.1:7000/?protocol=resp3",
                "redis://redis-1:7001/?protocol=resp3"
            ]
        );
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "redis://127.0.0.1:7000",
            "a b:1",
            "127.0.0.1:7000,",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad:?}");
        }
        let many = vec!["h:1"; MAX_SEEDS + 1].join(",");
        assert!(parse_seeds(&many).is_err());
    }
}
