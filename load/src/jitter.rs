//! `stickyws load jitter`: the jitter benchmark as AnyCable's nodejs-websocket-bench runs it.
//! `--clients` sockets receive `--messages` broadcasts (API key, `/api/broadcast`) at `--rate`
//! per second, while each socket's TCP connection is reset about every `--jitter-every` seconds
//! and stays offline about `--offline` seconds, then reconnects through the front door resuming
//! from its cursors (`last_broadcast_id`: the welcome's, then the last message's `cursor`).
//! Reports the delivery rate (delivered / expected), duplicates and the latency of the messages
//! that came by replay, beside the figures AnyCable published; fails on any loss or duplicate.
//!
//! Broadcasts, not targeted publishes or a channel: AnyCable's benchmark sends every message to
//! every client (one stream all subscribe to), and a broadcast is resumed by the socket's own
//! reconnect URL, the path every page uses. [`crate::avalanche`] reuses the run with a replica
//! killed instead of the drops. Killing and the cluster's processes are the caller's business.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::CpuUsed;
use crate::deliveries::{self, EVERYONE, HoldPlan, JITTER_DROP, Jitter, Tally};
use crate::fleet::{self, FleetPlan};
use crate::plot;
use crate::progress::Progress;
use crate::publisher::{Request, Sent};
use crate::report::{Errors, Latencies, Report, per_second, percent};
use crate::targeted::{merged, since_ms, spread};

/// What AnyCable published for the same benchmark (nodejs-websocket-bench: 2 s drops about
/// every 15 s; latency is publish-to-receipt over every message, so its p99 is the replayed
/// ones'). Printed beside each run.
pub const ANCHORS: &str = "socket.io 84.55 %, uWebSockets.js 87.03 %, socket.io with connection \
                           state recovery 100 % (p99 4.58 s), AnyCable 100 % (p99 6.14 s)";

/// A replica to SIGKILL while broadcasting (the avalanche).
#[derive(Debug, Clone, Copy)]
pub(super) struct Kill {
    pub pid: u32,
    /// Time after the first broadcast.
    pub after: Duration,
}

/// How the resuming run goes.
#[derive(Debug, Clone, Default)]
pub(super) struct RunPlan {
    pub jitter: Option<(Duration, Duration)>,
    /// Open every socket on this replica (its sticky cookie).
    pub sticky: Option<String>,
    pub kill: Option<Kill>,
}

/// Everything a resuming run observed.
#[derive(Debug)]
pub(super) struct Observed {
    pub sockets: u64,
    pub mint_errors: Errors,
    pub fleet_errors: Errors,
    pub by_replica: BTreeMap<String, u64>,
    pub sent: Sent,
    pub tallies: Vec<Tally>,
    pub cpu: Option<CpuUsed>,
    pub kill_us: Option<u64>,
    /// When the sending ended (µs on the run clock): no drop starts after it.
    pub ended_us: u64,
}

/// Broadcast accounting across reconnects: each accepted broadcast is due once at every socket
/// that opened, whether it came live or by replay.
#[derive(Debug, Default)]
pub(super) struct Accounting {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Arrived although the broadcast was not answered 2xx.
    pub unconfirmed: u64,
    pub replayed: u64,
    pub misdelivered: u64,
    /// Publish to receipt, every message (AnyCable's latency figure).
    pub latency: Latencies,
    /// Publish to receipt, the messages that came by replay.
    pub replay_latency: Latencies,
    /// From the welcome of a reconnect to the last message it replayed, for each reconnect that
    /// replayed anything: how long catching up took.
    pub catch_up: Latencies,
    pub drops: u64,
    /// The other closes, by kind (the server's doing, or the kill's).
    pub closed_by: BTreeMap<String, u64>,
    pub never_back: u64,
    pub reconnect_failures: u64,
    pub arrival_ms: Vec<u32>,
    /// (client, seq) of the first lost deliveries, to look into.
    pub lost_named: Vec<(u32, u64)>,
    /// The first duplicated deliveries: client, seq, each arrival (ms since the first send,
    /// replayed or live) and that client's reconnects (ms, the cursor resumed from).
    pub duplicates_named: Vec<serde_json::Value>,
}

