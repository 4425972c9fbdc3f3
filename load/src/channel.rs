//! `stickyws load channel`: `--sockets` subscribers on `--channels` channels (`public:bench-<i>`,
//! subscriber `i` on channel `i % C`), spread over the replicas by nginx (checked from each
//! welcome's replica) or, with `--on-one-replica`, all on one replica through its sticky cookie;
//! then `--messages` HTTP publishes with the API key, round robin over the channels. Reports
//! deliveries/s, publish-to-receipt latency, loss and duplicates per subscriber, the CPU of every
//! server process (each replica on its own, idle beside busy) and Redis's own `PUBSUB NUMSUB`
//! for the channels. Fails (non-zero exit) when anything was lost, duplicated or misdelivered.
//!
//! Receiving and tallying are [`crate::deliveries`]' (a tally's "client" is the subscriber's
//! channel index here, so a message of another channel counts as misdelivered); sending is
//! [`crate::publisher`]'s. The gateway's channel semantics are the gateway's; this only checks
//! what a subscriber sees.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stickyws::frame::ReceivedFrame;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::{self, CpuUsed, Role};
use crate::deliveries::{self, HoldPlan, Tally};
use crate::plot;
use crate::progress::Progress;
use crate::publisher::{Request, Sent};
use crate::report::{Errors, Latencies, per_second, percent};
use crate::socket::Ws;
use crate::targeted::{self, merged, settle, since_ms, spread};

/// The name of channel `i` of a run.
pub fn channel_name(i: usize) -> String {
    format!("public:bench-{i}")
}

/// The longest a subscriber waits for its `subscribed` answer.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the servers must stay near idle (after the subscribers' presence joins) before the
/// run starts, and the bound on waiting for that.
const QUIET_WINDOW: Duration = Duration::from_millis(500);
const QUIET_MS: f64 = 30.0;
const QUIET_LIMIT: Duration = Duration::from_secs(20);

/// What a channel run observed, for the report.
#[derive(Debug)]
struct Observed {
    channels: usize,
    /// Where the subscribers were put: None for nginx's choice, else the replica named.
    pinned: Option<String>,
    mint_errors: Errors,
    open_errors: Errors,
    /// Subscribers that opened and were subscribed, by replica and by channel.
    by_replica: BTreeMap<String, u64>,
    per_channel: Vec<u64>,
    sent: Sent,
    tallies: Vec<Tally>,
    cpu: Option<CpuUsed>,
    /// CPU during an idle window of `idle_s` before the publishes.
    idle: Option<(CpuUsed, f64)>,
    /// Seconds the CPU meter ran during the publishes.
    busy_s: f64,
    /// `PUBSUB NUMSUB` per channel, before the publishes (None: Redis not known or unreachable).
    numsub: Option<Vec<u64>>,
    numsub_error: Option<String>,
}

/// Delivery accounting: each accepted publish is due once at every subscriber of its channel.
#[derive(Debug)]
struct Accounting {
    accepted: u64,
    expected: u64,
    unique: u64,
    lost: u64,
    duplicates: u64,
    misdelivered: u64,
    latencies: Latencies,
    arrival_ms: Vec<u32>,
    send_s: f64,
    deliveries_per_s: f64,
    /// The publish answers' `receivers` (replicas that got the message): min, max, mean.
    receivers: Option<(u64, u64, f64)>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let key = ctx
        .args
        .api_key
        .clone()
        .context("channel publishes need the API key: --api-key or API_KEY")?;
    let observed = channel_run(ctx, key).await?;
    let acc = account(&observed);
    report(ctx, &observed, &acc)?;
    plots(ctx, &observed, &acc)?;
    if acc.lost > 0 || acc.duplicates > 0 || acc.misdelivered > 0 {
        anyhow::bail!(
            "channel fan-out broke its promise: lost {}, duplicates {}, misdelivered {}",
            acc.lost,
            acc.duplicates,
            acc.misdelivered
        );
    }
    if acc.unique == 0 {
        anyhow::bail!("nothing was delivered");
    }
    Ok(())
}

