//! A fleet of load sockets: opens one socket per identity, `concurrency` handshakes at a time
//! (and at most `rate` per second when given), times each handshake, counts failures by kind,
//! then holds every open socket in a task of its own until the run stops the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::deliveries::{self, HoldPlan, Live, Tally};
use crate::report::Errors;
use crate::socket::Dialer;

/// How to open the fleet.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub concurrency: usize,
    /// Handshakes started per second; 0 starts them as fast as `concurrency` allows.
    pub rate: f64,
    /// Open every socket with this replica's sticky cookie (reconnects go without it).
    pub sticky: Option<String>,
    pub hold: HoldPlan,
}

/// The open fleet.
#[derive(Debug)]
pub struct Fleet {
    holders: Vec<JoinHandle<Tally>>,
    stop: CancellationToken,
    /// Failed opens by kind.
    pub errors: Errors,
    /// Handshake (101) and welcome times of the sockets that opened, µs.
    pub upgrade_us: Vec<u32>,
    pub welcome_us: Vec<u32>,
    /// Sockets opened, by the replica that welcomed them.
    pub by_replica: BTreeMap<String, u64>,
    /// When the first handshake started and the last welcome came (µs on the run clock).
    pub first_us: u64,
    pub last_us: u64,
    /// Welcome times on the run clock, ms (the ramp, for the throughput plot).
    pub opened_at_ms: Vec<u32>,
    /// The replica that first welcomed each client index whose socket opened.
    pub replica_of: BTreeMap<u32, String>,
}

enum Opening {
    Open {
        client: u32,
        replica: String,
        upgrade: Duration,
        welcome: Duration,
        started_us: u64,
        done_us: u64,
    },
    Failed(String),
}

/// Opens a socket for each of `creds` (client index = position); returns once every attempt
/// has succeeded or failed.
pub async fn open(
    dialer: Arc<Dialer>,
    creds: &[Client],
    plan: FleetPlan,
    live: Arc<Live>,
) -> Fleet {
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut holders = Vec::with_capacity(creds.len());
    for (index, creds) in creds.iter().enumerate() {
        let (gate, dialer, tx, live, stop, creds) = (
            gate.clone(),
            dialer.clone(),
            tx.clone(),
            live.clone(),
            stop.clone(),
            creds.clone(),
        );
        let hold = plan.hold.clone();
        let rate = plan.rate;
        let sticky = plan.sticky.clone();
        holders.push(tokio::spawn(async move {
            let client = u32::try_from(index).unwrap_or(u32::MAX - 1);
            let permit = gate.acquire_owned().await;
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if Instant::now() >= hold.deadline {
                let _ = tx.send(Opening::Failed("not_started_before_deadline".to_owned()));
                return Tally::default();
            }
            let started_us = hold.clock.us();
            let opened = dialer.open(&creds, sticky.as_deref(), "").await;
            drop(permit);
            let opened = match opened {
                Ok(o) => o,
                Err(kind) => {
                    let _ = tx.send(Opening::Failed(kind));
                    return Tally {
                        client,
                        ..Tally::default()
                    };
                }
            };
            let _ = tx.send(Opening::Open {
                client,
                replica: opened.replica.clone(),
                upgrade: opened.upgrade,
                welcome: opened.welcome,
                started_us,
                done_us: hold.clock.us(),
            });
            // The fleet's opening phase ends when every sender is gone.
            drop(tx);
            deliveries::hold(opened, creds, client, dialer, hold, live, stop).await
        }));
    }
    drop(tx);
    let mut fleet = Fleet {
        holders,
        stop,
        errors: Errors::default(),
        upgrade_us: Vec::new(),
        welcome_us: Vec::new(),
        by_replica: BTreeMap::new(),
        first_us: u64::MAX,
        last_us: 0,
        opened_at_ms: Vec::new(),
        replica_of: BTreeMap::new(),
    };
    let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    while let Some(opening) = rx.recv().await {
        match opening {
            Opening::Open {
                client,
                replica,
                upgrade,
                welcome,
                started_us,
                done_us,
            } => {
                fleet.replica_of.insert(client, replica.clone());
                fleet.upgrade_us.push(micros(upgrade));
                fleet.welcome_us.push(micros(welcome));
                *fleet.by_replica.entry(replica).or_default() += 1;
                fleet.first_us = fleet.first_us.min(started_us);
                fleet.last_us = fleet.last_us.max(done_us);
                fleet
                    .opened_at_ms
                    .push(u32::try_from(done_us / 1000).unwrap_or(u32::MAX));
            }
            Opening::Failed(kind) => fleet.errors.add(&kind),
        }
    }
    if fleet.first_us == u64::MAX {
        fleet.first_us = 0;
    }
    fleet
}

impl Fleet {
    /// Client indices whose socket opened, ascending.
    pub fn clients(&self) -> Vec<u32> {
        self.replica_of.keys().copied().collect()
    }

    pub fn opened(&self) -> u64 {
        self.welcome_us.len() as u64
    }

    /// Seconds from the first handshake started to the last welcome.
    pub fn ramp_seconds(&self) -> f64 {
        self.last_us.saturating_sub(self.first_us) as f64 / 1e6
    }

    /// Stops every holder and collects what each socket received (failed opens included, as
    /// empty tallies).
    pub async fn stop(self) -> Vec<Tally> {
        self.stop.cancel();
        let mut tallies = Vec::with_capacity(self.holders.len());
        for holder in self.holders {
            if let Ok(tally) = holder.await {
                tallies.push(tally);
            }
        }
        tallies
    }
}
