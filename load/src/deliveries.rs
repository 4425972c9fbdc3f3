//! Receiving: what each load socket gets, tallied by the task that holds it — which of this run's
//! messages arrived, how late, how often, and at the right client or not — plus the socket's
//! outages when the server closes it (the holder reconnects, resuming from the last history id
//! it saw, as a page would).
//!
//! Every message a run sends carries `<tag> <client> <seq> <sent µs>` as its text: the tag tells
//! this run's messages from anyone else's, the client index finds misdeliveries, the sequence
//! number finds losses and duplicates, and the send time (on the run's monotonic clock, the
//! sender being this same process) gives publish-to-receipt latency without clock sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use stickyws::frame::{ReceivedFrame, Via};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::socket::{Dialer, Opened, Ws};

/// The client index broadcasts carry: they are for everyone.
pub const EVERYONE: u32 = u32::MAX;

/// The run's monotonic clock, shared by senders and receivers.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// The text of message `seq` for client `client` (or [`EVERYONE`]).
pub fn text(tag: &str, client: u32, seq: u64, sent_us: u64) -> String {
    if client == EVERYONE {
        format!("{tag} * {seq} {sent_us}")
    } else {
        format!("{tag} {client} {seq} {sent_us}")
    }
}

/// A marked message's `(client, seq, sent µs)`, or None if it is not this run's.
pub fn parse(tag: &str, text: &str) -> Option<(u32, u64, u64)> {
    let mut parts = text.split(' ');
    if parts.next()? != tag {
        return None;
    }
    let client = match parts.next()? {
        "*" => EVERYONE,
        n => n.parse().ok()?,
    };
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((client, seq, sent))
}

/// A fresh tag for one run.
pub fn new_tag() -> String {
    format!("lt{:08x}", rand::random::<u32>())
}

/// Counters the progress bar reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub delivered: AtomicU64,
    pub sent: AtomicU64,
    pub connected: AtomicI64,
    /// Which seqs arrived at least once: what the settling of a targeted run waits on.
    pub arrived: Arrived,
}

/// One bit per seq `0..n`, set when that message first arrives anywhere; lock-free, so marking
/// costs the receivers next to nothing.
#[derive(Debug, Default)]
pub struct Arrived(Vec<AtomicU64>);

impl Arrived {
    /// For seqs `0..seqs`; later seqs are neither marked nor reported.
    pub fn new(seqs: u64) -> Self {
        Self((0..seqs.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn mark(&self, seq: u64) {
        if let Some(word) = self.0.get((seq / 64) as usize) {
            word.fetch_or(1 << (seq % 64), Ordering::Relaxed);
        }
    }

    pub fn has(&self, seq: u64) -> bool {
        self.0
            .get((seq / 64) as usize)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (seq % 64)) != 0)
    }
}

/// Accepted publishes per client index. A failover holder whose socket was closed waits until
/// one more was accepted for its client before it reconnects, so every fault leaves messages to
/// replay: published while the client was away, owed to it from history when it is back.
#[derive(Debug)]
pub struct Acks(Vec<AtomicU64>);

impl Acks {
    /// For client indexes `0..clients`.
    pub fn new(clients: usize) -> Self {
        Self((0..clients).map(|_| AtomicU64::new(0)).collect())
    }

