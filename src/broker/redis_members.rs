//! Channel presence on Redis: one hash per channel (`stickyws:members:<name>`), a field per
//! client whose value lists each replica holding it as `replica=sockets@expires_ms;…`. A replica
//! writes its own part through one script that also says whether the client was present
//! anywhere before and after, and publishes `join`/`leave` on the channel when that changed.
//! Entries expire ([`ENTRY_TTL`]) unless refreshed ([`REFRESH_EVERY`]), so a replica that died
//! without saying goodbye drops out by itself. The task here owns this replica's part: it is
//! fed the registry's changes in order and refreshes what it holds.
//!
//! The same task serves the Redis Cluster driver: its [`KeyScheme`] names the keys (the hash in
//! its channel's slot) and turns the script's `PUBLISH` into `SPUBLISH`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cluster_keys::KeyScheme;
use super::members::{self, Change, ENTRY_TTL, Member, REFRESH_EVERY};
use super::redis_conn::RedisConn;
use crate::channel::ChannelName;
use crate::target::Target;
use crate::token::ClientId;

/// `stickyws:members:<channel>`.
pub const MEMBERS_PREFIX: &str = "stickyws:members:";

/// Sets this replica's socket count for one client (0 removes it), drops expired entries, and
/// publishes ARGV[4] (join) or ARGV[5] (leave) when the client appeared or vanished. Replica
/// ids are `[A-Za-z0-9._-]`, so `=`, `@` and `;` cannot occur in them.
const MEMBER_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local entry = {}
local before = false
if raw then
  for replica, sockets, expires in string.gmatch(raw, '([^=;]+)=(%d+)@(%d+)') do
    if tonumber(expires) > now then
      entry[replica] = sockets .. '@' .. expires
      before = true
    end
  end
end
if tonumber(ARGV[3]) > 0 then
  entry[ARGV[2]] = ARGV[3] .. '@' .. (now + tonumber(ARGV[6]))
else
  entry[ARGV[2]] = nil
end
local parts = {}
for replica, value in pairs(entry) do parts[#parts + 1] = replica .. '=' .. value end
local after = #parts > 0
if after then
  redis.call('HSET', KEYS[1], ARGV[1], table.concat(parts, ';'))
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if after and not before then redis.call('PUBLISH', KEYS[2], ARGV[4]) end
if before and not after then redis.call('PUBLISH', KEYS[2], ARGV[5]) end
return 0
";

/// Every live entry of a channel, with Redis's clock to judge expiry by.
const LIST_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('HGETALL', KEYS[1])}
";

/// Most entries written in one pipeline.
const BATCH: usize = 256;

type Key = (ChannelName, ClientId);

/// Starts the task keeping this replica's part of every channel's presence; returns where the
/// registry's changes go.
pub fn start(
    conn: RedisConn,
    scheme: KeyScheme,
    replica: &str,
    stop: CancellationToken,
) -> mpsc::UnboundedSender<(ChannelName, ClientId, Change)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        conn,
        scheme,
        replica: replica.to_owned(),
        changes: rx,
        local: HashMap::new(),
        script: scheme.script(MEMBER_SCRIPT),
    };
    tokio::spawn(task.run(stop));
    tx
}

struct Task {
    conn: RedisConn,
    scheme: KeyScheme,
    replica: String,
    changes: mpsc::UnboundedReceiver<(ChannelName, ClientId, Change)>,
    /// Sockets this replica holds per (channel, client).
    local: HashMap<Key, u32>,
    script: redis::Script,
}

