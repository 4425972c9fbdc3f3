//! The Redis broker: a pub/sub channel per client and per channel, subscribed only by the
//! replicas that hold one of its sockets, so a message costs work only where it is delivered.
//! Channel presence is kept by [`super::redis_members`].
//!
//! Two connections per replica: one subscriber, multiplexing every channel this replica holds
//! (plus the broadcast channel), driven by one task; and one for commands (PUBLISH, presence),
//! a [`CommandLink`] that reconnects by itself and is replaced after any timeout. Both are
//! pinged with deadlines ([`super::link`]), so a frozen or black-holed Redis is noticed too. When
//! the subscriber connection drops, the replica reports not-ready, reconnects with backoff and
//! jitter, and resubscribes everything it still holds before it reports ready again; what the
//! held targets missed meanwhile is filled from history by the replica ([`crate::gap_fill`]),
//! told by `LinkEvent::Subscribed { reconnect: true }` before the new subscription delivers.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionLike, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::cluster_keys::KeyScheme;
use super::link::{self, CommandLink, Connection, Health};
pub use super::link::{LinkEvent, LinkObserver};
use super::members::{Change, Member};
use super::redis_conn::RedisConn;
pub use super::redis_keys::*;
use super::redis_members;
use super::{
    Announcement, BrokerError, ClientId, Driver, History, IdempotencyKey, Inbox, Publication,
    Published, Subscribed, Window,
};
use crate::backoff::Backoff;
use crate::channel::ChannelName;
use crate::cursor::{Epoch, Position, StreamId};
use crate::target::Target;

/// A replica that has not announced itself for this long is no longer listed.
pub(super) const PRESENCE_TTL: Duration = Duration::from_secs(6);
/// Longest wait for Redis to answer one command; past it the broker counts as unavailable.
/// Below 2 s with room to spare: a publish into a black-holed Redis must answer 503 within 2 s
/// through nginx (issue #14; the partition suite measures it), and it waits this long first.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Appends to the target's history and publishes, atomically and in one round trip, so the
/// order of the history is the order of delivery. The history's epoch is kept beside it with
/// the same expiry; a history without one (new, expired, or lost with a restart) starts a new
/// epoch, the one the caller drew. The published payload is `<epoch>:<id>\n<message>`.
/// With an idempotency record (KEYS[4]) that exists, nothing is done and its first outcome is
/// answered; otherwise the outcome is recorded in the same step, so of two concurrent
/// publishes with one key exactly one runs. Answers `{epoch, id, receivers, repeated}`.
pub(super) const PUBLISH_SCRIPT: &str = r"
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local e, i, r = string.match(seen, '^(%S+) (%S+) (%d+)$')
    return {e, i, tonumber(r), 1}
  end
end
local over = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2]) + 1
if over > 0 then
  -- XDEL rather than XADD's MAXLEN: only deletions move max-deleted-entry-id, which is how a
  -- reconnecting client behind the window is told it lost messages.
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  for i = 1, #old do redis.call('XDEL', KEYS[1], old[i][1]) end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then epoch = ARGV[4] end
redis.call('SET', KEYS[3], epoch, 'PX', ARGV[3])
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local receivers = redis.call('PUBLISH', KEYS[2], epoch .. ':' .. id .. '\n' .. ARGV[1])
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ' ' .. id .. ' ' .. receivers, 'PX', ARGV[3])
end
return {epoch, id, receivers, 0}
";

/// A publish with an idempotency record (KEYS[2]) when no history is kept: the record alone,
/// for ARGV[2] ms. Answers `{receivers, repeated}`.
pub(super) const PUBLISH_ONCE_SCRIPT: &str = r"
local seen = redis.call('GET', KEYS[2])
if seen then return {tonumber(seen), 1} end
local receivers = redis.call('PUBLISH', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], receivers, 'PX', ARGV[2])
return {receivers, 0}
";