    /// A publish for `client` was accepted.
    pub fn bump(&self, client: u32) {
        if let Some(n) = self.0.get(client as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, client: u32) -> u64 {
        self.0
            .get(client as usize)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// One delivery: when it arrived (ms into the run) and how late (µs).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_ms: u32,
    pub latency_us: u32,
    /// Sent again from history after a reconnect.
    pub replayed: bool,
}

/// One arrival of a marked message at its holder.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at_us: u64,
    pub id: Option<String>,
    pub replayed: bool,
}

/// A time a socket was closed by the other side, and when it was back.
#[derive(Debug, Clone)]
pub struct Outage {
    pub replica: String,
    pub closed_us: u64,
    /// Why: `closed_1012`, `reset`, …
    pub kind: String,
    pub back_us: Option<u64>,
    pub back_on: Option<String>,
    /// The client cursor the reconnect asked to resume after, and the one its welcome named.
    pub resumed_from: Option<String>,
    pub welcomed_at: Option<String>,
    /// The broadcast cursor the reconnect asked to resume after.
    pub resumed_broadcast_from: Option<String>,
}

/// What one socket received over its life.
#[derive(Debug, Default)]
pub struct Tally {
    /// The client index this socket is for.
    pub client: u32,
    /// The replica holding it (the latest, after reconnects).
    pub replica: String,
    /// Sequence numbers of this run's messages for this client (or everyone), as they came.
    pub seqs: Vec<u64>,
    /// For each of `seqs`: when it came (µs on the run clock), its history id, whether replayed;
    /// what names a lost message's neighbours in the report.
    pub arrivals: Vec<Arrival>,
    pub samples: Vec<Sample>,
    /// This run's messages for another client: must never happen.
    pub misdelivered: u64,
    /// Messages not from this run (other users, other runs).
    pub foreign: u64,
    /// Messages resent on a reconnect because they had been missed.
    pub replayed: u64,
    /// The socket was open when the run stopped it.
    pub up_at_end: bool,
    pub outages: Vec<Outage>,
    /// Reconnect failures by kind.
    pub reconnect_errors: Vec<String>,
}

/// How a holder behaves.
#[derive(Debug, Clone)]
pub struct HoldPlan {
    pub tag: String,
    pub clock: Clock,
    /// Reconnect when the server closes the socket (else a close ends the holder).
    pub reconnect: bool,
    /// Latest time to keep trying to reconnect.
    pub deadline: Instant,
    /// Record latency samples (off for sockets only held to count them).
    pub samples: bool,
    /// Before reconnecting, wait (at most [`AWAY_WAIT`]) until a publish for this client was
    /// accepted while it was away (failover).
    pub away_until_published: Option<Arc<Acks>>,
    /// Force-close the socket's TCP connection now and then, stay away, come back (jitter).
    pub jitter: Option<Jitter>,
}

/// The jitter benchmark's network drops, as AnyCable's runs them: once `started` is cancelled,
/// each socket's TCP connection is reset (no close frame) after a random share of `every` the
/// first time, then about every `every`; it stays offline about `offline` (both ±25 %) and
/// reconnects through the front door resuming from its cursors. No drop starts after `ended`.
#[derive(Debug, Clone)]
pub struct Jitter {
    pub every: Duration,
    pub offline: Duration,
    pub started: CancellationToken,
    pub ended: CancellationToken,
}

impl Jitter {
    /// Resolves when this connection is due to be dropped; never, once the jitter has ended.
    async fn next_drop(&self, first: bool) {
        self.started.cancelled().await;
        let share = if first {
            rand::random::<f64>()
        } else {
            0.75 + rand::random::<f64>() * 0.5
        };
        tokio::select! {
            () = tokio::time::sleep(self.every.mul_f64(share)) => {
                if self.ended.is_cancelled() {
                    std::future::pending::<()>().await;
                }
            }
            () = self.ended.cancelled() => std::future::pending::<()>().await,
        }
    }