/// Mints, subscribes, checks the spread, waits for quiet, measures idle, publishes, settles.
async fn channel_run(ctx: &Ctx, key: String) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    let channels = args.channels.max(1);
    let replicas = ctx.deployment.replicas().await.unwrap_or_default();
    let pinned = if args.on_one_replica {
        Some(
            replicas
                .first()
                .cloned()
                .context("--on-one-replica needs /api/replicas to name the replicas")?,
        )
    } else {
        None
    };
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;
    if creds.is_empty() {
        anyhow::bail!("could not mint any client: {}", mint_errors.line());
    }
    let subs = subscribe_all(ctx, &creds, channels, pinned.clone()).await;
    let opened: u64 = subs.by_replica.values().sum();
    if opened == 0 {
        subs.stop.cancel();
        anyhow::bail!(
            "no subscriber opened: {}",
            merged(&mint_errors, &subs.errors)
        );
    }
    // "Spread over the replicas" is a claim about where the sockets are, so it is checked from
    // the welcomes, not assumed from nginx's configuration.
    if pinned.is_none() && replicas.len() > 1 && opened >= replicas.len() as u64 {
        let missing: Vec<&String> = replicas
            .iter()
            .filter(|r| !subs.by_replica.contains_key(*r))
            .collect();
        if !missing.is_empty() {
            subs.stop.cancel();
            anyhow::bail!(
                "the subscribers did not spread: none on {missing:?} ({})",
                spread(&subs.by_replica)
            );
        }
    }

    let names: Vec<String> = (0..channels).map(channel_name).collect();
    let redis_url = args.redis_url.clone().or_else(|| {
        let servers = ctx.servers.as_ref()?;
        servers
            .replicas()
            .into_iter()
            .find_map(|pid| cpu::environ_var(pid, "REDIS_URL"))
    });
    let (numsub, numsub_error) = match &redis_url {
        Some(url) => match numsub_of(url, &names).await {
            Ok(counts) => (Some(counts), None),
            Err(err) => (None, Some(format!("{err:#}"))),
        },
        None => (
            None,
            Some("no --redis-url, and no replica to read it from".to_owned()),
        ),
    };

    // Every subscribe made a presence join, sent to every subscriber of the channel: wait until
    // that has passed, so neither the idle window nor the run pays for it.
    let idle = match &ctx.servers {
        Some(servers) => {
            let until = Instant::now() + QUIET_LIMIT;
            loop {
                let meter = servers.start();
                tokio::time::sleep(QUIET_WINDOW).await;
                if meter.finish().total_ms() <= QUIET_MS || Instant::now() >= until {
                    break;
                }
            }
            let idle_s = args.idle.max(0.0);
            let meter = servers.start();
            tokio::time::sleep(Duration::from_secs_f64(idle_s)).await;
            Some((meter.finish(), idle_s))
        }
        None => None,
    };

    let started = Instant::now();
    let meter = ctx.servers.as_ref().map(|s| s.start());
    let expected_per_seq: Vec<u64> = subs.per_channel.clone();
    let expected_total = |accepted: &Sent| -> u64 {
        accepted
            .accepted
            .iter()
            .map(|a| expected_per_seq[(a.seq % channels as u64) as usize])
            .sum()
    };
    let live = ctx.live.clone();
    let planned: u64 = (0..args.messages)
        .map(|seq| subs.per_channel[(seq % channels as u64) as usize])
        .sum();
    let bar = Progress::start(
        "deliver",
        planned,
        move || live.delivered.load(Ordering::Relaxed),
        {
            let live = ctx.live.clone();
            move || format!("publishes {}", live.sent.load(Ordering::Relaxed))
        },
    );
    let tag = ctx.tag.clone();
    let sticky = pinned.clone();
    let sent = targeted::send(ctx, args.rate, move |seq, now| {
        let channel = (seq % channels as u64) as usize;
        Request {
            path: format!("/api/channels/{}/publish", channel_name(channel)),
            bearer: key.clone(),
            // Pinned: the publishes enter at the subscribers' replica too, so the others
            // see no request at all and any work they did would be for the fan-out.
            sticky: sticky.clone(),
            text: deliveries::text(&tag, channel as u32, seq, now),
            ack: None,
        }
    })
    .await;
    settle(ctx, expected_total(&sent)).await;
    drop(bar);
    let cpu = meter.map(|m| m.finish());
    let busy_s = started.elapsed().as_secs_f64();
    subs.stop.cancel();
    let mut tallies = Vec::with_capacity(subs.holders.len());
    for holder in subs.holders {
        if let Ok(tally) = holder.await {
            tallies.push(tally);
        }
    }
    Ok(Observed {
        channels,
        pinned,
        mint_errors,
        open_errors: subs.errors,
        by_replica: subs.by_replica,
        per_channel: subs.per_channel,
        sent,
        tallies,
        cpu,
        idle,
        busy_s,
        numsub,
        numsub_error,
    })
}

