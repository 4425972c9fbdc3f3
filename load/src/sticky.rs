//! `stickyws load sticky`: the seed's lesson as numbers. Each client holds one socket (opened
//! without a cookie, so spread round robin); then `--messages` `/api/direct` requests without
//! the cookie and as many with `sticky=<the socket's replica>`. Without it a request lands on
//! the socket's replica about 1 time in N; with it, every time — and only a request that lands
//! there can deliver.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::json;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::CpuUsed;
use crate::deliveries::{self, Tally};
use crate::plot;
use crate::publisher::{Accepted, Request, Sent};
use crate::report::{Errors, Latencies, percent};
use crate::targeted::{merged, open_fleet, settle, spread};

/// One cookie mode's outcome.
#[derive(Debug, Default)]
struct Mode {
    requests: u64,
    errors: Errors,
    /// Requests taken, by replica.
    took: BTreeMap<String, u64>,
    /// The answer said it delivered (`delivered` ≥ 1).
    promised: u64,
    /// The frame reached the socket.
    arrived: u64,
    /// Promised but never arrived, or arrived unpromised: must both be zero.
    broken: u64,
    /// Requests that landed on the socket's replica.
    on_holder: u64,
}

/// A client with a socket: its index, id, token and the replica holding its socket.
type Target = (u32, String, String, String);

/// What a sticky run observed, for the report.
#[derive(Debug)]
struct Observed {
    replicas: Vec<String>,
    sockets: u64,
    mint_errors: Errors,
    fleet_errors: Errors,
    by_replica: BTreeMap<String, u64>,
    targets: Arc<Vec<Target>>,
    /// Per cookie mode: with the cookie or not, the seq offset, what was sent.
    answers: Vec<(bool, u64, Sent)>,
    tallies: Vec<Tally>,
    cpu: Option<CpuUsed>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let observed = direct_run(ctx).await?;
    let latencies = report(ctx, &observed)?;
    plots(ctx, &observed, &latencies)
}

/// Mints, connects, sends the direct messages in both cookie modes, waits, collects.
async fn direct_run(ctx: &Ctx) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    let replicas = ctx.deployment.replicas().await?;
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;
    let fleet = open_fleet(ctx, &creds, false, None).await;
    let holders = fleet.replica_of.clone();
    if holders.is_empty() {
        fleet.stop().await;
        anyhow::bail!("no socket opened: {}", mint_errors.line());
    }
    let targets: Vec<Target> = holders
        .iter()
        .map(|(&c, replica)| {
            let creds = &creds[c as usize];
            (
                c,
                creds.client_id.clone(),
                creds.token.clone(),
                replica.clone(),
            )
        })
        .collect();
    let targets = Arc::new(targets);
    let meter = ctx.servers.as_ref().map(|s| s.start());
    let answers = send_both_modes(ctx, &targets).await;
    let promised_total: u64 = answers
        .iter()
        .flat_map(|(_, _, s)| s.accepted.iter())
        .filter(|a| a.body["delivered"].as_u64().unwrap_or(0) > 0)
        .count() as u64;
    settle(ctx, promised_total).await;
    let cpu = meter.map(|m| m.finish());
    let by_replica = fleet.by_replica.clone();
    let fleet_errors = fleet.errors.clone();
    let tallies = fleet.stop().await;
    Ok(Observed {
        replicas,
        sockets: holders.len() as u64,
        mint_errors,
        fleet_errors,
        by_replica,
        targets,
        answers,
        tallies,
        cpu,
    })
}

/// `--messages` direct requests without the cookie, then as many with it.
async fn send_both_modes(ctx: &Ctx, targets: &Arc<Vec<Target>>) -> Vec<(bool, u64, Sent)> {
    let args = &ctx.args;
    // Without the cookie: seqs 0..M; with it: M..2M, so frames tell the modes apart.
    let mut answers = Vec::new();
    for with_cookie in [false, true] {
        let offset = if with_cookie { args.messages } else { 0 };
        let tag = ctx.tag.clone();
        let targets = targets.clone();
        let sent = ctx
            .send(args.rate, move |seq, now| {
                let (client, id, token, holder) = &targets[(seq % targets.len() as u64) as usize];
                Request {
                    path: format!("/api/direct/{id}"),
                    bearer: token.clone(),
                    sticky: with_cookie.then(|| holder.clone()),
                    text: deliveries::text(&tag, *client, seq + offset, now),
                    ack: None,
                }
            })
            .await;
        answers.push((with_cookie, offset, sent));
    }
    answers
}

