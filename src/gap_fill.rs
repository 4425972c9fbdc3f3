//! The gap fill (issue #14, item 3): after the broker subscription was lost and resubscribed
//! while this replica's sockets stayed open, every held target's history after the newest
//! position this replica delivered is read and delivered, in order, before the target's live
//! messages (which [`crate::continuity`] holds back meanwhile), each message once. The same
//! for one socket that resumed from its cursor while the broker could not be read: its replay
//! is this fill, done once the broker answers.
//!
//! A fill is put off while the broker is not ready (nothing could be read, and no live message
//! arrives meanwhile) and tried again when the link is back, instead of being given up.
//!
//! When the history cannot show continuity — trimmed past that position, another epoch, or
//! unreadable after a few tries — the target's sockets are closed with 1012, like a
//! restarting replica: clients reconnect with their cursors and the ordinary resume says what
//! was lost (`history_lost`, `recovered:false`). Nothing is left silently incomplete.
//!
//! Bounded: at most [`CONCURRENT_FILLS`] history reads at once; each read returns at most the
//! target's history window; held live messages are bounded in bytes by `continuity`. Noticing
//! the loss and resubscribing are the broker's; queueing on sockets is the registry's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Driver, History};
use crate::cursor::Position;
use crate::delivery::Delivery;
use crate::frame::Envelope;
use crate::records::Event;
use crate::registry::Registry;
use crate::target::Target;

/// Most targets whose history is read at once.
pub const CONCURRENT_FILLS: usize = 16;
/// Waits between tries of one history read on a ready broker (about 4 s in all) before the
/// target's sockets are told to resume instead: a command connection may come back a little
/// after the subscription.
const RETRY_AFTER: [Duration; 4] = [
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_millis(1200),
    Duration::from_millis(1800),
];
/// How long landed messages are paced to the sockets' room before the rest is queued at once.
const PUMP_FOR: Duration = Duration::from_secs(10);
const PUMP_EVERY: Duration = Duration::from_millis(5);

/// Handle on the gap fill; cheap to clone.
#[derive(Clone, Debug)]
pub struct GapFill {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    delivery: Delivery,
}

/// What one target's fill did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not waiting for a fill (released, or filled by an earlier pass).
    Idle,
    /// The broker is not ready: still waiting, tried again when the link is back.
    PutOff,
    Filled {
        messages: usize,
    },
    /// Sockets closed with 1012 to resume from their cursors.
    Resynced {
        sockets: usize,
        why: &'static str,
    },
}

impl GapFill {
    pub fn new(registry: Registry, delivery: Delivery) -> Self {
        Self {
            inner: Arc::new(Inner { registry, delivery }),
        }
    }

    /// The subscriber is subscribed again after a loss. Called on the subscriber task before
    /// any message of the new subscription is delivered, so every live message of a held
    /// target from here on is held until its fill lands.
    pub fn resubscribed(&self) {
        let (round, targets) = self.inner.registry.begin_fill();
        tracing::info!(round, targets, "gap fill starts");
    }

    /// Both broker connections answer again: fills put off meanwhile are tried now.
    pub fn link_back(&self) {
        self.inner.registry.wake_fills();
    }

