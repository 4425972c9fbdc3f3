//! The process-local copy of each client's session state: a moka cache bounded by a TTL and an
//! entry limit. This is the "dictionary in the app's memory" of the lesson, done as well as it
//! can be done, and still wrong behind a load balancer without stickiness.

use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;

use super::{Found, Notes};
use crate::token::ClientId;

/// Why the cache dropped a client's state on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The entry limit was reached.
    Size,
    /// The state was not changed for a whole TTL.
    Expired,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Size => "size",
            Dropped::Expired => "expired",
        }
    }
}

/// Called for every entry the cache drops by itself (not for replacements).
pub type OnDrop = Arc<dyn Fn(&ClientId, Dropped) + Send + Sync>;

/// Session states held in this replica's memory.
#[derive(Clone)]
pub struct LocalStates {
    cache: Cache<ClientId, Notes>,
    max_notes: usize,
}

impl std::fmt::Debug for LocalStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStates")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl LocalStates {
    pub fn new(max_entries: u64, ttl: Duration, max_notes: usize, on_drop: OnDrop) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .time_to_live(ttl)
            .eviction_listener(move |client: Arc<ClientId>, _, cause| {
                let dropped = match cause {
                    RemovalCause::Size => Dropped::Size,
                    RemovalCause::Expired => Dropped::Expired,
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                on_drop(&client, dropped);
            })
            .build();
        Self { cache, max_notes }
    }

    /// Appends `note` to the client's state, starting an empty one if there was none. The TTL
    /// counts again from now.
    pub fn add(&self, client: &ClientId, note: &str) -> Found {
        let entry = self.cache.entry_by_ref(client).and_upsert_with(|entry| {
            let mut notes = entry.map(|e| e.into_value().to_vec()).unwrap_or_default();
            notes.push(note.to_owned());
            let excess = notes.len().saturating_sub(self.max_notes);
            notes.drain(..excess);
            Notes::from(notes)
        });
        Found {
            hit: entry.is_old_value_replaced(),
            notes: entry.into_value(),
        }
    }

    /// The client's state; with `rebuild`, a missing one is started empty (what an app does
    /// when a request arrives for a session it does not know).
    pub fn get(&self, client: &ClientId, rebuild: bool) -> Found {
        if let Some(notes) = self.cache.get(client) {
            return Found { notes, hit: true };
        }
        if rebuild {
            // Another request may have started it meanwhile; keep what is there.
            let entry = self.cache.entry_by_ref(client).or_default();
            return Found {
                notes: entry.into_value(),
                hit: false,
            };
        }
        Found {
            notes: Notes::default(),
            hit: false,
        }
    }

    /// Runs the cache's pending evictions now, so the listener and the entry count are current.
    /// Not on every request: moka does this by itself every so often, and scrapes, `/api/stats`
    /// and the announcements call it.
    pub fn maintain(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn client(s: &str) -> ClientId {
        ClientId::parse(s).expect("valid id")
    }

    /// What the cache dropped, and why, in order.
    type Log = Arc<Mutex<Vec<(String, Dropped)>>>;

    fn states(max_entries: u64, ttl: Duration) -> (LocalStates, Log) {
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seen = dropped.clone();
        let on_drop: OnDrop = Arc::new(move |c: &ClientId, why| {
            seen.lock()
                .expect("lock")
                .push((c.as_str().to_owned(), why));
        });
        (LocalStates::new(max_entries, ttl, 3, on_drop), dropped)
    }

    #[test]
    fn the_first_note_misses_and_the_next_ones_hit() {
        let (local, _) = states(100, Duration::from_secs(60));
        let a = client("a");
        let first = local.add(&a, "one");
        assert!(!first.hit);
        let second = local.add(&a, "two");
        assert!(second.hit);
        assert_eq!(&*second.notes, ["one", "two"]);
    }

    #[test]
    fn only_the_newest_notes_are_kept() {
        let (local, _) = states(100, Duration::from_secs(60));
        let a = client("a");
        for n in 1..=5 {
            local.add(&a, &n.to_string());
        }
        assert_eq!(&*local.get(&a, false).notes, ["3", "4", "5"]);
    }

    #[test]
    fn a_lookup_without_rebuild_leaves_no_entry() {
        let (local, _) = states(100, Duration::from_secs(60));
        let a = client("a");
        assert!(!local.get(&a, false).hit);
        assert!(!local.get(&a, true).hit, "rebuilt, so still a miss");
        assert!(local.get(&a, false).hit, "now it is there, empty");
    }

    #[test]
    fn the_entry_limit_evicts_and_says_so() {
        let (local, dropped) = states(5, Duration::from_secs(60));
        for n in 0..40 {
            local.add(&client(&format!("c{n}")), "note");
        }
        local.maintain();
        assert!(local.entries() <= 5, "{} entries", local.entries());
        let dropped = dropped.lock().expect("lock");
        assert!(dropped.len() >= 35, "{} dropped", dropped.len());
        assert!(dropped.iter().all(|(_, why)| *why == Dropped::Size));
    }

    #[test]
    fn the_ttl_expires_and_says_so() {
        let (local, dropped) = states(100, Duration::from_millis(50));
        let a = client("a");
        local.add(&a, "note");
        std::thread::sleep(Duration::from_millis(120));
        assert!(!local.get(&a, false).hit, "expired states are not returned");
        local.maintain();
        assert_eq!(
            *dropped.lock().expect("lock"),
            [("a".to_owned(), Dropped::Expired)]
        );
    }
}