/// What a stream holds after an id (all of it when the client's epoch, ARGV[3], is another
/// life of the stream), the newest id it ever trimmed (Redis 7's `max-deleted-entry-id`, which
/// tells whether anything after the id was lost), and its epoch (empty when there is none).
pub(super) const HISTORY_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2]) or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '0-0', {}, epoch, 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local trimmed = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then trimmed = info[i + 1] end
end
local from = '(' .. ARGV[1]
if ARGV[3] ~= '' and ARGV[3] ~= epoch then from = '-' end
-- At most ARGV[4] bytes of messages leave Redis (the first always, so a read progresses);
-- the rest is only said to follow.
local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])
local budget = tonumber(ARGV[4])
local kept = {}
local more = 0
for i = 1, #entries do
  local size = #entries[i][2][2]
  if #kept > 0 and size > budget then more = 1; break end
  budget = budget - size
  kept[#kept + 1] = entries[i]
end
return {1, trimmed, kept, epoch, more}
";
/// Where a history stands: its epoch (started with the caller's if it has none, expiring as
/// a publish would set it) and its newest id.
pub(super) const NEWEST_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return {epoch, '0-0'} end
return {epoch, last[1][1]}
";

/// Where the publish script said the message went. The script ran: an answer that does not
/// parse is ours to explain, not an outage, but the message went out.
pub(super) fn published_at(epoch: &str, id: &str) -> Result<Position, BrokerError> {
    Ok(Position::new(
        epoch
            .parse()
            .map_err(|e: crate::cursor::BadCursor| BrokerError::OutcomeUnknown(e.to_string()))?,
        id.parse()
            .map_err(|e: crate::cursor::BadStreamId| BrokerError::OutcomeUnknown(e.to_string()))?,
    ))
}

/// The history script's answer: `{exists, trimmed, entries, epoch, more}`.
pub(super) type HistoryAnswer = (u8, String, Entries, String, u8);

/// What the history script's answer means for a reader who last saw `after`.
pub(super) fn history_of(after: Position, answer: HistoryAnswer) -> History {
    let (exists, trimmed, entries, epoch, more) = answer;
    let epoch: Epoch = epoch.parse().unwrap_or_default();
    if exists == 0 && !epoch.is_known() {
        // Expired or never written: continuity cannot be shown for a client that saw
        // something, and there is nothing to miss for one that saw nothing.
        return History::missing(after);
    }
    let trimmed: StreamId = trimmed.parse().unwrap_or_default();
    let entries = entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let id = id.parse().ok()?;
            let (_, message) = fields.into_iter().next()?;
            Some((id, message))
        })
        .collect();
    History::of(after, epoch, entries, trimmed, more == 1)
}

/// Stream entries as Redis returns them: `[id, [field, value, …]]`.
pub(super) type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Splits a pub/sub payload into its history position (if any) and the message.
pub(super) fn split_payload(payload: &[u8]) -> (Option<Position>, &[u8]) {
    if payload.first() == Some(&b'{') {
        return (None, payload);
    }
    match payload.iter().position(|b| *b == b'\n') {
        Some(at) => {
            let id = std::str::from_utf8(&payload[..at])
                .ok()
                .and_then(|s| s.parse().ok());
            (id, &payload[at + 1..])
        }
        None => (None, payload),
    }
}

/// What the subscriber task is asked to do, in the order the registry decided it.
enum Command {
    Hold(Target, oneshot::Sender<Result<(), BrokerError>>),
    Release(Target),
}

/// Handle on the Redis broker; clones share the connections and the subscriber task.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    /// Presence changes, in the order the registry made them, for the members task.
    members: mpsc::UnboundedSender<(ChannelName, ClientId, Change)>,
    health: Arc<Health>,
    conn: CommandLink,
    window: Window,
    publish_script: redis::Script,
    publish_once_script: redis::Script,
    history_script: redis::Script,
    newest_script: redis::Script,
    /// Ends the subscriber task when the last handle goes.
    _stop: DropGuard,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("health", &self.inner.health)
            .finish()
    }
}