/// The subscribers, subscribed and held.
struct Subscribers {
    holders: Vec<tokio::task::JoinHandle<Tally>>,
    stop: CancellationToken,
    errors: Errors,
    by_replica: BTreeMap<String, u64>,
    per_channel: Vec<u64>,
}

/// Opens a socket for each of `creds` (with the sticky cookie `pinned` when given), subscribes
/// it to its channel and holds it; returns once every one is subscribed or has failed.
async fn subscribe_all(
    ctx: &Ctx,
    creds: &[Client],
    channels: usize,
    pinned: Option<String>,
) -> Subscribers {
    let live = ctx.live.clone();
    let bar = Progress::start(
        "subscribe",
        creds.len() as u64,
        move || live.connected.load(Ordering::Relaxed).max(0) as u64,
        String::new,
    );
    let gate = Arc::new(Semaphore::new(ctx.args.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(usize, String), String>>();
    let plan = HoldPlan {
        tag: ctx.tag.clone(),
        clock: ctx.clock,
        // A reconnect would not subscribe again: a closed subscriber stays closed, and what it
        // then misses counts as lost.
        reconnect: false,
        deadline: ctx.until_deadline(Duration::from_secs(2)),
        samples: true,
        away_until_published: None,
        jitter: None,
    };
    let mut holders = Vec::with_capacity(creds.len());
    for (index, creds) in creds.iter().enumerate() {
        let (gate, dialer, tx, live, stop, creds, plan, pinned) = (
            gate.clone(),
            ctx.dialer.clone(),
            tx.clone(),
            ctx.live.clone(),
            stop.clone(),
            creds.clone(),
            plan.clone(),
            pinned.clone(),
        );
        let channel = index % channels;
        holders.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = dialer.open(&creds, pinned.as_deref(), "").await;
            let mut opened = match opened {
                Ok(o) => o,
                Err(kind) => {
                    let _ = tx.send(Err(kind));
                    return Tally::default();
                }
            };
            if let Err(kind) = subscribe(&mut opened.ws, &channel_name(channel)).await {
                let _ = tx.send(Err(kind));
                return Tally::default();
            }
            drop(permit);
            let _ = tx.send(Ok((channel, opened.replica.clone())));
            drop(tx);
            let channel = u32::try_from(channel).unwrap_or(u32::MAX - 1);
            deliveries::hold(opened, creds, channel, dialer, plan, live, stop).await
        }));
    }
    drop(tx);
    let mut subs = Subscribers {
        holders,
        stop,
        errors: Errors::default(),
        by_replica: BTreeMap::new(),
        per_channel: vec![0; channels],
    };
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok((channel, replica)) => {
                subs.per_channel[channel] += 1;
                *subs.by_replica.entry(replica).or_default() += 1;
            }
            Err(kind) => subs.errors.add(&kind),
        }
    }
    drop(bar);
    subs
}

/// Sends the subscribe frame and waits for its `subscribed` answer; Err is the failure's kind.
async fn subscribe(ws: &mut Ws, channel: &str) -> Result<(), String> {
    let frame = json!({"type": "subscribe", "channel": channel}).to_string();
    ws.send(Message::text(frame))
        .await
        .map_err(|e| crate::socket::ws_kind(&e))?;
    let answer = async {
        while let Some(message) = ws.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => return Err("closed_before_subscribed".to_owned()),
                Ok(_) => continue,
                Err(e) => return Err(crate::socket::ws_kind(&e)),
            };
            match serde_json::from_str::<ReceivedFrame>(&text) {
                Ok(ReceivedFrame::Subscribed { channel: c, .. }) if c == channel => return Ok(()),
                Ok(ReceivedFrame::Error { code, .. }) => return Err(format!("subscribe_{code}")),
                // Presence of earlier subscribers, and anything else, before the answer.
                _ => continue,
            }
        }
        Err("closed_before_subscribed".to_owned())
    };
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err("subscribe_timeout".to_owned()))
}

