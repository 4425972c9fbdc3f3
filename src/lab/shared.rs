//! The shared copy of each client's session state, and the shared visit counter: in Redis for a
//! deployment (the fix the lesson points to), in-process when a single replica runs without
//! Redis (where "shared" and "local" are the same memory).
//!
//! Redis keys: `stickyws:notes:<client id>` is a list of the client's notes, capped and
//! expiring `STATE_TTL_SECS` after its last change; `stickyws:visits` counts page visits.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::broker::redis_conn::RedisConn;
use redis::AsyncCommands;

use super::local::LocalStates;
use super::{Found, Notes};
use crate::broker::BrokerError;
use crate::token::ClientId;

pub const NOTES_KEY_PREFIX: &str = "stickyws:notes:";
pub const VISITS_KEY: &str = "stickyws:visits";

/// Appends a note, keeps the newest `max`, renews the TTL and answers whether the list existed
/// before and what it holds now, in one round trip that no other client can interleave with.
const ADD_NOTE_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {existed, redis.call('LRANGE', KEYS[1], 0, -1)}
";

/// Where shared state lives.
#[derive(Clone)]
pub enum SharedStore {
    Redis {
        conn: RedisConn,
        add_note: redis::Script,
        ttl: Duration,
        max_notes: usize,
    },
    /// The same bounded cache as the local copy: with one replica, one memory.
    Memory {
        states: LocalStates,
        visits: Arc<AtomicU64>,
    },
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

fn unavailable(err: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

fn notes_key(client: &ClientId) -> String {
    format!("{NOTES_KEY_PREFIX}{client}")
}

impl SharedStore {
    pub fn redis(conn: RedisConn, ttl: Duration, max_notes: usize) -> Self {
        Self::Redis {
            conn,
            add_note: redis::Script::new(ADD_NOTE_SCRIPT),
            ttl,
            max_notes,
        }
    }

    pub fn memory(max_entries: u64, ttl: Duration, max_notes: usize) -> Self {
        Self::Memory {
            // Its evictions are not the lesson's (that is the local copy's), so not reported.
            states: LocalStates::new(max_entries, ttl, max_notes, Arc::new(|_, _| {})),
            visits: Arc::default(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SharedStore::Redis { .. } => "redis",
            SharedStore::Memory { .. } => "memory",
        }
    }

    /// Counts one page visit and returns the total.
    pub async fn count_visit(&self) -> Result<u64, BrokerError> {
        match self {
            SharedStore::Redis { conn, .. } => {
                conn.clone().incr(VISITS_KEY, 1).await.map_err(unavailable)
            }
            SharedStore::Memory { visits, .. } => Ok(visits.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    /// The visit count so far.
    pub async fn visits(&self) -> Result<u64, BrokerError> {
        match self {
            SharedStore::Redis { conn, .. } => {
                let n: Option<u64> = conn.clone().get(VISITS_KEY).await.map_err(unavailable)?;
                Ok(n.unwrap_or(0))
            }
            SharedStore::Memory { visits, .. } => Ok(visits.load(Ordering::Relaxed)),
        }
    }

    /// Appends `note` to the client's shared state.
    pub async fn add(&self, client: &ClientId, note: &str) -> Result<Found, BrokerError> {
        match self {
            SharedStore::Redis {
                conn,
                add_note,
                ttl,
                max_notes,
            } => {
                let (existed, notes): (u8, Vec<String>) = add_note
                    .key(notes_key(client))
                    .arg(note)
                    .arg(*max_notes)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut conn.clone())
                    .await
                    .map_err(unavailable)?;
                Ok(Found {
                    notes: Notes::from(notes),
                    hit: existed == 1,
                })
            }
            SharedStore::Memory { states, .. } => Ok(states.add(client, note)),
        }
    }

    /// The client's shared state (empty, and not a hit, if there is none).
    pub async fn get(&self, client: &ClientId) -> Result<Found, BrokerError> {
        match self {
            SharedStore::Redis { conn, .. } => {
                let notes: Vec<String> = conn
                    .clone()
                    .lrange(notes_key(client), 0, -1)
                    .await
                    .map_err(unavailable)?;
                Ok(Found {
                    hit: !notes.is_empty(),
                    notes: Notes::from(notes),
                })
            }
            SharedStore::Memory { states, .. } => Ok(states.get(client, false)),
        }
    }
}