impl Accounting {
    pub fn delivery_percent(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.delivered as f64 * 100.0 / self.expected as f64
    }
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let args = &ctx.args;
    if args.rate <= 0.0 {
        anyhow::bail!("jitter broadcasts at a fixed rate: give --rate (e.g. 20)");
    }
    let plan = RunPlan {
        jitter: Some((
            Duration::from_secs_f64(args.jitter_every.max(0.1)),
            Duration::from_secs_f64(args.offline.max(0.0)),
        )),
        ..RunPlan::default()
    };
    let observed = resume_run(ctx, plan).await?;
    let acc = account(&observed);
    let mut report = ctx.report();
    report_common(ctx, &mut report, &observed, &acc);
    let (every, offline) = (args.jitter_every, args.offline);
    report.row(
        "jitter",
        format!(
            "{} drops (TCP reset) about every {every} s, offline about {offline} s (±25 %); \
             other closes: {}; never back {}; failed reconnect attempts {}",
            acc.drops,
            kinds(&acc.closed_by),
            acc.never_back,
            acc.reconnect_failures
        ),
    );
    report.row("published", ANCHORS.to_owned());
    report.figure(
        "jitter",
        json!({"every_s": every, "offline_s": offline, "drops": acc.drops}),
    );
    ctx.publish(&report)?;
    plots(ctx, &observed, &acc)?;
    verdict(&acc)
}

/// Fails the run on any loss or duplicate, after the report is out.
pub(super) fn verdict(acc: &Accounting) -> anyhow::Result<()> {
    if acc.lost > 0 || acc.duplicates > 0 || acc.expected == 0 {
        anyhow::bail!(
            "delivered {} of {} ({:.2} %), lost {}, duplicates {}; first lost (client, seq): {:?}",
            acc.delivered,
            acc.expected,
            acc.delivery_percent(),
            acc.lost,
            acc.duplicates,
            acc.lost_named
        );
    }
    Ok(())
}

/// Mints, opens a reconnecting socket per client, broadcasts `--messages` at `--rate` with the
/// drops or the kill going on, and waits until every socket is back and has everything.
pub(super) async fn resume_run(ctx: &Ctx, plan: RunPlan) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    let key = args
        .api_key
        .clone()
        .context("this scenario broadcasts: it needs the API key (--api-key or API_KEY)")?;
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;
    if creds.is_empty() {
        anyhow::bail!("could not mint any client: {}", mint_errors.line());
    }
    let jitter = plan.jitter.map(|(every, offline)| Jitter {
        every,
        offline,
        started: CancellationToken::new(),
        ended: CancellationToken::new(),
    });
    let fleet = {
        let live = ctx.live.clone();
        let bar = Progress::start(
            "connect",
            creds.len() as u64,
            move || live.connected.load(Ordering::Relaxed).max(0) as u64,
            String::new,
        );
        let fleet_plan = FleetPlan {
            concurrency: args.connect_concurrency,
            rate: args.connect_rate,
            sticky: plan.sticky.clone(),
            hold: HoldPlan {
                tag: ctx.tag.clone(),
                clock: ctx.clock,
                reconnect: true,
                deadline: ctx.until_deadline(Duration::from_secs(2)),
                samples: true,
                away_until_published: None,
                jitter: jitter.clone(),
            },
        };
        let fleet = fleet::open(ctx.dialer.clone(), &creds, fleet_plan, ctx.live.clone()).await;
        drop(bar);
        fleet
    };
    let sockets = fleet.opened();
    if sockets == 0 {
        let errors = merged(&mint_errors, &fleet.errors);
        fleet.stop().await;
        anyhow::bail!("no socket opened: {errors}");
    }
    let meter = ctx.servers.as_ref().map(|s| s.start());
    let live = ctx.live.clone();
    let bar = Progress::start(
        "deliver",
        args.messages * sockets,
        move || live.delivered.load(Ordering::Relaxed),
        {
            let live = ctx.live.clone();
            move || {
                format!(
                    "broadcasts {} · sockets {}",
                    live.sent.load(Ordering::Relaxed),
                    live.connected.load(Ordering::Relaxed)
                )
            }
        },
    );
    if let Some(j) = &jitter {
        j.started.cancel();
    }
    let kill_task = plan.kill.map(|kill| {
        let clock = ctx.clock;
        tokio::spawn(async move {
            tokio::time::sleep(kill.after).await;
            let at = clock.us();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(kill.pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
            at
        })
    });
    let tag = ctx.tag.clone();
    let sent = ctx
        .send(args.rate, move |seq, now| Request {
            path: "/api/broadcast".to_owned(),
            bearer: key.clone(),
            sticky: None,
            text: deliveries::text(&tag, EVERYONE, seq, now),
            ack: None,
        })
        .await;
    if let Some(j) = &jitter {
        j.ended.cancel();
    }
    let ended_us = ctx.clock.us();
    let kill_us = match kill_task {
        Some(task) => task.await.ok(),
        None => None,
    };
    // A socket offline when the sending ended still has its drop to sit out and its replay to
    // take: the settling allows for both.
    let away = plan
        .jitter
        .map_or(Duration::ZERO, |(_, offline)| offline.mul_f64(1.25));
    settle_all(ctx, sent.accepted.len() as u64 * sockets, sockets, away).await;
    drop(bar);
    let cpu = meter.map(|m| m.finish());
    let by_replica = fleet.by_replica.clone();
    let fleet_errors = fleet.errors.clone();
    let tallies = fleet.stop().await;
    Ok(Observed {
        sockets,
        mint_errors,
        fleet_errors,
        by_replica,
        sent,
        tallies,
        cpu,
        kill_us,
        ended_us,
    })
}