pub(super) fn unavailable(err: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

/// What a failed publish means for its message. A write Redis refused for its `maxmemory`
/// (`-OOM command not allowed …`, also when raised inside the publish script) is the history
/// budget, not an outage. Any other answer of Redis's own (an error reply) and a refused
/// connection mean nothing was done: not accepted. Everything else (a timeout, a connection
/// lost or out of step after the request may have gone out) leaves the outcome unknown.
pub(super) fn publish_failed(err: redis::RedisError) -> BrokerError {
    if err.code() == Some("OOM") || err.to_string().contains("OOM command not allowed") {
        BrokerError::HistoryFull(err.to_string())
    } else if err.code().is_some() || err.is_connection_refusal() {
        unavailable(err)
    } else {
        BrokerError::OutcomeUnknown(err.to_string())
    }
}

impl RedisBroker {
    /// Starts the subscriber task and returns at once: Redis being down at start-up is an outage
    /// like any other (not ready until it comes back), not a reason to exit.
    pub fn start(
        url: &str,
        replica: &str,
        inbox: Inbox,
        observer: LinkObserver,
        window: Window,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            CommandLink::new(client.clone(), config, RESPONSE_TIMEOUT).map_err(unavailable)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::new(observer));
        let stop = CancellationToken::new();
        let task = Subscriber {
            client,
            commands: rx,
            inbox,
            health: health.clone(),
            held: HashSet::new(),
        };
        tokio::spawn(task.run(stop.clone()));
        tokio::spawn(link::watch_commands(
            conn.clone(),
            health.clone(),
            stop.clone(),
        ));
        let members = redis_members::start(
            RedisConn::Single(conn.clone()),
            KeyScheme::Single,
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
                publish_script: redis::Script::new(PUBLISH_SCRIPT),
                publish_once_script: redis::Script::new(PUBLISH_ONCE_SCRIPT),
                history_script: redis::Script::new(HISTORY_SCRIPT),
                newest_script: redis::Script::new(NEWEST_SCRIPT),
                _stop: stop.drop_guard(),
            }),
        })
    }
}

impl RedisBroker {
    /// The command connection, for other users of the same Redis (the state lab's shared
    /// state): multiplexed, so sharing it costs no extra connection.
    pub fn connection(&self) -> CommandLink {
        self.inner.conn.clone()
    }

    /// The link in one short sentence (see [`Health::detail`]).
    pub fn link_detail(&self) -> String {
        self.inner.health.detail()
    }

    /// Each connection's state, for tests that tell the two watchers apart.
    #[cfg(test)]
    pub(crate) fn health(&self) -> Arc<Health> {
        self.inner.health.clone()
    }
}

impl RedisBroker {
    /// See [`super::Broker::subscriber_down`].
    pub fn subscriber_down(&self) -> bool {
        !self.inner.health.is_up(link::Connection::Subscriber)
    }
}

