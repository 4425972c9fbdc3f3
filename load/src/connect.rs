//! `stickyws load connect`: ramps `--sockets` WebSockets through the front door, holds them idle
//! for `--hold` seconds, then reads every replica's `/metrics` (reached with its sticky cookie)
//! for its sockets and resident memory. Reports the connect rate, handshake latency, failures
//! by kind, sockets dropped while held, and the resident memory each socket cost each replica.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::Ctx;
use crate::client::Client;
use crate::cpu::CpuUsed;
use crate::deliveries::HoldPlan;
use crate::deployment::ReplicaFigures;
use crate::fleet::{self, FleetPlan};
use crate::plot;
use crate::progress::Progress;
use crate::report::{Errors, Latencies, per_second};
use crate::targeted::{since_ms, spread};

/// What a connect run observed, for the report.
#[derive(Debug)]
struct Observed {
    /// Every replica's figures before the ramp and after the hold.
    before: BTreeMap<String, ReplicaFigures>,
    after: BTreeMap<String, ReplicaFigures>,
    opened: u64,
    ramp_s: f64,
    /// Minting and connecting failures, by kind.
    errors: Errors,
    still_open: u64,
    /// Sockets the server closed while held, by kind.
    dropped: BTreeMap<String, u64>,
    upgrade: Latencies,
    welcome: Latencies,
    by_welcome: BTreeMap<String, u64>,
    opened_at: Vec<u32>,
    cpu: Option<CpuUsed>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let observed = ramp_and_hold(ctx).await?;
    let per_replica = report(ctx, &observed)?;
    plots(ctx, &observed, &per_replica)
}

/// Mints, opens the sockets (measuring the servers meanwhile), holds them, reads `/metrics`
/// before and after, and stops the fleet.
async fn ramp_and_hold(ctx: &Ctx) -> anyhow::Result<Observed> {
    let args = &ctx.args;
    let replicas = ctx.deployment.replicas().await?;
    let before = ctx.deployment.all_figures(&replicas).await;
    let (creds, mint_errors) =
        Client::mint_many(&ctx.deployment, args.sockets, args.concurrency).await;

    let meter = ctx.servers.as_ref().map(|s| s.start());
    let live = ctx.live.clone();
    let bar = Progress::start(
        "connect",
        creds.len() as u64,
        move || live.connected.load(Ordering::Relaxed).max(0) as u64,
        String::new,
    );
    let plan = FleetPlan {
        sticky: None,
        concurrency: args.connect_concurrency,
        rate: args.connect_rate,
        hold: HoldPlan {
            away_until_published: None,
            jitter: None,
            tag: ctx.tag.clone(),
            clock: ctx.clock,
            // A socket the server closes while held is a failure to count, not to repair.
            reconnect: false,
            deadline: ctx.until_deadline(Duration::from_secs(2)),
            samples: false,
        },
    };
    let fleet = fleet::open(ctx.dialer.clone(), &creds, plan, ctx.live.clone()).await;
    drop(bar);
    let cpu = meter.map(|m| m.finish());

    // Hold, bounded by the deadline, then read what the replicas say.
    let hold_until = (tokio::time::Instant::now() + Duration::from_secs_f64(args.hold))
        .min(ctx.until_deadline(Duration::from_secs(5)).into());
    tokio::time::sleep_until(hold_until).await;
    let still_open = ctx.live.connected.load(Ordering::Relaxed).max(0) as u64;
    let after = ctx.deployment.all_figures(&replicas).await;
    let opened = fleet.opened();
    let ramp_s = fleet.ramp_seconds();
    let errors = {
        let mut e = mint_errors.clone();
        e.merge(&fleet.errors);
        e
    };
    let upgrade = Latencies::from_micros(fleet.upgrade_us.clone());
    let welcome = Latencies::from_micros(fleet.welcome_us.clone());
    let by_welcome = fleet.by_replica.clone();
    let opened_at = since_ms(&fleet.opened_at_ms, fleet.first_us);
    let tallies = fleet.stop().await;
    let dropped: BTreeMap<String, u64> =
        tallies
            .iter()
            .flat_map(|t| t.outages.iter())
            .fold(BTreeMap::new(), |mut m, o| {
                *m.entry(o.kind.clone()).or_default() += 1;
                m
            });
    Ok(Observed {
        before,
        after,
        opened,
        ramp_s,
        errors,
        still_open,
        dropped,
        upgrade,
        welcome,
        by_welcome,
        opened_at,
        cpu,
    })
}

