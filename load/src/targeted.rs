//! `stickyws load targeted`: one socket per client, then `--messages` publishes over HTTP
//! through the front door, each to one client (round robin over the clients, so the per-client
//! send rate stays low), at `--rate` or as fast as `--concurrency` allows. Reports deliveries/s,
//! publish-to-receipt latency, loss, duplicates and misdeliveries. [`crate::failover`] reuses
//! the run with a fault in the middle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::CpuUsed;
use crate::deliveries::{self, Acks, Arrived, HoldPlan, Tally};
use crate::fleet::{self, Fleet, FleetPlan};
use crate::plot;
use crate::progress::Progress;
use crate::publisher::{Request, Sent};
use crate::report::{Errors, Latencies, Report, per_second, percent};

/// A fault to inject while publishing (failover).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fault {
    pub pid: u32,
    pub signal: nix::sys::signal::Signal,
    /// Time after the first publish.
    pub after: Duration,
}

/// Everything a targeted run observed, for the report.
#[derive(Debug)]
pub(super) struct Observed {
    pub minted: usize,
    pub mint_errors: Errors,
    pub fleet_opened: u64,
    pub fleet_errors: Errors,
    pub by_replica: BTreeMap<String, u64>,
    pub sent: Sent,
    pub tallies: Vec<Tally>,
    pub cpu: Option<CpuUsed>,
    /// When the fault was injected (µs on the run clock).
    pub fault_us: Option<u64>,
    /// The client indexes published to, round robin by seq.
    pub clients: Vec<u32>,
    /// When the settling ended and the fleet was stopped (µs on the run clock), and the
    /// deliveries counted by then.
    pub stopped_us: u64,
    pub delivered_at_stop: u64,
}

/// Delivery accounting for per-client messages: each accepted seq is due once, at its client.
#[derive(Debug, Default)]
pub(super) struct Accounting {
    /// Every arrival of this run's messages at the right client, duplicates included.
    pub arrivals: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// The lost seqs, ascending.
    pub lost_seqs: Vec<u64>,
    /// Arrived although the publish was not answered 2xx (e.g. the answer timed out).
    pub unconfirmed: u64,
    pub misdelivered: u64,
    pub replayed: u64,
    pub foreign: u64,
    /// Accepted publishes whose answer said no replica held the client.
    pub no_receiver: u64,
    pub latencies: Latencies,
    pub arrival_ms: Vec<u32>,
    /// Last arrival, µs on the run clock.
    pub last_arrival_us: u64,
}

pub(super) fn account(sent: &Sent, tallies: &[Tally]) -> Accounting {
    let accepted: HashSet<u64> = sent.accepted.iter().map(|a| a.seq).collect();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut acc = Accounting::default();
    let mut micros = Vec::new();
    for tally in tallies {
        for &seq in &tally.seqs {
            *seen.entry(seq).or_default() += 1;
        }
        acc.misdelivered += tally.misdelivered;
        acc.replayed += tally.replayed;
        acc.foreign += tally.foreign;
        for s in &tally.samples {
            micros.push(s.latency_us);
            acc.arrival_ms.push(s.at_ms);
            acc.last_arrival_us = acc.last_arrival_us.max(u64::from(s.at_ms) * 1000);
        }
    }
    acc.arrivals = seen.values().map(|&n| u64::from(n)).sum();
    acc.unique = seen.len() as u64;
    acc.duplicates = acc.arrivals - acc.unique;
    acc.lost_seqs = sent
        .accepted
        .iter()
        .map(|a| a.seq)
        .filter(|s| !seen.contains_key(s))
        .collect();
    acc.lost = acc.lost_seqs.len() as u64;
    acc.unconfirmed = seen.keys().filter(|s| !accepted.contains(s)).count() as u64;
    acc.no_receiver = sent
        .accepted
        .iter()
        .filter(|a| a.body["receivers"].as_u64() == Some(0))
        .count() as u64;
    acc.latencies = Latencies::from_micros(micros);
    acc
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    if ctx.args.batch > 1 && ctx.args.api_key.is_none() {
        anyhow::bail!("--batch publishes through POST /api/publish: it needs --api-key");
    }
    let observed = publish_run(ctx, None).await?;
    let acc = account(&observed.sent, &observed.tallies);
    let mut report = ctx.report();
    report_common(ctx, &mut report, &observed, &acc);
    ctx.publish(&report)?;
    plots(ctx, &observed, &acc, &[])?;
    Ok(())
}