impl Driver for RedisBroker {
    async fn publish_once(
        &self,
        target: &Target,
        payload: Vec<u8>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        let keys = keys(target);
        let record = key.map(|key| idempotency_record(target, key));
        let mut conn = self.inner.conn.clone();
        let window = &self.inner.window;
        let ttl = window.ttl.as_millis().max(1) as u64;
        // PUBLISH answers with the number of subscribers that received the message: with one
        // subscriber connection per replica, that is the number of receiving replicas.
        if !window.enabled() {
            let (receivers, repeated) = match &record {
                None => (
                    conn.publish(keys.channel, payload)
                        .await
                        .map_err(publish_failed)?,
                    0u8,
                ),
                Some(record) => self
                    .inner
                    .publish_once_script
                    .key(keys.channel)
                    .key(record)
                    .arg(payload)
                    .arg(ttl)
                    .invoke_async(&mut conn)
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
        let (epoch, id, receivers, repeated): (String, String, u64, u8) = invocation
            .arg(payload)
            .arg(window.cap(target))
            .arg(ttl)
            .arg(Epoch::fresh().to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(publish_failed)?;
        let position = published_at(&epoch, &id)?;
        Ok(Published {
            receivers,
            position: Some(position),
            repeated: repeated == 1,
        })
    }

    /// The whole batch as one pipeline of the commands [`Driver::publish_once`] sends one at a
    /// time (one write, one round trip; Redis runs them in order, so each target's history
    /// order is still the batch's). Redis answers each command apart, so one refused message
    /// (its script raised an error) does not fail the others; a lost connection or a timeout
    /// leaves every message of the batch `OutcomeUnknown`, since any of them may have run.
    async fn publish_many(&self, batch: Vec<Publication>) -> Vec<Result<Published, BrokerError>> {
        let mut results: Vec<Option<Result<Published, BrokerError>>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        // A script Redis does not know (restarted, or SCRIPT FLUSH) answers NOSCRIPT and does
        // nothing: those messages go once more, behind a SCRIPT LOAD of each script.
        for load in [false, true] {
            if pending.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            let mut loads = 0;
            if load {
                for script in [PUBLISH_SCRIPT, PUBLISH_ONCE_SCRIPT] {
                    pipe.cmd("SCRIPT").arg("LOAD").arg(script);
                    loads += 1;
                }
            }
            let shapes: Vec<Shape> = pending
                .iter()
                .map(|&i| self.add_publish(&mut pipe, &batch[i]))
                .collect();
            let mut conn = self.inner.conn.clone();
            let replies = conn.req_packed_commands(&pipe, loads, pending.len()).await;
            let replies = match replies {
                Ok(replies) => replies,
                Err(err) => {
                    let err = publish_failed(err);
                    for &i in &pending {
                        results[i] = Some(Err(err.clone()));
                    }
                    break;
                }
            };
            let mut unknown_script = Vec::new();
            for ((i, shape), reply) in pending.iter().copied().zip(shapes).zip(replies) {
                match shape.parse(reply) {
                    Err(Reply::NoScript) if !load => unknown_script.push(i),
                    Err(Reply::NoScript) => {
                        results[i] = Some(Err(unavailable("redis does not keep the script")));
                    }
                    Err(Reply::Failed(err)) => results[i] = Some(Err(err)),
                    Ok(published) => results[i] = Some(Ok(published)),
                }
            }
            pending = unknown_script;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unavailable("not sent"))))
            .collect()
    }

    async fn history(&self, target: &Target, after: Position) -> Result<History, BrokerError> {
        let keys = keys(target);
        let mut conn = self.inner.conn.clone();
        let epoch = if after.epoch.is_known() {
            after.epoch.to_string()
        } else {
            String::new()
        };
        let answer: HistoryAnswer = self
            .inner
            .history_script
            .key(keys.stream)
            .key(keys.epoch)
            .arg(after.id.to_string())
            .arg(self.inner.window.cap(target).max(1))
            .arg(epoch)
            .arg(self.inner.window.read_bytes.min(i64::MAX as usize))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(history_of(after, answer))
    }

    async fn newest(&self, targets: &[Target]) -> Result<Vec<Position>, BrokerError> {
        if !self.inner.window.enabled() {
            return Ok(vec![Position::START; targets.len()]);
        }
        let mut conn = self.inner.conn.clone();
        let ttl = self.inner.window.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        for target in targets {
            let keys = keys(target);
            pipe.invoke_script(
                self.inner
                    .newest_script
                    .key(keys.stream)
                    .key(keys.epoch)
                    .arg(Epoch::fresh().to_string())
                    .arg(ttl),
            );
        }
        let answers: Vec<(String, String)> =
            redis_members::query_scripted(&mut conn, &[&self.inner.newest_script], &pipe)
                .await
                .map_err(unavailable)?;
        Ok(answers
            .into_iter()
            .map(|(epoch, id)| {
                Position::new(
                    epoch.parse().unwrap_or_default(),
                    id.parse().unwrap_or_default(),
                )
            })
            .collect())
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
        // A stopped members task keeps no presence, so there is nothing to tell it.
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
        redis_members::list(
            RedisConn::Single(self.inner.conn.clone()),
            KeyScheme::Single,
            channel,
        )
        .await
        .map_err(unavailable)
    }

    fn is_ready(&self) -> bool {
        self.inner.health.is_ready()
    }

    async fn announce(&self, announcement: &Announcement) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut conn = self.inner.conn.clone();
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
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn replicas(&self) -> Result<Vec<Announcement>, BrokerError> {
        let mut conn = self.inner.conn.clone();
        let since = now_ms().saturating_sub(PRESENCE_TTL.as_millis() as u64);
        let ids: Vec<String> = conn
            .zrangebyscore(REPLICAS_KEY, since, "+inf")
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{REPLICA_KEY_PREFIX}{id}"))
            .collect();
        let values: Vec<Option<String>> = conn.mget(keys).await.map_err(unavailable)?;
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

/// How a publish command of a pipeline answers.
#[derive(Clone, Copy)]
enum Shape {
    /// PUBLISH: the receivers.
    Plain,
    /// The publish-once script: `{receivers, repeated}`.
    Once,
    /// The publish script: `{epoch, id, receivers, repeated}`.
    Kept,
}

/// Why one reply of a pipeline is not an outcome.
enum Reply {
    /// The script was not known: nothing was done.
    NoScript,
    Failed(BrokerError),
}

impl RedisBroker {
    /// Appends to `pipe` the command [`Driver::publish_once`] would send for `message`.
    fn add_publish(&self, pipe: &mut redis::Pipeline, message: &Publication) -> Shape {
        let inner = &self.inner;
        let keys = keys(&message.target);
        let record = message
            .key
            .as_ref()
            .map(|key| idempotency_record(&message.target, key));
        let ttl = inner.window.ttl.as_millis().max(1) as u64;
        if !inner.window.enabled() {
            let Some(record) = record else {
                pipe.cmd("PUBLISH").arg(keys.channel).arg(&message.payload);
                return Shape::Plain;
            };
            pipe.cmd("EVALSHA")
                .arg(inner.publish_once_script.get_hash())
                .arg(2)
                .arg(keys.channel)
                .arg(record)
                .arg(&message.payload)
                .arg(ttl);
            return Shape::Once;
        }
        let command = pipe
            .cmd("EVALSHA")
            .arg(inner.publish_script.get_hash())
            .arg(if record.is_some() { 4 } else { 3 })
            .arg(keys.stream)
            .arg(keys.channel)
            .arg(keys.epoch);
        if let Some(record) = record {
            command.arg(record);
        }
        command
            .arg(&message.payload)
            .arg(inner.window.cap(&message.target))
            .arg(ttl)
            .arg(Epoch::fresh().to_string());
        Shape::Kept
    }
}

impl Shape {
    fn parse(self, reply: redis::Value) -> Result<Published, Reply> {
        if let redis::Value::ServerError(err) = reply {
            let err = redis::RedisError::from(err);
            if err.code() == Some("NOSCRIPT") {
                return Err(Reply::NoScript);
            }
            return Err(Reply::Failed(publish_failed(err)));
        }
        // The command ran: an answer that does not parse is ours to explain, not an outage,
        // but the message went out.
        let odd = |e: &dyn fmt::Display| Reply::Failed(BrokerError::OutcomeUnknown(e.to_string()));
        let (receivers, position, repeated) = match self {
            Shape::Plain => (
                redis::from_redis_value(reply).map_err(|e| odd(&e))?,
                None,
                0,
            ),
            Shape::Once => {
                let (receivers, repeated): (u64, u8) =
                    redis::from_redis_value(reply).map_err(|e| odd(&e))?;
                (receivers, None, repeated)
            }
            Shape::Kept => {
                let (epoch, id, receivers, repeated): (String, String, u64, u8) =
                    redis::from_redis_value(reply).map_err(|e| odd(&e))?;
                let epoch: Epoch = epoch.parse().map_err(|e| odd(&e))?;
                let id: StreamId = id.parse().map_err(|e| odd(&e))?;
                (receivers, Some(Position::new(epoch, id)), repeated)
            }
        };
        Ok(Published {
            receivers,
            position,
            repeated: repeated == 1,
        })
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The target a pub/sub channel carries messages for.
fn target_of(channel: &str) -> Option<Target> {
    if channel == BROADCAST_CHANNEL {
        return Some(Target::Broadcast);
    }
    if let Some(id) = channel.strip_prefix(CLIENT_CHANNEL_PREFIX) {
        return ClientId::parse(id).ok().map(Target::Client);
    }
    let name = channel.strip_prefix(CHANNEL_CHANNEL_PREFIX)?;
    ChannelName::parse(name).ok().map(Target::Channel)
}

/// Most subscription changes sent to Redis in one command.
pub(super) const MAX_BATCH: usize = 512;

/// The task that owns the subscriber connection.
struct Subscriber {
    client: redis::Client,
    commands: mpsc::UnboundedReceiver<Command>,
    inbox: Inbox,
    /// Where the connection's state goes (readiness, records, metrics).
    health: Arc<Health>,
    /// Every client and channel this replica holds a socket of: what to resubscribe after a
    /// reconnect.
    held: HashSet<Target>,
}

/// Why the connected loop ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Subscriber {
    async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut connected_before = false;
        let mut said_unreachable = false;
        loop {
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = stop.cancelled() => return,
            };
            let (sink, stream) = match attempt {
                Ok(halves) => halves,
                Err(reason) => {
                    if !connected_before && !said_unreachable {
                        said_unreachable = true;
                        let addr = self.client.get_connection_info().addr().to_string();
                        self.health.unreachable(&addr, &reason);
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(%reason, ?delay, "redis subscriber connect failed");
                    if !self.wait_answering(delay, &stop).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.health.subscribed(LinkEvent::Subscribed {
                channels: self.held.len() + 1,
                reconnect: connected_before,
            });
            connected_before = true;
            let ended = self.serve(sink, stream, &stop).await;
            match ended {
                Ended::Stopped => return,
                Ended::Lost(reason) => self.health.down(Connection::Subscriber, &reason),
            }
        }
    }

    /// Connects and subscribes to the broadcast channel and every held client's channel.
    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), String> {
        let connecting = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(BROADCAST_CHANNEL).await?;
            let channels: Vec<String> = self.held.iter().map(pubsub_channel).collect();
            for chunk in channels.chunks(512) {
                sink.subscribe(chunk).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT + CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(halves)) => Ok(halves),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Connected: subscribe and unsubscribe as asked, hand every message to the inbox.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        stop: &CancellationToken,
    ) -> Ended {
        // A frozen or unreachable Redis closes nothing: only a late pong tells.
        let watch = link::watch_subscriber(sink.clone());
        tokio::pin!(watch);
        loop {
            tokio::select! {
                reason = &mut watch => return Ended::Lost(reason),
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Stopped };
                    // What has queued up behind it goes out with it: a burst of connects costs
                    // one SUBSCRIBE (one write, one round trip) instead of one per client.
                    let mut batch = vec![command];
                    while batch.len() < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(reason) = self.apply(&mut sink, batch).await {
                        return Ended::Lost(reason);
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Lost("connection closed".to_owned());
                    };
                    let Some(target) = target_of(message.get_channel_name()) else {
                        continue;
                    };
                    let (id, payload) = split_payload(message.get_payload_bytes());
                    (self.inbox)(&target, id, payload);
                }
                () = stop.cancelled() => return Ended::Stopped,
            }
        }
    }

    /// Applies `commands` in order, each run of holds as one SUBSCRIBE and each run of
    /// releases as one UNSUBSCRIBE. On a failure the rest are only noted (as while
    /// disconnected), and the caller reconnects and resubscribes what is held.
    async fn apply(&mut self, sink: &mut PubSubSink, commands: Vec<Command>) -> Result<(), String> {
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
                        channels.push(pubsub_channel(&target));
                        self.held.insert(target);
                        waiting.push(done);
                    }
                    Command::Release(target) => {
                        channels.push(pubsub_channel(&target));
                        self.held.remove(&target);
                    }
                }
            }
            let result = if hold {
                tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(channels)).await
            } else {
                tokio::time::timeout(RESPONSE_TIMEOUT, sink.unsubscribe(channels)).await
            };
            let result = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) if hold => Err("subscribe timed out".to_owned()),
                Err(_) => Err("unsubscribe timed out".to_owned()),
            };
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

    /// What a command means while there is no subscriber connection: the held set is kept
    /// current, and a hold is answered at once.
    fn note_disconnected(&mut self, command: Command) {
        match command {
            Command::Hold(target, done) => {
                self.held.insert(target);
                let _ = done.send(Err(unavailable("redis is not connected")));
            }
            Command::Release(target) => {
                self.held.remove(&target);
            }
        }
    }

    /// Disconnected: keep the held set current and answer holds at once while waiting to retry.
    /// Returns false when the broker is stopping.
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
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The driver suite against a real `redis-server` on a free loopback port, started by
    //! [`crate::ops::redis_server`]; where `redis-server` is missing, these tests fail saying
    //! which package to install.
    use super::super::Broker;
    use super::super::suite::{self, Collected};
    use super::*;
    use crate::ops::redis_server::RedisServer;

    /// A server and the folder holding its log; the server is killed (and waited for) first.
    struct Server {
        redis: RedisServer,
        _log_dir: tempfile::TempDir,
    }

    fn start_server() -> Server {
        let log_dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(log_dir.path(), &[]).unwrap_or_else(|err| panic!("{err}"));
        Server {
            redis,
            _log_dir: log_dir,
        }
    }

    /// Two replicas on one Redis, each as the `Broker` a replica runs with, so the suite covers
    /// the dispatch as well as the driver.
    async fn pair(url: &str) -> (Broker, Broker, Collected, Collected) {
        let (seen_a, seen_b) = (Collected::default(), Collected::default());
        let observer: LinkObserver = Arc::new(|_| {});
        let a = RedisBroker::start(url, "ra", seen_a.inbox(), observer.clone(), suite::window())
            .unwrap();
        let b = RedisBroker::start(url, "rb", seen_b.inbox(), observer, suite::window()).unwrap();
        for _ in 0..200 {
            if a.is_ready() && b.is_ready() {
                return (Broker::Redis(a), Broker::Redis(b), seen_a, seen_b);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("brokers did not become ready");
    }

    #[tokio::test]
    async fn targeted_publish_reaches_only_holders() {
        let server = start_server();
        let (a, b, seen_a, seen_b) = pair(&server.redis.url()).await;
        suite::targeted_publish_reaches_only_holders(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn broadcast_reaches_every_replica() {
        let server = start_server();
        let (a, b, seen_a, seen_b) = pair(&server.redis.url()).await;
        suite::broadcast_reaches_every_replica(&a, &b, &seen_a, &seen_b).await;
    }

    #[tokio::test]
    async fn history_returns_what_came_after_a_position() {
        let server = start_server();
        let (a, _, _, _) = pair(&server.redis.url()).await;
        suite::history_returns_what_came_after_a_position(&a).await;
    }

    #[tokio::test]
    async fn channel_messages_and_presence_reach_only_subscribers() {
        let server = start_server();
        let (a, b, seen_a, seen_b) = pair(&server.redis.url()).await;
        suite::channel_messages_and_presence_reach_only_subscribers(&a, &b, &seen_a, &seen_b).await;
    }

    #[test]
    fn payloads_carry_their_id_before_a_newline() {
        assert_eq!(
            split_payload(b"ab:1-2\n{\"a\":1}"),
            (
                Some(Position::new(Epoch(0xab), StreamId { ms: 1, seq: 2 })),
                &b"{\"a\":1}"[..]
            )
        );
        assert_eq!(
            target_of("stickyws:channel:public:lobby"),
            Some(Target::Channel(ChannelName::parse("public:lobby").unwrap()))
        );
        assert_eq!(target_of("stickyws:channel:a b"), None);
        assert_eq!(target_of(BROADCAST_CHANNEL), Some(Target::Broadcast));
        assert_eq!(split_payload(b"{\"a\":1}"), (None, &b"{\"a\":1}"[..]));
    }

    #[tokio::test]
    async fn a_key_publishes_once_per_target() {
        let server = start_server();
        let (a, b, seen_a, _) = pair(&server.redis.url()).await;
        suite::a_key_publishes_once_per_target(&a, &b, &seen_a).await;
    }

    #[tokio::test]
    async fn a_batch_publishes_each_message_as_a_single_publish_would() {
        let server = start_server();
        let (a, b, seen_a, seen_b) = pair(&server.redis.url()).await;
        // A fresh Redis knows no script yet: the batch also takes the NOSCRIPT path.
        suite::a_batch_publishes_each_message_as_a_single_publish_would(&a, &b, &seen_a, &seen_b)
            .await;
    }

    #[tokio::test]
    async fn announced_replicas_are_listed() {
        let server = start_server();
        let (a, b, _, _) = pair(&server.redis.url()).await;
        assert_eq!(a.kind(), "redis");
        assert!(
            a.redis_connection().is_some(),
            "the state lab shares this Redis"
        );
        suite::announced_replicas_are_listed(&a, &b).await;
    }

    #[tokio::test]
    async fn publish_without_redis_is_unavailable_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let broker = RedisBroker::start(
            &format!("redis://127.0.0.1:{port}"),
            "r",
            Arc::new(|_, _, _| {}),
            Arc::new(|_| {}),
            suite::window(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let result = broker.publish(&Target::Broadcast, b"x".to_vec()).await;
        assert!(
            matches!(result, Err(BrokerError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let batch = (0..3)
            .map(|i| Publication {
                target: Target::Broadcast,
                payload: vec![i],
                key: None,
            })
            .collect();
        let results = broker.publish_many(batch).await;
        assert_eq!(results.len(), 3);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(BrokerError::Unavailable(_)))),
            "refused: none was accepted, and each says so: {results:?}"
        );
        assert!(!broker.is_ready());
        let broker = Broker::Redis(broker);
        assert!(
            !broker.is_ready(),
            "the replica's broker says so too (/readyz)"
        );
        let hold = broker
            .hold(&Target::Client(ClientId::parse("c").unwrap()))
            .await;
        assert!(matches!(hold, Err(BrokerError::Unavailable(_))));
    }
}