/// Prints and writes the report; returns the sockets each replica's `/metrics` counted.
fn report(ctx: &Ctx, o: &Observed) -> anyhow::Result<BTreeMap<String, u64>> {
    let args = &ctx.args;
    let Observed {
        before,
        after,
        opened,
        ramp_s,
        errors,
        still_open,
        dropped,
        upgrade,
        welcome,
        by_welcome,
        cpu,
        ..
    } = o;
    let (opened, ramp_s) = (*opened, *ramp_s);
    let dropped_total: u64 = dropped.values().sum();
    let mut report = ctx.report();
    report.row(
        "sockets",
        format!(
            "{opened} of {} opened in {ramp_s:.2} s: {:.0} connects/s ({} handshakes in flight \
             at most)",
            args.sockets,
            per_second(opened, ramp_s),
            args.connect_concurrency
        ),
    );
    report.row("failures", errors.line());
    report.row(
        "held",
        format!(
            "{still_open} still open after {:.1} s; dropped while held: {dropped_total}",
            args.hold
        ),
    );
    report.row("upgrade (101)", upgrade.line());
    report.row("welcome", welcome.line());
    report.row("welcomed by", spread(by_welcome));
    let mut per_replica = BTreeMap::new();
    let mut metric_sockets = 0;
    for (name, now) in after {
        let was = before.get(name).copied().unwrap_or_default();
        let (row, value) = replica_row(was, *now);
        metric_sockets += now.sockets;
        report.row(&format!("  {name}"), row);
        report.line("replica", json!({"replica": name, "figures": value}));
        per_replica.insert(name.clone(), now.sockets);
    }
    if let Some(cpu) = cpu {
        report.row("server CPU", cpu.line(opened, "connect"));
        report.figure("cpu", cpu.json(opened, "connect"));
    }
    report.figure("requested", args.sockets as u64);
    report.figure("opened", opened);
    report.figure("failures", errors.total());
    report.figure("failures_by_kind", errors.json());
    report.figure("ramp_seconds", ramp_s);
    report.figure("connects_per_s", per_second(opened, ramp_s));
    report.figure("still_open", *still_open);
    report.figure("dropped", json!(dropped));
    report.figure("upgrade", upgrade.json());
    report.figure("welcome", welcome.json());
    report.figure("welcomed_by", json!(by_welcome));
    report.figure("metrics_sockets", metric_sockets);
    report.figure("metrics_by_replica", json!(per_replica));
    let kib: Vec<f64> = after
        .iter()
        .filter_map(|(name, now)| {
            kib_per_socket(before.get(name).copied().unwrap_or_default(), *now)
        })
        .collect();
    if !kib.is_empty() {
        let worst = kib.iter().copied().fold(0.0, f64::max);
        report.figure("max_kib_per_socket", worst);
        report.row(
            "memory",
            format!("worst replica {worst:.1} KiB resident per socket"),
        );
    }
    ctx.publish(&report)?;
    Ok(per_replica)
}

/// The SVG plots, when --plots asks for them.
fn plots(ctx: &Ctx, o: &Observed, per_replica: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    let Some(dir) = &ctx.args.plots else {
        return Ok(());
    };
    let label = ctx.label();
    plot::latency_cdf(
        &plot::path(dir, &label, "latency-cdf"),
        &format!("{label}: handshake latency"),
        &[("upgrade (101)", &o.upgrade), ("welcome frame", &o.welcome)],
    )?;
    plot::throughput(
        &plot::path(dir, &label, "throughput"),
        &format!("{label}: sockets opened over time"),
        "connects",
        &o.opened_at,
        100,
        &[],
    )?;
    plot::sockets_per_replica(
        &plot::path(dir, &label, "sockets"),
        &format!("{label}: sockets per replica (/metrics)"),
        per_replica,
    )?;
    Ok(())
}

/// Resident memory the new sockets cost, per socket; None when no socket was added.
fn kib_per_socket(before: ReplicaFigures, after: ReplicaFigures) -> Option<f64> {
    let added = after
        .sockets
        .checked_sub(before.sockets)
        .filter(|&n| n > 0)?;
    let grown = after.resident_bytes.saturating_sub(before.resident_bytes);
    Some(grown as f64 / added as f64 / 1024.0)
}

fn replica_row(before: ReplicaFigures, after: ReplicaFigures) -> (String, serde_json::Value) {
    let per = kib_per_socket(before, after);
    let row = format!(
        "{} sockets · resident {:.1} MiB (was {:.1}) · {} per added socket · {:.1} KiB per socket \
         overall",
        after.sockets,
        after.resident_bytes as f64 / 1_048_576.0,
        before.resident_bytes as f64 / 1_048_576.0,
        per.map_or("-".to_owned(), |k| format!("{k:.1} KiB")),
        if after.sockets > 0 {
            after.resident_bytes as f64 / after.sockets as f64 / 1024.0
        } else {
            0.0
        },
    );
    let value = json!({
        "sockets": after.sockets,
        "sockets_before": before.sockets,
        "resident_bytes": after.resident_bytes,
        "resident_bytes_before": before.resident_bytes,
        "kib_per_added_socket": per,
    });
    (row, value)
}