/// Waits until every socket is connected, at least `expected` deliveries came and none came for
/// a moment (a replay still streaming keeps it waiting), or `--settle` + `away` seconds.
async fn settle_all(ctx: &Ctx, expected: u64, sockets: u64, away: Duration) {
    let until = (Instant::now() + Duration::from_secs_f64(ctx.args.settle) + away)
        .min(ctx.until_deadline(Duration::from_secs(1)));
    let quiet_for = Duration::from_millis(300);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    while Instant::now() < until {
        let delivered = ctx.live.delivered.load(Ordering::Relaxed);
        let connected = ctx.live.connected.load(Ordering::Relaxed).max(0) as u64;
        if delivered != last {
            (last, since) = (delivered, Instant::now());
        } else if delivered >= expected && connected >= sockets && since.elapsed() >= quiet_for {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn account(o: &Observed) -> Accounting {
    let accepted: HashSet<u64> = o.sent.accepted.iter().map(|a| a.seq).collect();
    let mut acc = Accounting::default();
    let (mut all, mut replays, mut catch_up) = (Vec::new(), Vec::new(), Vec::new());
    for tally in o.tallies.iter().filter(|t| !t.replica.is_empty()) {
        acc.expected += accepted.len() as u64;
        let mut seen = HashSet::new();
        for &seq in &tally.seqs {
            if !seen.insert(seq) {
                acc.duplicates += 1;
                if acc.duplicates_named.len() < 5 {
                    acc.duplicates_named.push(duplicate(o, tally, seq));
                }
            }
        }
        acc.delivered += seen.iter().filter(|s| accepted.contains(s)).count() as u64;
        acc.unconfirmed += seen.iter().filter(|s| !accepted.contains(s)).count() as u64;
        for &seq in o.sent.accepted.iter().map(|a| &a.seq) {
            if !seen.contains(&seq) {
                acc.lost += 1;
                if acc.lost_named.len() < 10 {
                    acc.lost_named.push((tally.client, seq));
                }
            }
        }
        acc.replayed += tally.replayed;
        acc.misdelivered += tally.misdelivered;
        acc.reconnect_failures += tally.reconnect_errors.len() as u64;
        for s in &tally.samples {
            all.push(s.latency_us);
            if s.replayed {
                replays.push(s.latency_us);
            }
            acc.arrival_ms.push(s.at_ms);
        }
        for (i, outage) in tally.outages.iter().enumerate() {
            if outage.kind == JITTER_DROP {
                acc.drops += 1;
            } else {
                *acc.closed_by.entry(outage.kind.clone()).or_default() += 1;
            }
            let Some(back) = outage.back_us else {
                acc.never_back += 1;
                continue;
            };
            // This connection's life: from its welcome to the next close.
            let end = tally.outages.get(i + 1).map_or(u64::MAX, |n| n.closed_us);
            let last_replayed = tally
                .arrivals
                .iter()
                .filter(|a| a.replayed && a.at_us >= back && a.at_us < end)
                .map(|a| a.at_us)
                .max();
            if let Some(at) = last_replayed {
                catch_up.push(u32::try_from(at - back).unwrap_or(u32::MAX));
            }
        }
    }
    acc.latency = Latencies::from_micros(all);
    acc.replay_latency = Latencies::from_micros(replays);
    acc.catch_up = Latencies::from_micros(catch_up);
    acc
}

/// What tells where a duplicate came from.
fn duplicate(o: &Observed, tally: &Tally, seq: u64) -> serde_json::Value {
    let origin = o.sent.first_us;
    let ms = |us: u64| us.saturating_sub(origin) / 1000;
    let arrivals: Vec<_> = tally
        .seqs
        .iter()
        .zip(&tally.arrivals)
        .filter(|(s, _)| **s == seq)
        .map(|(_, a)| json!({"at_ms": ms(a.at_us), "replayed": a.replayed, "id": a.id}))
        .collect();
    let reconnects: Vec<_> = tally
        .outages
        .iter()
        .map(|out| {
            json!({"closed_ms": ms(out.closed_us), "back_ms": out.back_us.map(ms),
                   "kind": out.kind, "back_on": out.back_on,
                   "resumed_broadcast_from": out.resumed_broadcast_from})
        })
        .collect();
    json!({"client": tally.client, "seq": seq, "arrivals": arrivals, "reconnects": reconnects})
}

/// The rows and figures jitter and avalanche share.
pub(super) fn report_common(ctx: &Ctx, report: &mut Report, o: &Observed, acc: &Accounting) {
    let sent = &o.sent;
    let send_s = sent.seconds();
    report.row(
        "sockets",
        format!(
            "{} opened of {} ({}); failures: {}",
            o.sockets,
            ctx.args.sockets,
            spread(&o.by_replica),
            merged(&o.mint_errors, &o.fleet_errors)
        ),
    );
    report.row(
        "broadcasts",
        format!(
            "{} sent in {send_s:.2} s ({:.0}/s, target {}/s), {} accepted; errors: {}",
            sent.attempted(),
            per_second(sent.attempted(), send_s),
            ctx.args.rate,
            sent.accepted.len(),
            sent.errors.line()
        ),
    );
    report.row(
        "delivery rate",
        format!(
            "{:.2} % ({} of {})  lost {}  duplicates {}  replayed {}  unconfirmed {}  \
             misdelivered {}",
            acc.delivery_percent(),
            acc.delivered,
            acc.expected,
            acc.lost,
            acc.duplicates,
            acc.replayed,
            acc.unconfirmed,
            acc.misdelivered
        ),
    );
    report.row("latency (all)", acc.latency.line());
    report.row("replayed: publish→receipt", acc.replay_latency.line());
    report.row("reconnect→caught up", acc.catch_up.line());
    if let Some(cpu) = &o.cpu {
        report.row("server CPU", cpu.line(acc.delivered, "delivery"));
        report.figure("cpu", cpu.json(acc.delivered, "delivery"));
    }
    report.figure("sockets", o.sockets);
    report.figure("socket_errors", o.fleet_errors.json());
    report.figure("sockets_by_replica", json!(o.by_replica));
    report.figure("sent", sent.attempted());
    report.figure("accepted", sent.accepted.len() as u64);
    report.figure("send_errors", sent.errors.json());
    report.figure("send_seconds", send_s);
    report.figure("target_rate", ctx.args.rate);
    report.figure("expected", acc.expected);
    report.figure("delivered", acc.delivered);
    report.figure("delivery_percent", acc.delivery_percent());
    report.figure("lost", acc.lost);
    report.figure("loss_percent", percent(acc.lost, acc.expected));
    report.figure("duplicates", acc.duplicates);
    report.figure("unconfirmed", acc.unconfirmed);
    report.figure("misdelivered", acc.misdelivered);
    report.figure("replayed", acc.replayed);
    report.figure("latency", acc.latency.json());
    report.figure("replay_latency", acc.replay_latency.json());
    report.figure("catch_up", acc.catch_up.json());
    report.figure("closed_by", json!(acc.closed_by));
    report.figure("never_back", acc.never_back);
    report.figure("reconnect_failures", acc.reconnect_failures);
    report.figure("lost_named", json!(acc.lost_named));
    report.figure("duplicates_named", json!(acc.duplicates_named));
    report.figure("anchors", ANCHORS);
    report.figure(
        "sending_ended_s",
        o.ended_us.saturating_sub(sent.first_us) as f64 / 1e6,
    );
}

fn kinds(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Latency CDFs (all, replayed, catch-up) and deliveries over time.
pub(super) fn plots(ctx: &Ctx, o: &Observed, acc: &Accounting) -> anyhow::Result<()> {
    let Some(dir) = &ctx.args.plots else {
        return Ok(());
    };
    let label = ctx.label();
    plot::latency_cdf(
        &plot::path(dir, &label, "latency-cdf"),
        &format!("{label}: latency"),
        &[
            ("publish → receipt, all", &acc.latency),
            ("publish → receipt, replayed", &acc.replay_latency),
            ("reconnect → caught up", &acc.catch_up),
        ],
    )?;
    let marks: Vec<(f64, &str)> = o
        .kill_us
        .map(|k| (k.saturating_sub(o.sent.first_us) as f64 / 1e6, "SIGKILL"))
        .into_iter()
        .collect();
    plot::throughput(
        &plot::path(dir, &label, "throughput"),
        &format!("{label}: deliveries over time"),
        "deliveries",
        &since_ms(&acc.arrival_ms, o.sent.first_us),
        100,
        &marks,
    )?;
    Ok(())
}
