//! `stickyws load broadcast`: `--sockets` sockets, then `--messages` broadcasts with the API
//! key, each due at every socket. Reports deliveries/s (broadcasts × sockets reached), latency
//! from the broadcast request to each receipt, and loss and duplicates per socket.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::Context;
use serde_json::json;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::CpuUsed;
use crate::deliveries::{self, EVERYONE, Tally};
use crate::plot;
use crate::progress::Progress;
use crate::publisher::{Request, Sent};
use crate::report::{Errors, Latencies, per_second, percent};
use crate::targeted::{self, merged, open_fleet, settle, since_ms, spread};

/// What a broadcast run observed, for the report.
#[derive(Debug)]
struct Observed {
    sockets: u64,
    mint_errors: Errors,
    fleet_errors: Errors,
    by_replica: BTreeMap<String, u64>,
    sent: Sent,
    tallies: Vec<Tally>,
    cpu: Option<CpuUsed>,
}

/// Delivery accounting for broadcasts: each accepted one is due once at every open socket.
#[derive(Debug)]
struct Accounting {
    accepted: HashSet<u64>,
    expected: u64,
    unique: u64,
    lost: u64,
    duplicates: u64,
    misdelivered: u64,
    replayed: u64,
    latencies: Latencies,
    arrival_ms: Vec<u32>,
    send_s: f64,
    deliveries_per_s: f64,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let key = ctx
        .args
        .api_key
        .clone()
        .context("broadcast needs the API key: --api-key or API_KEY")?;
    let observed = broadcast_run(ctx, key).await?;
    let acc = account(&observed);
    report(ctx, &observed, &acc)?;
    plots(ctx, &observed, &acc)
}

/// Mints, connects, broadcasts with `key`, waits for stragglers, collects.
async fn broadcast_run(ctx: &Ctx, key: String) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;
    let fleet = open_fleet(ctx, &creds, true, None).await;
    let sockets = fleet.opened();
    if sockets == 0 {
        fleet.stop().await;
        anyhow::bail!(
            "no socket opened: {} {}",
            mint_errors.line(),
            ctx.live.connected.load(Ordering::Relaxed)
        );
    }

    let meter = ctx.servers.as_ref().map(|s| s.start());
    let live = ctx.live.clone();
    let bar = Progress::start(
        "deliver",
        args.messages * sockets,
        move || live.delivered.load(Ordering::Relaxed),
        {
            let live = ctx.live.clone();
            move || format!("broadcasts {}", live.sent.load(Ordering::Relaxed))
        },
    );
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
    settle(ctx, sent.accepted.len() as u64 * sockets).await;
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
    })
}

fn account(o: &Observed) -> Accounting {
    let (sent, sockets) = (&o.sent, o.sockets);
    // Each accepted broadcast is due once at every socket that opened.
    let accepted: HashSet<u64> = sent.accepted.iter().map(|a| a.seq).collect();
    let (mut unique, mut arrivals, mut lost, mut misdelivered, mut replayed) = (0, 0, 0, 0, 0);
    let mut micros = Vec::new();
    let mut arrival_ms = Vec::new();
    let mut last_arrival_us = 0;
    for tally in o.tallies.iter().filter(|t| !t.replica.is_empty()) {
        let seen: HashSet<u64> = tally.seqs.iter().copied().collect();
        arrivals += tally.seqs.len() as u64;
        unique += seen.len() as u64;
        lost += accepted.iter().filter(|s| !seen.contains(s)).count() as u64;
        misdelivered += tally.misdelivered;
        replayed += tally.replayed;
        for s in &tally.samples {
            micros.push(s.latency_us);
            arrival_ms.push(s.at_ms);
            last_arrival_us = last_arrival_us.max(u64::from(s.at_ms) * 1000);
        }
    }
    let duplicates = arrivals - unique;
    let latencies = Latencies::from_micros(micros);
    let send_s = sent.seconds();
    let window_s = (last_arrival_us.saturating_sub(sent.first_us) as f64 / 1e6).max(send_s);
    let deliveries_per_s = per_second(unique, window_s);
    let expected = accepted.len() as u64 * sockets;

    Accounting {
        accepted,
        expected,
        unique,
        lost,
        duplicates,
        misdelivered,
        replayed,
        latencies,
        arrival_ms,
        send_s,
        deliveries_per_s,
    }
}

/// Prints and writes the report.
fn report(ctx: &Ctx, o: &Observed, acc: &Accounting) -> anyhow::Result<()> {
    let args = &ctx.args;
    let Observed {
        sockets,
        mint_errors,
        fleet_errors,
        by_replica,
        sent,
        cpu,
        ..
    } = o;
    let Accounting {
        accepted,
        expected,
        unique,
        lost,
        duplicates,
        misdelivered,
        replayed,
        latencies,
        arrival_ms,
        send_s,
        deliveries_per_s,
    } = acc;
    let (sockets, unique, send_s) = (*sockets, *unique, *send_s);
    let mut report = ctx.report();
    report.row(
        "sockets",
        format!(
            "{sockets} opened of {} ({}); failures: {}",
            args.sockets,
            spread(by_replica),
            merged(mint_errors, fleet_errors)
        ),
    );
    report.row(
        "broadcasts",
        format!(
            "{} sent in {send_s:.2} s ({:.0}/s), {} accepted; errors: {}",
            sent.attempted(),
            per_second(sent.attempted(), send_s),
            accepted.len(),
            sent.errors.line()
        ),
    );
    report.row(
        "delivered",
        format!(
            "{unique} of {expected} ({deliveries_per_s:.0}/s)  lost {lost}  duplicates {duplicates}  \
             misdelivered {misdelivered}  replayed {replayed}"
        ),
    );
    report.row("latency", latencies.line());
    if let Some(cpu) = cpu {
        report.row("server CPU", cpu.line(unique, "delivery"));
        report.figure("cpu", cpu.json(unique, "delivery"));
    }
    report.figure("sockets", sockets);
    report.figure("socket_errors", fleet_errors.json());
    report.figure("sockets_by_replica", json!(by_replica));
    report.figure("sent", sent.attempted());
    report.figure("accepted", accepted.len() as u64);
    report.figure("send_errors", sent.errors.json());
    report.figure("send_seconds", send_s);
    report.figure("target_rate", args.rate);
    report.figure("expected", *expected);
    report.figure("delivered", unique);
    report.figure("deliveries_per_s", *deliveries_per_s);
    report.figure("lost", *lost);
    report.figure("loss_percent", percent(*lost, *expected));
    report.figure("duplicates", *duplicates);
    report.figure("misdelivered", *misdelivered);
    report.figure("replayed", *replayed);
    report.figure("latency", latencies.json());
    for second in targeted::per_second_lines(arrival_ms, sent.first_us) {
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
        &format!("{label}: broadcast-to-receipt latency"),
        &[("broadcast → receipt", &acc.latencies)],
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
        &format!("{label}: sockets per replica"),
        &o.by_replica,
    )?;
    Ok(())
}