    /// Fills targets whenever [`GapFill::resubscribed`] says so, until `stop`.
    pub async fn run(self, broker: Broker, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.inner.registry.fills_due() => {}
                () = stop.cancelled() => return,
            }
            // Whatever is waiting now, including targets a pass of an older round left holding.
            let targets = self.inner.registry.filling();
            let mut filled = 0usize;
            let mut resynced = 0usize;
            let mut put_off = 0usize;
            let mut fills = futures_util::stream::iter(targets)
                .map(|target| {
                    let (this, broker) = (&self, &broker);
                    async move { (this.fill(broker, &target).await, target) }
                })
                .buffer_unordered(CONCURRENT_FILLS);
            while let Some((outcome, target)) = fills.next().await {
                let label = target.label();
                match outcome {
                    Outcome::Idle => {}
                    Outcome::PutOff => put_off += 1,
                    Outcome::Filled { messages } => {
                        filled += messages;
                        if messages > 0 {
                            self.inner.delivery.records().record(
                                Event::Replay,
                                label.as_deref(),
                                format_args!("gap-fill filled={messages}"),
                            );
                        }
                    }
                    Outcome::Resynced { sockets, why } => {
                        resynced += sockets;
                        self.inner.delivery.records().record(
                            Event::Replay,
                            label.as_deref(),
                            format_args!("gap-fill resync sockets={sockets} ({why}): closed 1012"),
                        );
                    }
                }
            }
            tracing::info!(filled, resynced, put_off, "gap fill done");
        }
    }

    async fn fill(&self, broker: &Broker, target: &Target) -> Outcome {
        let registry = &self.inner.registry;
        if !broker.is_ready() {
            return Outcome::PutOff;
        }
        let Some((round, from)) = registry.fill_from(target) else {
            return Outcome::Idle;
        };
        let Some(from) = from else {
            // No socket of it has started yet: each works out its own start when it does.
            return match registry.land(target, Vec::new(), round) {
                Ok(messages) => {
                    self.pump(target).await;
                    Outcome::Filled { messages }
                }
                Err(sockets) => Outcome::Resynced {
                    sockets,
                    why: "held messages over budget",
                },
            };
        };
        let mut history = None;
        for wait in std::iter::once(Duration::ZERO).chain(RETRY_AFTER) {
            tokio::time::sleep(wait).await;
            if !broker.is_ready() {
                return Outcome::PutOff;
            }
            match broker.history(target, from).await {
                Ok(read) => {
                    history = Some(read);
                    break;
                }
                Err(err) => tracing::debug!(?target, %err, "gap fill: history read failed"),
            }
        }
        let Some(History {
            entries,
            gap,
            epoch,
            more,
        }) = history
        else {
            let sockets = registry.resync(target);
            return Outcome::Resynced {
                sockets,
                why: "history unreadable",
            };
        };
        // No stream and no epoch at all: nothing was published for a whole history lifetime
        // (`HISTORY_TTL_SECS`, far longer than an outage the link watcher lets pass), so
        // nothing was missed; closing every idle target's sockets after a blip would be an
        // avalanche for nothing. (A Redis restarted empty while this replica was already cut
        // off, with nothing published after the restart, is the one case this cannot see.)
        let expired = entries.is_empty() && !epoch.is_known();
        if more {
            // More was missed than one read brings (`MAX_REPLAY_BYTES`): the clients resume
            // from their cursors, each within its own bounded replay.
            let sockets = registry.resync(target);
            return Outcome::Resynced {
                sockets,
                why: "more missed than one read holds",
            };
        }
        if gap && !expired {
            let sockets = registry.resync(target);
            return Outcome::Resynced {
                sockets,
                why: "history lost",
            };
        }
        let replica = self.inner.delivery.replica();
        let frames: Vec<_> = entries
            .iter()
            .filter_map(|(id, payload)| {
                let envelope = Envelope::decode(payload).ok()?;
                let at = Position::new(epoch, *id);
                Some((at, envelope.outgoing(replica, target, Some(at), false)))
            })
            .collect();
        match registry.land(target, frames, round) {
            Ok(ready) => {
                self.pump(target).await;
                Outcome::Filled { messages: ready }
            }
            Err(sockets) => Outcome::Resynced {
                sockets,
                why: "held messages over budget",
            },
        }
    }

    /// Hands the landed messages to the target's sockets as their queues have room; past
    /// [`PUMP_FOR`] the rest goes at once and a socket that still has no room is a slow
    /// consumer, as it would be for live messages.
    async fn pump(&self, target: &Target) {
        let started = tokio::time::Instant::now();
        loop {
            let force = started.elapsed() >= PUMP_FOR;
            if self.inner.registry.pump(target, force) == 0 || force {
                return;
            }
            tokio::time::sleep(PUMP_EVERY).await;
        }
    }
}