/// Redis's own count of subscribers (replicas) of each channel's pub/sub channel.
async fn numsub_of(url: &str, names: &[String]) -> anyhow::Result<Vec<u64>> {
    let client = redis::Client::open(url).with_context(|| format!("redis URL {url}"))?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting to Redis timed out")??;
    let mut counts = Vec::with_capacity(names.len());
    for chunk in names.chunks(500) {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB");
        for name in chunk {
            cmd.arg(format!("stickyws:channel:{name}"));
        }
        let reply: Vec<redis::Value> = cmd.query_async(&mut conn).await?;
        // [name, count, name, count, …]
        for pair in reply.chunks(2) {
            let count = match pair.get(1) {
                Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            counts.push(count);
        }
    }
    Ok(counts)
}

fn account(o: &Observed) -> Accounting {
    let channels = o.channels as u64;
    let mut by_channel: Vec<Vec<u64>> = vec![Vec::new(); o.channels];
    for a in &o.sent.accepted {
        by_channel[(a.seq % channels) as usize].push(a.seq);
    }
    let (mut unique, mut arrivals, mut lost, mut misdelivered) = (0, 0, 0, 0);
    let mut micros = Vec::new();
    let mut arrival_ms = Vec::new();
    let mut last_arrival_us = 0;
    // A failed subscriber's tally has no replica: it was never due anything.
    for tally in o.tallies.iter().filter(|t| !t.replica.is_empty()) {
        let seen: HashSet<u64> = tally.seqs.iter().copied().collect();
        arrivals += tally.seqs.len() as u64;
        unique += seen.len() as u64;
        if let Some(due) = by_channel.get(tally.client as usize) {
            lost += due.iter().filter(|s| !seen.contains(s)).count() as u64;
        }
        misdelivered += tally.misdelivered;
        for s in &tally.samples {
            micros.push(s.latency_us);
            arrival_ms.push(s.at_ms);
            last_arrival_us = last_arrival_us.max(u64::from(s.at_ms) * 1000);
        }
    }
    let expected = by_channel
        .iter()
        .zip(&o.per_channel)
        .map(|(due, subs)| due.len() as u64 * subs)
        .sum();
    let send_s = o.sent.seconds();
    let window_s = (last_arrival_us.saturating_sub(o.sent.first_us) as f64 / 1e6).max(send_s);
    let receivers: Vec<u64> = o
        .sent
        .accepted
        .iter()
        .filter_map(|a| a.body["receivers"].as_u64())
        .collect();
    let receivers = (!receivers.is_empty()).then(|| {
        let min = receivers.iter().copied().min().unwrap_or(0);
        let max = receivers.iter().copied().max().unwrap_or(0);
        let mean = receivers.iter().sum::<u64>() as f64 / receivers.len() as f64;
        (min, max, mean)
    });
    Accounting {
        accepted: o.sent.accepted.len() as u64,
        expected,
        unique,
        lost,
        duplicates: arrivals - unique,
        misdelivered,
        latencies: Latencies::from_micros(micros),
        arrival_ms,
        send_s,
        deliveries_per_s: per_second(unique, window_s),
        receivers,
    }
}

/// Each server process's CPU, busy (during the publishes) beside idle, per second.
fn per_process(o: &Observed) -> Vec<Value> {
    let Some(cpu) = &o.cpu else {
        return Vec::new();
    };
    cpu.by_process
        .iter()
        .map(|p| {
            let idle = o.idle.as_ref().and_then(|(idle, secs)| {
                let q = idle.by_process.iter().find(|q| q.pid == p.pid)?;
                Some((q.ms(), q.ms() / secs.max(1e-9)))
            });
            json!({
                "name": p.name,
                "role": p.role.as_str(),
                "pid": p.pid,
                "busy_ms": p.ms(),
                "busy_ms_per_s": p.ms() / o.busy_s.max(1e-9),
                "idle_ms": idle.map(|i| i.0),
                "idle_ms_per_s": idle.map(|i| i.1),
            })
        })
        .collect()
}

/// Prints and writes the report.
fn report(ctx: &Ctx, o: &Observed, acc: &Accounting) -> anyhow::Result<()> {
    let args = &ctx.args;
    let mut report = ctx.report();
    let opened: u64 = o.by_replica.values().sum();
    report.row(
        "subscribers",
        format!(
            "{opened} subscribed of {} on {} channel(s) ({}{}); failures: {}",
            args.sockets,
            o.channels,
            spread(&o.by_replica),
            o.pinned
                .as_ref()
                .map(|r| format!(", all pinned to {r}"))
                .unwrap_or_default(),
            merged(&o.mint_errors, &o.open_errors)
        ),
    );
    report.row(
        "publishes",
        format!(
            "{} sent{} in {:.2} s ({:.0}/s), {} accepted; errors: {}{}",
            o.sent.attempted(),
            targeted::batch_note(ctx),
            acc.send_s,
            per_second(o.sent.attempted(), acc.send_s),
            acc.accepted,
            o.sent.errors.line(),
            acc.receivers
                .map(|(min, max, mean)| format!("; receivers min {min} max {max} mean {mean:.2}"))
                .unwrap_or_default()
        ),
    );
    report.row(
        "delivered",
        format!(
            "{} of {} ({:.0}/s)  lost {}  duplicates {}  misdelivered {}",
            acc.unique,
            acc.expected,
            acc.deliveries_per_s,
            acc.lost,
            acc.duplicates,
            acc.misdelivered
        ),
    );
    report.row("latency", acc.latencies.line());
    if let Some(cpu) = &o.cpu {
        report.row("server CPU", cpu.line(acc.unique, "delivery"));
        report.figure("cpu", cpu.json(acc.unique, "delivery"));
    }
    let processes = per_process(o);
    for p in &processes {
        let idle = match p["idle_ms_per_s"].as_f64() {
            Some(v) => format!(", idle {v:.1} ms/s"),
            None => String::new(),
        };
        if p["role"] == Role::Replica.as_str() || o.pinned.is_some() {
            report.row(
                &format!("  {}", p["name"].as_str().unwrap_or("?")),
                format!(
                    "{:.0} ms busy ({:.1} ms/s){idle}",
                    p["busy_ms"].as_f64().unwrap_or(0.0),
                    p["busy_ms_per_s"].as_f64().unwrap_or(0.0)
                ),
            );
        }
    }
    match (&o.numsub, &o.numsub_error) {
        (Some(counts), _) => {
            let min = counts.iter().copied().min().unwrap_or(0);
            let max = counts.iter().copied().max().unwrap_or(0);
            report.row(
                "PUBSUB NUMSUB",
                format!(
                    "stickyws:channel:public:bench-* over {} channel(s): min {min} max {max} total {}",
                    counts.len(),
                    counts.iter().sum::<u64>()
                ),
            );
            report.figure(
                "numsub",
                json!({"min": min, "max": max, "total": counts.iter().sum::<u64>(),
                       "first": counts.iter().take(10).collect::<Vec<_>>()}),
            );
        }
        (None, Some(err)) => report.row("PUBSUB NUMSUB", format!("not read: {err}")),
        (None, None) => {}
    }
    report.figure("channels", o.channels);
    report.figure("sockets", opened);
    report.figure("pinned_to", json!(o.pinned));
    report.figure("socket_errors", o.open_errors.json());
    report.figure("sockets_by_replica", json!(o.by_replica));
    report.figure("sent", o.sent.attempted());
    report.figure("batch", ctx.args.batch.max(1) as u64);
    report.figure("accepted", acc.accepted);
    report.figure("send_errors", o.sent.errors.json());
    report.figure("send_seconds", acc.send_s);
    report.figure("target_rate", args.rate);
    report.figure("expected", acc.expected);
    report.figure("delivered", acc.unique);
    report.figure("deliveries_per_s", acc.deliveries_per_s);
    report.figure("lost", acc.lost);
    report.figure("loss_percent", percent(acc.lost, acc.expected));
    report.figure("duplicates", acc.duplicates);
    report.figure("misdelivered", acc.misdelivered);
    report.figure("latency", acc.latencies.json());
    report.figure("busy_seconds", o.busy_s);
    report.figure("idle_seconds", o.idle.as_ref().map(|(_, s)| *s));
    report.figure(
        "receivers",
        acc.receivers
            .map(|(min, max, mean)| json!({"min": min, "max": max, "mean": mean})),
    );
    report.figure("processes", Value::Array(processes));
    for second in targeted::per_second_lines(&acc.arrival_ms, o.sent.first_us) {
        report.line("second", second);
    }
    ctx.publish(&report)?;
    Ok(())
}

/// The SVG plots, when --plots asks for them.
fn plots(ctx: &Ctx, o: &Observed, acc: &Accounting) -> anyhow::Result<()> {
    let Some(dir) = &ctx.args.plots else {
        return Ok(());
    };
    let label = ctx.label();
    plot::latency_cdf(
        &plot::path(dir, &label, "latency-cdf"),
        &format!("{label}: channel publish-to-receipt latency"),
        &[("publish → receipt", &acc.latencies)],
    )?;
    plot::throughput(
        &plot::path(dir, &label, "throughput"),
        &format!("{label}: deliveries over time"),
        "deliveries",
        &since_ms(&acc.arrival_ms, o.sent.first_us),
        100,
        &[],
    )?;
    plot::sockets_per_replica(
        &plot::path(dir, &label, "sockets"),
        &format!("{label}: subscribers per replica"),
        &o.by_replica,
    )?;
    Ok(())
}
