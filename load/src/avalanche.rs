//! `stickyws load avalanche`: every one of `--sockets` sockets opened on one replica (the first
//! `/api/replicas` names, through its sticky cookie), broadcasts at a steady `--rate`, and that
//! replica SIGKILLed `--fault-after` seconds in: its sockets all come back at once through the
//! front door, each resuming from its cursor. Reports how long until all were back (p50, p99,
//! max from the kill) and fails unless every accepted broadcast reached every socket once.
//!
//! The replica's pid is `--kill-pid`, or found among `--cluster-pid`'s descendants by its
//! `APP_ID`; starting and stopping the cluster is the caller's business.

use anyhow::{Context, bail};
use serde_json::json;
use std::time::Duration;

use crate::Ctx;
use crate::cpu;
use crate::jitter::{self, Kill, RunPlan};
use crate::report::Latencies;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let args = &ctx.args;
    let victim = ctx
        .deployment
        .replicas()
        .await?
        .first()
        .cloned()
        .context("avalanche needs /api/replicas to name the replicas")?;
    let pid = match (args.kill_pid, &ctx.servers) {
        (Some(pid), _) => pid,
        (None, Some(servers)) => servers
            .replicas()
            .into_iter()
            .find(|&pid| cpu::environ_var(pid, "APP_ID").as_deref() == Some(victim.as_str()))
            .with_context(|| format!("no replica process with APP_ID={victim}"))?,
        (None, None) => bail!("avalanche needs --cluster-pid (or --kill-pid of replica {victim})"),
    };
    if args.rate <= 0.0 {
        bail!("avalanche broadcasts at a steady rate: give --rate (e.g. 20)");
    }
    let planned = args.messages as f64 / args.rate;
    let after = Duration::from_secs_f64(args.fault_after.unwrap_or(planned / 3.0).max(0.0));
    let plan = RunPlan {
        sticky: Some(victim.clone()),
        kill: Some(Kill { pid, after }),
        ..RunPlan::default()
    };
    let observed = jitter::resume_run(ctx, plan).await?;
    let acc = jitter::account(&observed);
    let kill_us = observed.kill_us.unwrap_or(observed.sent.first_us);
    // Time from the kill until each of the victim's sockets was welcomed again.
    let mut back = Vec::new();
    let (mut closed, mut never_back) = (0u64, 0u64);
    let mut back_on = std::collections::BTreeMap::<String, u64>::new();
    for outage in observed
        .tallies
        .iter()
        .flat_map(|t| &t.outages)
        .filter(|o| o.closed_us + 1000 >= kill_us)
    {
        closed += 1;
        match outage.back_us {
            Some(b) => {
                back.push(u32::try_from(b.saturating_sub(kill_us)).unwrap_or(u32::MAX));
                *back_on
                    .entry(outage.back_on.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            None => never_back += 1,
        }
    }
    let back_after = Latencies::from_micros(back);
    let kill_s = kill_us.saturating_sub(observed.sent.first_us) as f64 / 1e6;
    let mut report = ctx.report();
    jitter::report_common(ctx, &mut report, &observed, &acc);
    report.row(
        "fault",
        format!("SIGKILL to {victim} (pid {pid}) at {kill_s:.2} s into the broadcasting"),
    );
    report.row(
        "sockets closed",
        format!(
            "{closed} of {} (on {victim}); back {} ({}) · never back {never_back} · failed \
             reconnect attempts {}",
            observed.sockets,
            closed - never_back,
            crate::targeted::spread(&back_on),
            acc.reconnect_failures
        ),
    );
    report.row("all back after", back_after.line());
    report.figure(
        "fault",
        json!({"pid": pid, "replica": victim, "signal": "SIGKILL", "at_s": kill_s}),
    );
    report.figure("sockets_closed", closed);
    report.figure("back_on", json!(back_on));
    report.figure("back_after", back_after.json());
    ctx.publish(&report)?;
    jitter::plots(ctx, &observed, &acc)?;
    if closed < observed.sockets || never_back > 0 {
        bail!(
            "{closed} of {} sockets were closed by the kill, {never_back} never came back",
            observed.sockets
        );
    }
    jitter::verdict(&acc)
}