impl Task {
    async fn run(mut self, stop: CancellationToken) {
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = self.changes.recv() => {
                    let Some(first) = change else { return };
                    let mut dirty = HashSet::new();
                    dirty.insert(self.apply(first));
                    while dirty.len() < BATCH {
                        match self.changes.try_recv() {
                            Ok(change) => { dirty.insert(self.apply(change)); }
                            Err(_) => break,
                        }
                    }
                    self.write(dirty.into_iter().collect()).await;
                }
                _ = refresh.tick() => {
                    let all: Vec<Key> = self.local.keys().cloned().collect();
                    for chunk in all.chunks(BATCH) {
                        self.write(chunk.to_vec()).await;
                    }
                }
            }
        }
    }

    fn apply(&mut self, (channel, client, change): (ChannelName, ClientId, Change)) -> Key {
        let key = (channel, client);
        let sockets = self.local.entry(key.clone()).or_default();
        match change {
            Change::Join => *sockets += 1,
            Change::Leave => *sockets = sockets.saturating_sub(1),
        }
        key
    }

    /// Writes the current count of each key (0 removes it), in one pipeline. A failure is only
    /// logged: the next refresh writes everything again.
    async fn write(&mut self, keys: Vec<Key>) {
        if keys.is_empty() {
            return;
        }
        let ttl = ENTRY_TTL.as_millis() as u64;
        let scheme = self.scheme;
        let mut pipes = vec![redis::pipe()];
        for key in &keys {
            let sockets = self.local.get(key).copied().unwrap_or(0);
            let (channel, client) = key;
            // On a cluster each channel's hash is in its own slot: a pipeline per channel.
            if !scheme.pipelines_across_targets() && !pipes[0].is_empty() {
                pipes.push(redis::pipe());
            }
            let Some(pipe) = pipes.last_mut() else { break };
            pipe.invoke_script(
                self.script
                    .key(scheme.members_key(channel))
                    .key(scheme.pubsub_channel(&Target::Channel(channel.clone())))
                    .arg(client.as_str())
                    .arg(&self.replica)
                    .arg(sockets)
                    .arg(members::note("join", client, &self.replica))
                    .arg(members::note("leave", client, &self.replica))
                    .arg(ttl),
            )
            .ignore();
        }
        let (conn, script) = (&self.conn, &self.script);
        let writes = pipes.iter().map(|pipe| async move {
            query_scripted::<()>(&mut conn.clone(), &[script], pipe).await
        });
        let written = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::try_join_all(writes),
        )
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(cause = %err, "presence not written; will refresh"),
            Err(_) => tracing::debug!("presence write timed out; will refresh"),
        }
        for key in keys {
            if self.local.get(&key) == Some(&0) {
                self.local.remove(&key);
            }
        }
    }
}

/// Runs a pipeline of script invocations. Pipelines send `EVALSHA` only, so a Redis that does
/// not have the scripts (new, or restarted) answers `NOSCRIPT`: they are loaded and the
/// pipeline sent once more. Each script is idempotent for a retry of the whole pipeline
/// only if none of it ran, which is what `NOSCRIPT` means for the first invocation; later
/// ones of the same scripts cannot fail so once the first passed.
pub(super) async fn query_scripted<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    scripts: &[&redis::Script],
    pipe: &redis::Pipeline,
) -> redis::RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(err)
            if err.to_string().contains("NoScript") || err.to_string().contains("NOSCRIPT") =>
        {
            for script in scripts {
                script.prepare_invoke().load_async(conn).await?;
            }
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// Who is subscribed to `channel`, by Redis's clock.
pub async fn list(
    mut conn: RedisConn,
    scheme: KeyScheme,
    channel: &ChannelName,
) -> Result<Vec<Member>, redis::RedisError> {
    let (now, fields): (u64, Vec<(String, String)>) = redis::Script::new(LIST_SCRIPT)
        .key(scheme.members_key(channel))
        .invoke_async(&mut conn)
        .await?;
    let mut list = Vec::new();
    for (client, value) in fields {
        for part in value.split(';') {
            let Some((replica, rest)) = part.split_once('=') else {
                continue;
            };
            let Some((sockets, expires)) = rest.split_once('@') else {
                continue;
            };
            let (Ok(sockets), Ok(expires)) = (sockets.parse(), expires.parse::<u64>()) else {
                continue;
            };
            if expires > now && sockets > 0 {
                list.push(Member {
                    client_id: client.clone(),
                    replica: replica.to_owned(),
                    sockets,
                });
            }
        }
    }
    list.sort();
    Ok(list)
}