/// Prints and writes the report; returns the direct latencies for the plots.
fn report(ctx: &Ctx, o: &Observed) -> anyhow::Result<Latencies> {
    let args = &ctx.args;
    let Observed {
        replicas,
        sockets,
        mint_errors,
        fleet_errors,
        by_replica,
        targets,
        answers,
        tallies,
        cpu,
    } = o;
    let arrived: HashSet<u64> = tallies
        .iter()
        .flat_map(|t| t.seqs.iter().copied())
        .collect();
    let misdelivered: u64 = tallies.iter().map(|t| t.misdelivered).sum();
    let latencies = Latencies::from_micros(
        tallies
            .iter()
            .flat_map(|t| t.samples.iter().map(|s| s.latency_us))
            .collect(),
    );

    let mut report = ctx.report();
    report.row(
        "replicas",
        format!("{} ({})", replicas.len(), replicas.join(" ")),
    );
    report.row(
        "sockets",
        format!(
            "{} opened of {} ({}); failures: {}",
            sockets,
            args.sockets,
            spread(by_replica),
            merged(mint_errors, fleet_errors)
        ),
    );
    report.figure("replicas", json!(replicas));
    report.figure("sockets", *sockets);
    report.figure("sockets_by_replica", json!(by_replica));
    let mut modes_json = serde_json::Map::new();
    for (with_cookie, offset, sent) in answers {
        let mode = tally_mode(&sent.accepted, &sent.errors, *offset, targets, &arrived);
        let name = if *with_cookie {
            "with cookie"
        } else {
            "without cookie"
        };
        report.row(
            name,
            format!(
                "{} requests · landed on the socket's replica {} ({}%) · direct delivered {} \
                 ({}%) · broken promises {} · errors: {} · taken by {}",
                mode.requests,
                mode.on_holder,
                percent(mode.on_holder, mode.requests),
                mode.arrived,
                percent(mode.arrived, mode.requests),
                mode.broken,
                mode.errors.line(),
                spread(&mode.took)
            ),
        );
        modes_json.insert(
            if *with_cookie {
                "with_cookie"
            } else {
                "without_cookie"
            }
            .to_owned(),
            json!({
                "requests": mode.requests,
                "errors": mode.errors.json(),
                "by_replica": mode.took,
                "on_holder": mode.on_holder,
                "promised": mode.promised,
                "delivered": mode.arrived,
                "success_percent": percent(mode.arrived, mode.requests),
                "broken_promises": mode.broken,
            }),
        );
    }
    let expected = if replicas.is_empty() {
        100.0
    } else {
        100.0 / replicas.len() as f64
    };
    report.row(
        "expected",
        format!(
            "without the cookie ≈ {expected:.0}% (1/{}); with it 100%",
            replicas.len()
        ),
    );
    report.row("direct latency", latencies.line());
    report.row("misdelivered", misdelivered.to_string());
    if let Some(cpu) = cpu {
        report.row("server CPU", cpu.line(arrived.len() as u64, "delivery"));
        report.figure("cpu", cpu.json(arrived.len() as u64, "delivery"));
    }
    report.figure("modes", serde_json::Value::Object(modes_json));
    report.figure("expected_without_cookie_percent", expected);
    report.figure("misdelivered", misdelivered);
    report.figure("latency", latencies.json());
    ctx.publish(&report)?;
    Ok(latencies)
}

/// The SVG plots, when --plots asks for them.
fn plots(ctx: &Ctx, o: &Observed, latencies: &Latencies) -> anyhow::Result<()> {
    let Some(dir) = &ctx.args.plots else {
        return Ok(());
    };
    let label = ctx.label();
    plot::sockets_per_replica(
        &plot::path(dir, &label, "sockets"),
        &format!("{label}: sockets per replica"),
        &o.by_replica,
    )?;
    plot::latency_cdf(
        &plot::path(dir, &label, "latency-cdf"),
        &format!("{label}: direct request-to-receipt latency"),
        &[("direct → receipt", latencies)],
    )?;
    Ok(())
}

fn tally_mode(
    accepted: &[Accepted],
    errors: &Errors,
    offset: u64,
    targets: &[Target],
    arrived: &HashSet<u64>,
) -> Mode {
    let mut mode = Mode {
        requests: accepted.len() as u64 + errors.total(),
        errors: errors.clone(),
        ..Mode::default()
    };
    for a in accepted {
        let taker = a.body["replica"].as_str().unwrap_or("?").to_owned();
        let holder = &targets[(a.seq % targets.len() as u64) as usize].3;
        if taker == *holder {
            mode.on_holder += 1;
        }
        *mode.took.entry(taker).or_default() += 1;
        let promised = a.body["delivered"].as_u64().unwrap_or(0) > 0;
        let came = arrived.contains(&(a.seq + offset));
        mode.promised += u64::from(promised);
        mode.arrived += u64::from(came);
        if promised != came {
            mode.broken += 1;
        }
    }
    mode
}