/// Mints, connects, publishes (injecting `fault` if given), waits for stragglers, collects.
pub(super) async fn publish_run(ctx: &Ctx, fault: Option<Fault>) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    // With a fault, a client whose socket closes waits for a publish before it reconnects, so
    // the replay after the fault is exercised on every run, not only when the timing allows.
    let acks = fault.map(|_| Arc::new(Acks::new(args.sockets)));
    let (creds, mint_errors, fleet) = connect_clients(ctx, acks.clone()).await?;
    let meter = ctx.servers.as_ref().map(|s| s.start());
    let clients = fleet.clients();
    let (sent, fault_us) = publish(ctx, &creds, &clients, fault, acks).await;
    let stopped_us = ctx.clock.us();
    let delivered_at_stop = ctx
        .live
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    let cpu = meter.map(|m| m.finish());
    let fleet_opened = fleet.opened();
    let fleet_errors = fleet.errors.clone();
    let by_replica = fleet.by_replica.clone();
    let tallies = fleet.stop().await;
    Ok(Observed {
        minted: creds.len(),
        mint_errors,
        fleet_opened,
        fleet_errors,
        by_replica,
        sent,
        tallies,
        cpu,
        fault_us,
        clients,
        stopped_us,
        delivered_at_stop,
    })
}

/// Mints `--sockets` clients and opens a reconnecting socket for each; fails when none opened.
async fn connect_clients(
    ctx: &Ctx,
    acks: Option<Arc<Acks>>,
) -> anyhow::Result<(Vec<Client>, Errors, Fleet)> {
    let args = &ctx.args;
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;
    if creds.is_empty() {
        anyhow::bail!("could not mint any client: {}", mint_errors.line());
    }
    let fleet = open_fleet(ctx, &creds, true, acks).await;
    if fleet.clients().is_empty() {
        fleet.stop().await;
        anyhow::bail!(
            "no socket opened: {}",
            merged(&mint_errors, &Errors::default())
        );
    }
    Ok((creds, mint_errors, fleet))
}

/// Publishes `--messages` round robin over the connected `clients`, signalling `fault` on
/// time, and lets the deliveries settle; returns what was sent and when the fault went out
/// (µs on the run clock).
async fn publish(
    ctx: &Ctx,
    creds: &[Client],
    clients: &[u32],
    fault: Option<Fault>,
    acks: Option<Arc<Acks>>,
) -> (Sent, Option<u64>) {
    let args = &ctx.args;
    let rate = if args.rate == 0.0 && fault.is_some() {
        500.0
    } else {
        args.rate
    };
    let live = ctx.live.clone();
    let bar = Progress::start(
        "publish",
        args.messages,
        move || live.delivered.load(std::sync::atomic::Ordering::Relaxed),
        {
            let live = ctx.live.clone();
            move || {
                format!(
                    "sent {} · sockets {}",
                    live.sent.load(std::sync::atomic::Ordering::Relaxed),
                    live.connected.load(std::sync::atomic::Ordering::Relaxed)
                )
            }
        },
    );
    let fault_task = fault.map(|fault| {
        let clock = ctx.clock;
        tokio::spawn(async move {
            tokio::time::sleep(fault.after).await;
            let at = clock.us();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(fault.pid).unwrap_or(i32::MAX)),
                fault.signal,
            );
            at
        })
    });
    let tag = ctx.tag.clone();
    let targets: Vec<(u32, Client)> = clients
        .iter()
        .map(|&c| (c, creds[c as usize].clone()))
        .collect();
    let sent = send(ctx, rate, move |seq, now| {
        let (client, creds) = &targets[(seq % targets.len() as u64) as usize];
        Request {
            path: format!("/api/publish/{}", creds.client_id),
            bearer: creds.token.clone(),
            sticky: None,
            text: deliveries::text(&tag, *client, seq, now),
            ack: acks.clone().map(|acks| (acks, *client)),
        }
    })
    .await;
    let fault_us = match fault_task {
        Some(task) => task.await.ok(),
        None => None,
    };
    settle_accepted(ctx, &sent).await;
    drop(bar);
    (sent, fault_us)
}

