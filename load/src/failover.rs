//! `stickyws load failover`: a targeted run at a fixed rate during which the replica named by
//! `--kill-pid` (SIGKILL) or `--drain-pid` (SIGTERM: it drains, closing sockets with 1012) is
//! signalled. The tool's clients reconnect when closed, resuming from the last history id they
//! saw, as the demo page does; each first waits until a publish for it was accepted while it was
//! away, so every run has messages to replay (and "lost 0" means the replay worked). Reports how
//! long the replica's clients took to be back, and what was lost.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::Ctx;
use crate::report::{Latencies, Report, per_second};
use crate::targeted::{self, Accounting, Fault, Observed};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let args = &ctx.args;
    let (pid, signal) = match (args.kill_pid, args.drain_pid) {
        (Some(pid), None) => (pid, Signal::SIGKILL),
        (None, Some(pid)) => (pid, Signal::SIGTERM),
        _ => bail!("failover needs --kill-pid PID or --drain-pid PID (a replica you started)"),
    };
    let rate = if args.rate > 0.0 { args.rate } else { 500.0 };
    let planned = args.messages as f64 / rate;
    let after = Duration::from_secs_f64(args.fault_after.unwrap_or(planned / 3.0).max(0.0));
    let observed = targeted::publish_run(ctx, Some(Fault { pid, signal, after })).await?;
    let acc = targeted::account(&observed.sent, &observed.tallies);
    let fault_us = observed.fault_us.unwrap_or(observed.sent.first_us);
    let outages = outages(&observed, &acc, fault_us);
    let action = if signal == Signal::SIGKILL {
        "SIGKILL"
    } else {
        "SIGTERM (drain)"
    };
    let fault_s = fault_us.saturating_sub(observed.sent.first_us) as f64 / 1e6;
    let mut report = ctx.report();
    targeted::report_common(ctx, &mut report, &observed, &acc);
    report_fault(&mut report, &outages, pid, action, fault_s);
    ctx.publish(&report)?;
    targeted::plots(ctx, &observed, &acc, &[(fault_s, action)])?;
    Ok(())
}

/// What the fault did to the clients: the sockets it closed, when they were back, and the
/// deliveries around it.
#[derive(Debug)]
struct Outages {
    closed: u64,
    never_back: u64,
    closed_by: BTreeMap<String, u64>,
    closed_on: BTreeMap<String, u64>,
    reconnect_failures: u64,
    back_after: Latencies,
    /// Deliveries in the second before the fault and the second after it.
    before: u64,
    after_fault: u64,
}

fn outages(observed: &Observed, acc: &Accounting, fault_us: u64) -> Outages {
    // The outages the fault caused: sockets closed at or after it.
    let outages: Vec<_> = observed
        .tallies
        .iter()
        .flat_map(|t| t.outages.iter())
        .filter(|o| o.closed_us + 1000 >= fault_us)
        .collect();
    let back: Vec<u32> = outages
        .iter()
        .filter_map(|o| o.back_us)
        .map(|b| u32::try_from(b.saturating_sub(fault_us)).unwrap_or(u32::MAX))
        .collect();
    let never_back = outages.iter().filter(|o| o.back_us.is_none()).count() as u64;
    let closed_by: BTreeMap<String, u64> = outages.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.kind.clone()).or_default() += 1;
        m
    });
    let closed_on: BTreeMap<String, u64> = outages.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.replica.clone()).or_default() += 1;
        m
    });
    let reconnect_failures: u64 = observed
        .tallies
        .iter()
        .map(|t| t.reconnect_errors.len() as u64)
        .sum();
    let back_after = Latencies::from_micros(back);
    // Deliveries in the second before the fault and the second after it.
    let window = |from_us: u64, to_us: u64| {
        acc.arrival_ms
            .iter()
            .filter(|&&ms| {
                let us = u64::from(ms) * 1000;
                us >= from_us && us < to_us
            })
            .count() as u64
    };
    let before = window(fault_us.saturating_sub(1_000_000), fault_us);
    let after_fault = window(fault_us, fault_us + 1_000_000);
    Outages {
        closed: outages.len() as u64,
        never_back,
        closed_by,
        closed_on,
        reconnect_failures,
        back_after,
        before,
        after_fault,
    }
}

/// The fault's rows and figures.
fn report_fault(report: &mut Report, o: &Outages, pid: u32, action: &str, fault_s: f64) {
    let Outages {
        closed,
        never_back,
        closed_by,
        closed_on,
        reconnect_failures,
        back_after,
        before,
        after_fault,
    } = o;
    report.row(
        "fault",
        format!("{action} to pid {pid} at {fault_s:.2} s into the sending"),
    );
    report.row(
        "sockets closed",
        format!(
            "{} on {} ({}); back {} · never back {} · failed reconnect attempts \
             {reconnect_failures}",
            closed,
            targeted::spread(closed_on),
            closed_by
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            closed - never_back,
            never_back,
        ),
    );
    report.row("back after", back_after.line());
    report.row(
        "deliveries/s",
        format!(
            "{:.0} in the second before the fault, {:.0} in the second after",
            per_second(*before, 1.0),
            per_second(*after_fault, 1.0)
        ),
    );
    report.figure(
        "fault",
        json!({"pid": pid, "signal": action, "at_s": fault_s}),
    );
    report.figure("sockets_closed", *closed);
    report.figure("closed_by", json!(closed_by));
    report.figure("closed_on", json!(closed_on));
    report.figure("never_back", *never_back);
    report.figure("reconnect_failures", *reconnect_failures);
    report.figure("back_after", back_after.json());
    report.figure("deliveries_second_before", *before);
    report.figure("deliveries_second_after", *after_fault);
}