    fn offline_for(&self) -> Duration {
        self.offline.mul_f64(0.75 + rand::random::<f64>() * 0.5)
    }
}

/// Why a jittered socket ended: the tool reset it on purpose.
pub const JITTER_DROP: &str = "jitter_drop";

/// The longest a closed holder waits for a publish before reconnecting anyway (the sending may
/// have ended).
pub const AWAY_WAIT: Duration = Duration::from_secs(2);

/// Holds `opened` for `creds` (client index `client`) until `stop`, tallying what comes.
pub async fn hold(
    mut opened: Opened,
    creds: Client,
    client: u32,
    dialer: Arc<Dialer>,
    plan: HoldPlan,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally {
        client,
        replica: opened.replica.clone(),
        ..Tally::default()
    };
    let mut last_id = opened.last_id.take();
    let mut last_broadcast_id = opened.last_broadcast_id.take();
    let mut ws = opened.ws;
    live.connected.fetch_add(1, Ordering::Relaxed);
    let mut first = true;
    loop {
        let drop_due = {
            let jitter = plan.jitter.clone();
            async move {
                match jitter {
                    Some(j) => j.next_drop(first).await,
                    None => std::future::pending().await,
                }
            }
        };
        first = false;
        let end = receive(
            &mut ws,
            &plan,
            &mut tally,
            &live,
            &stop,
            &mut last_id,
            &mut last_broadcast_id,
            drop_due,
        )
        .await;
        let Some(kind) = end else {
            // Stopped by the run: a polite close, bounded, then done.
            tally.up_at_end = true;
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
            live.connected.fetch_sub(1, Ordering::Relaxed);
            return tally;
        };
        live.connected.fetch_sub(1, Ordering::Relaxed);
        let mut outage = Outage {
            replica: tally.replica.clone(),
            closed_us: plan.clock.us(),
            kind,
            back_us: None,
            back_on: None,
            resumed_from: last_id.clone(),
            welcomed_at: None,
            resumed_broadcast_from: last_broadcast_id.clone(),
        };
        if !plan.reconnect {
            tally.outages.push(outage);
            return tally;
        }
        if let (Some(jitter), true) = (&plan.jitter, outage.kind == JITTER_DROP) {
            // Offline, as a phone in a tunnel is: nothing is tried until the time is up.
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(jitter.offline_for()) => {}
            }
        }
        if let Some(acks) = &plan.away_until_published {
            wait_for_publish(acks, client, &plan, &stop).await;
        }
        let mut query = String::new();
        if let Some(id) = &last_id {
            query.push_str(&format!("&last_id={id}"));
        }
        if let Some(id) = &last_broadcast_id {
            query.push_str(&format!("&last_broadcast_id={id}"));
        }
        let mut delay = Duration::from_millis(20);
        let reopened = loop {
            if stop.is_cancelled() || Instant::now() >= plan.deadline {
                break None;
            }
            match dialer.open(&creds, None, &query).await {
                Ok(o) => break Some(o),
                Err(kind) => tally.reconnect_errors.push(kind),
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        let Some(o) = reopened else {
            tally.outages.push(outage);
            return tally;
        };
        outage.back_us = Some(plan.clock.us());
        outage.back_on = Some(o.replica.clone());
        outage.welcomed_at = o.last_id.clone();
        tally.outages.push(outage);
        tally.replica = o.replica;
        ws = o.ws;
        live.connected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until one more publish for `client` than now was accepted, bounded by [`AWAY_WAIT`],
/// the plan's deadline and `stop`.
async fn wait_for_publish(acks: &Acks, client: u32, plan: &HoldPlan, stop: &CancellationToken) {
    let before = acks.get(client);
    let until = (Instant::now() + AWAY_WAIT).min(plan.deadline);
    while acks.get(client) == before && Instant::now() < until && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads until `stop` (None) or the socket ends (Some(why)); when `drop_due` resolves, resets
/// the TCP connection itself (Some([`JITTER_DROP`])).
#[allow(clippy::too_many_arguments)]
async fn receive(
    ws: &mut Ws,
    plan: &HoldPlan,
    tally: &mut Tally,
    live: &Live,
    stop: &CancellationToken,
    last_id: &mut Option<String>,
    last_broadcast_id: &mut Option<String>,
    drop_due: impl std::future::Future<Output = ()>,
) -> Option<String> {
    let mut drop_due = std::pin::pin!(drop_due);
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return None,
            () = &mut drop_due => {
                // An RST, not a close handshake: what a lost network looks like to the server
                // once it notices (the holder drops the socket right after).
                let _ = ws.get_ref().set_zero_linger();
                return Some(JITTER_DROP.to_owned());
            }
            m = ws.next() => m,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Some(match frame {
                    Some(f) => format!("closed_{}", u16::from(f.code)),
                    None => "closed".to_owned(),
                });
            }
            // Pings are answered by tungstenite as part of reading.
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Some(crate::socket::ws_kind(&err)),
            None => return Some("closed".to_owned()),
        };
        let now = plan.clock.us();
        let Ok(frame) = serde_json::from_str::<ReceivedFrame>(&text) else {
            tally.foreign += 1;
            continue;
        };
        let ReceivedFrame::Message {
            via,
            text,
            id,
            cursor,
            replayed,
            ..
        } = frame
        else {
            continue;
        };
        // The cursor (with its history's epoch) is what to resume from; the bare id is for
        // servers of older versions.
        if let Some(position) = cursor.as_ref().or(id.as_ref()) {
            if via == Via::Broadcast {
                *last_broadcast_id = Some(position.clone());
            } else if via != Via::Channel {
                *last_id = Some(position.clone());
            }
        }
        let Some((client, seq, sent)) = parse(&plan.tag, &text) else {
            tally.foreign += 1;
            continue;
        };
        if client != tally.client && client != EVERYONE {
            tally.misdelivered += 1;
            continue;
        }
        if replayed {
            tally.replayed += 1;
        }
        tally.seqs.push(seq);
        tally.arrivals.push(Arrival {
            at_us: now,
            id,
            replayed,
        });
        live.delivered.fetch_add(1, Ordering::Relaxed);
        live.arrived.mark(seq);
        if plan.samples {
            tally.samples.push(Sample {
                at_ms: u32::try_from(now / 1000).unwrap_or(u32::MAX),
                latency_us: u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX),
                replayed,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_texts_round_trip_and_others_are_ignored() {
        assert_eq!(parse("t1", &text("t1", 7, 42, 1000)), Some((7, 42, 1000)));
        assert_eq!(
            parse("t1", &text("t1", EVERYONE, 3, 9)),
            Some((EVERYONE, 3, 9))
        );
        assert_eq!(parse("t2", &text("t1", 7, 42, 1000)), None);
        assert_eq!(parse("t1", "hello"), None);
        assert_eq!(parse("t1", "t1 x 1 2"), None);
    }

    #[test]
    fn arrived_remembers_each_seq_it_was_given_and_no_other() {
        let arrived = Arrived::new(130);
        for seq in [0, 63, 64, 129, 500] {
            arrived.mark(seq);
        }
        let marked: Vec<u64> = (0..600).filter(|&s| arrived.has(s)).collect();
        assert_eq!(marked, [0, 63, 64, 129]);
    }
}