/// What [`Ctx::send`] sends, or with `--batch N` the same messages N to a request through
/// `POST /api/publish` with the API key (`--api-key`).
pub(super) async fn send<F>(ctx: &Ctx, rate: f64, make: F) -> Sent
where
    F: Fn(u64, u64) -> Request + Send + Sync + 'static,
{
    let args = &ctx.args;
    let Some(key) = args.api_key.clone().filter(|_| args.batch > 1) else {
        return ctx.send(rate, make).await;
    };
    let plan = crate::publisher::Plan {
        count: args.messages,
        rate,
        concurrency: args.concurrency,
        deadline: ctx.until_deadline(Duration::from_secs_f64(args.settle + 2.0)),
    };
    let (http, base) = (ctx.deployment.http.clone(), ctx.deployment.base.clone());
    let batching = (args.batch, key);
    crate::publisher::send_batches(
        http,
        base,
        plan,
        batching,
        ctx.clock,
        ctx.live.clone(),
        make,
    )
    .await
}

/// `" in batches of N"` under `--batch N`, else nothing.
pub(super) fn batch_note(ctx: &Ctx) -> String {
    if ctx.args.batch > 1 {
        format!(" in batches of {}", ctx.args.batch)
    } else {
        String::new()
    }
}

/// Two error tallies as one line.
pub(super) fn merged(a: &Errors, b: &Errors) -> String {
    let mut all = a.clone();
    all.merge(b);
    all.line()
}

/// Opens one socket per client, with a progress bar; `away_until_published` as in
/// [`HoldPlan`].
pub(super) async fn open_fleet(
    ctx: &Ctx,
    creds: &[Client],
    reconnect: bool,
    away_until_published: Option<Arc<Acks>>,
) -> Fleet {
    let live = ctx.live.clone();
    let bar = Progress::start(
        "connect",
        creds.len() as u64,
        move || {
            live.connected
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(0) as u64
        },
        String::new,
    );
    let plan = FleetPlan {
        sticky: None,
        concurrency: ctx.args.connect_concurrency,
        rate: ctx.args.connect_rate,
        hold: HoldPlan {
            tag: ctx.tag.clone(),
            clock: ctx.clock,
            reconnect,
            deadline: ctx.until_deadline(Duration::from_secs(2)),
            samples: true,
            away_until_published,
            jitter: None,
        },
    };
    let fleet = fleet::open(ctx.dialer.clone(), creds, plan, ctx.live.clone()).await;
    drop(bar);
    fleet
}

/// Waits until `expected` deliveries have arrived, `--settle` seconds, or the deadline.
pub(super) async fn settle(ctx: &Ctx, expected: u64) {
    let until = (Instant::now() + Duration::from_secs_f64(ctx.args.settle))
        .min(ctx.until_deadline(Duration::from_secs(1)));
    while Instant::now() < until
        && ctx
            .live
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            < expected
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every accepted publish has arrived at least once, `--settle` seconds, or the
/// deadline. Counting deliveries up to the number accepted would not do: a publish whose answer
/// was lost (its replica was killed after the broker took the message: a 502) still arrives, and
/// would stand in for an accepted one still on its way — which the run would then call lost.
async fn settle_accepted(ctx: &Ctx, sent: &Sent) {
    let until = (Instant::now() + Duration::from_secs_f64(ctx.args.settle))
        .min(ctx.until_deadline(Duration::from_secs(1)));
    let seqs = sent.accepted.iter().map(|a| a.seq).collect();
    wait_arrived(&ctx.live.arrived, seqs, until).await;
}

/// Waits until each of `seqs` has arrived, or `until`; returns those still missing.
async fn wait_arrived(arrived: &Arrived, mut missing: Vec<u64>, until: Instant) -> Vec<u64> {
    loop {
        missing.retain(|&seq| !arrived.has(seq));
        if missing.is_empty() || Instant::now() >= until {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rows and figures targeted and failover share.
pub(super) fn report_common(ctx: &Ctx, report: &mut Report, o: &Observed, acc: &Accounting) {
    let sent = &o.sent;
    let attempted = sent.attempted();
    let send_s = sent.seconds();
    let window_s = acc.last_arrival_us.saturating_sub(sent.first_us) as f64 / 1e6;
    let deliveries_per_s = per_second(acc.unique, window_s.max(send_s));
    report.row(
        "sockets",
        format!(
            "{} opened of {} ({}); failures: {}",
            o.fleet_opened,
            ctx.args.sockets,
            spread(&o.by_replica),
            merged(&o.mint_errors, &o.fleet_errors)
        ),
    );
    report.row(
        "sent",
        format!(
            "{attempted} publishes{} in {send_s:.2} s ({:.0}/s{}), {} in flight at most",
            batch_note(ctx),
            per_second(attempted, send_s),
            if ctx.args.rate > 0.0 {
                format!(", target {}/s", ctx.args.rate)
            } else {
                String::new()
            },
            ctx.args.concurrency
        ),
    );
    report.row(
        "accepted",
        format!(
            "{} (2xx); errors: {}; answered receivers=0: {}",
            sent.accepted.len(),
            sent.errors.line(),
            acc.no_receiver
        ),
    );
    report.row(
        "delivered",
        format!(
            "{} ({deliveries_per_s:.0}/s)  lost {}  duplicates {}  misdelivered {}  replayed {}",
            acc.unique, acc.lost, acc.duplicates, acc.misdelivered, acc.replayed
        ),
    );
    report.row("latency", acc.latencies.line());
    report.row(
        "http round trip",
        Latencies::from_micros(sent.round_trips.clone()).line(),
    );
    if let Some(cpu) = &o.cpu {
        report.row("server CPU", cpu.line(acc.unique, "delivery"));
        report.figure("cpu", cpu.json(acc.unique, "delivery"));
    }
    report.figure("sockets", o.fleet_opened);
    report.figure("batch", ctx.args.batch.max(1) as u64);
    report.figure("minted", o.minted as u64);
    report.figure("socket_errors", o.fleet_errors.json());
    report.figure("sockets_by_replica", json!(o.by_replica));
    report.figure("sent", attempted);
    report.figure("accepted", sent.accepted.len() as u64);
    report.figure("send_errors", sent.errors.json());
    report.figure("send_seconds", send_s);
    report.figure("target_rate", ctx.args.rate);
    report.figure("send_rate", per_second(attempted, send_s));
    report.figure("max_schedule_lag_ms", sent.max_lag_us as f64 / 1000.0);
    report.figure("concurrency", ctx.args.concurrency as u64);
    report.figure("delivered", acc.unique);
    report.figure("deliveries_per_s", deliveries_per_s);
    report.figure("lost", acc.lost);
    report.figure(
        "loss_percent",
        percent(acc.lost, sent.accepted.len() as u64),
    );
    report.figure("duplicates", acc.duplicates);
    report.figure("misdelivered", acc.misdelivered);
    report.figure("unconfirmed", acc.unconfirmed);
    report.figure("replayed", acc.replayed);
    report.figure("no_receiver", acc.no_receiver);
    report.figure("latency", acc.latencies.json());
    report.figure("lost_messages", lost_messages(o, acc));
    report.figure(
        "settled",
        json!({"stopped_ms": ms_since(o.stopped_us, sent.first_us),
               "delivered_at_stop": o.delivered_at_stop,
               "accepted": sent.accepted.len()}),
    );
    report.figure(
        "http_round_trip",
        Latencies::from_micros(sent.round_trips.clone()).json(),
    );
    for second in per_second_lines(&acc.arrival_ms, sent.first_us) {
        report.line("second", second);
    }
}

/// Most lost messages named one by one in the report.
const LOST_NAMED: usize = 20;

/// `at_us` as ms since `origin_us` (negative before it).
fn ms_since(at_us: u64, origin_us: u64) -> f64 {
    (at_us as f64 - origin_us as f64) / 1000.0
}

/// The first [`LOST_NAMED`] lost messages, each with what tells where it went: its client, when
/// it was published and answered and what the answer said, the client's outages (closed, back,
/// on which replica, the cursor it resumed from and the one its welcome named) and the arrivals
/// just before and after it at that client. Times are ms since the first send.
fn lost_messages(o: &Observed, acc: &Accounting) -> serde_json::Value {
    let origin = o.sent.first_us;
    let by_seq: HashMap<u64, &crate::publisher::Accepted> =
        o.sent.accepted.iter().map(|a| (a.seq, a)).collect();
    let named: Vec<serde_json::Value> = acc
        .lost_seqs
        .iter()
        .take(LOST_NAMED)
        .filter_map(|seq| {
            let accepted = by_seq.get(seq)?;
            let client = *o
                .clients
                .get((*seq % o.clients.len().max(1) as u64) as usize)?;
            let tally = o.tallies.iter().find(|t| t.client == client);
            let outages: Vec<serde_json::Value> = tally
                .map(|t| {
                    t.outages
                        .iter()
                        .map(|out| {
                            json!({"replica": out.replica, "kind": out.kind,
                                   "closed_ms": ms_since(out.closed_us, origin),
                                   "back_ms": out.back_us.map(|b| ms_since(b, origin)),
                                   "back_on": out.back_on,
                                   "resumed_from": out.resumed_from,
                                   "welcomed_at": out.welcomed_at})
                        })
                        .collect()
                })
                .unwrap_or_default();
            let neighbour = |pick: &dyn Fn(u64) -> bool, last: bool| {
                let t = tally?;
                let found = t
                    .seqs
                    .iter()
                    .zip(&t.arrivals)
                    .filter(|(s, _)| pick(**s))
                    .map(|(s, a)| (*s, a));
                let (s, a) = if last {
                    found.max_by_key(|(s, _)| *s)?
                } else {
                    found.min_by_key(|(s, _)| *s)?
                };
                Some(
                    json!({"seq": s, "at_ms": ms_since(a.at_us, origin), "id": a.id,
                            "replayed": a.replayed}),
                )
            };
            Some(json!({
                "seq": seq,
                "client": client,
                "sent_ms": ms_since(accepted.sent_us, origin),
                "answered_ms": ms_since(accepted.answered_us, origin),
                "answer": accepted.body,
                "fault_ms": o.fault_us.map(|f| ms_since(f, origin)),
                "holder_replica": tally.map(|t| t.replica.clone()),
                "outages": outages,
                "arrived_before": neighbour(&|s| s < *seq, true),
                "arrived_after": neighbour(&|s| s > *seq, false),
            }))
        })
        .collect();
    json!(named)
}

/// Times (ms on the run clock) moved to count from `origin_us`.
pub(super) fn since_ms(times_ms: &[u32], origin_us: u64) -> Vec<u32> {
    let origin = u32::try_from(origin_us / 1000).unwrap_or(0);
    times_ms.iter().map(|t| t.saturating_sub(origin)).collect()
}

/// `app-1×33 app-2×33 app-3×34`.
pub(super) fn spread(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(r, n)| format!("{r}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `{"second": k, "deliveries": n}` for each second since the first send.
pub(super) fn per_second_lines(arrival_ms: &[u32], first_us: u64) -> Vec<serde_json::Value> {
    let origin = u32::try_from(first_us / 1000).unwrap_or(0);
    let mut by_second: BTreeMap<u32, u64> = BTreeMap::new();
    for &ms in arrival_ms {
        *by_second
            .entry(ms.saturating_sub(origin) / 1000)
            .or_default() += 1;
    }
    by_second
        .into_iter()
        .map(|(s, n)| json!({"second": s, "deliveries": n}))
        .collect()
}

/// Latency CDF, throughput (from the first send) and sockets per replica; `marks` are seconds
/// since the first send.
pub(super) fn plots(
    ctx: &Ctx,
    o: &Observed,
    acc: &Accounting,
    marks: &[(f64, &str)],
) -> anyhow::Result<()> {
    let Some(dir) = &ctx.args.plots else {
        return Ok(());
    };
    let label = ctx.label();
    plot::latency_cdf(
        &plot::path(dir, &label, "latency-cdf"),
        &format!("{label}: publish-to-receipt latency"),
        &[("publish → receipt", &acc.latencies)],
    )?;
    plot::throughput(
        &plot::path(dir, &label, "throughput"),
        &format!("{label}: deliveries over time"),
        "deliveries",
        &since_ms(&acc.arrival_ms, o.sent.first_us),
        100,
        marks,
    )?;
    plot::sockets_per_replica(
        &plot::path(dir, &label, "sockets"),
        &format!("{label}: sockets per replica"),
        &o.by_replica,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failover run's false loss: seq 1's publish was answered 502 (its replica died after
    /// the broker took it) yet it arrived, so the deliveries already equal the accepted count
    /// while accepted seq 2 is still on its way. The settling must wait for seq 2 itself.
    #[tokio::test]
    async fn settling_waits_for_each_accepted_message_not_for_a_count_of_deliveries() {
        let live = Arc::new(crate::deliveries::Live {
            arrived: Arrived::new(3),
            ..Default::default()
        });
        for seq in [0, 1] {
            live.arrived.mark(seq);
            live.delivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let accepted = vec![0, 2];
        let late = {
            let live = live.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                live.arrived.mark(2);
            })
        };
        let started = Instant::now();
        let missing = wait_arrived(&live.arrived, accepted, started + Duration::from_secs(5)).await;
        assert!(missing.is_empty(), "still missing {missing:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "returned before seq 2 arrived"
        );
        late.await.unwrap();
        let never = wait_arrived(&live.arrived, vec![0, 2, 1, 5], Instant::now()).await;
        assert_eq!(
            never,
            [5],
            "a seq that never came is reported at the deadline"
        );
    }
}
