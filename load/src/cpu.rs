//! Server CPU time, from `/proc/<pid>/stat` (utime + stime, every thread included), for the
//! least noise-sensitive figure a run has: CPU milliseconds per delivery. The load tool's own
//! CPU is not counted, whatever else runs on the machine.
//!
//! The processes are named (`--server-pids`) or discovered: those named `stickyws`, `nginx` or
//! `redis-server` that descend from `--cluster-pid`. A sampler reads them every 250 ms, so a
//! process that dies mid-run (failover) still counts with what it used until its last sample.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

/// `USER_HZ`, the unit of utime and stime: 100 on every Linux architecture this runs on (the
/// kernel fixes it for userspace whatever its internal HZ).
const TICKS_PER_SECOND: u64 = 100;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What a server process is, for the per-role breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Replica,
    Nginx,
    Redis,
    Other,
}

impl Role {
    fn of(comm: &str) -> Role {
        match comm {
            "stickyws" => Role::Replica,
            "nginx" => Role::Nginx,
            "redis-server" => Role::Redis,
            _ => Role::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Replica => "replicas",
            Role::Nginx => "nginx",
            Role::Redis => "redis",
            Role::Other => "other",
        }
    }
}

/// One line of `/proc/<pid>/stat`, the fields this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime, in ticks.
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name sits in parentheses and may contain spaces.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime stime …
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        ticks: utime + stime,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The server processes of a run.
#[derive(Debug, Clone)]
pub struct ServerPids {
    procs: Vec<(u32, Role)>,
}

impl ServerPids {
    /// The replica processes' pids.
    pub fn replicas(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, role)| *role == Role::Replica)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// The named pids, or else the stickyws/nginx/redis-server descendants of `cluster`; None
    /// when neither was given.
    pub fn resolve(named: &[u32], cluster: Option<u32>) -> anyhow::Result<Option<ServerPids>> {
        let mut procs = Vec::new();
        for &pid in named {
            let stat = read_stat(pid).with_context(|| format!("no process {pid}"))?;
            procs.push((pid, Role::of(&stat.comm)));
        }
        if let Some(root) = cluster {
            read_stat(root).with_context(|| format!("no process {root} (--cluster-pid)"))?;
            for (pid, stat) in descendants(root) {
                let role = Role::of(&stat.comm);
                if role != Role::Other && !procs.iter().any(|(p, _)| *p == pid) {
                    procs.push((pid, role));
                }
            }
            if procs.is_empty() {
                bail!("process {root} has no stickyws, nginx or redis-server descendants");
            }
        }
        procs.sort_by_key(|&(pid, role)| (role, pid));
        Ok((!procs.is_empty()).then_some(ServerPids { procs }))
    }

    /// Starts sampling; [`CpuMeter::finish`] gives the CPU used since.
    pub fn start(&self) -> CpuMeter {
        let first: HashMap<u32, u64> = self
            .procs
            .iter()
            .filter_map(|&(pid, _)| Some((pid, read_stat(pid)?.ticks)))
            .collect();
        let last = Arc::new(Mutex::new(first.clone()));
        let stop = CancellationToken::new();
        let pids: Vec<u32> = self.procs.iter().map(|(p, _)| *p).collect();
        let sampler_last = last.clone();
        let sampler_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = sampler_stop.cancelled() => break,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
                sample(&pids, &sampler_last);
            }
        });
        CpuMeter {
            procs: self.procs.clone(),
            started: Instant::now(),
            first,
            last,
            _stop: stop.drop_guard(),
        }
    }
}

/// Every process below `root`, from one pass over `/proc`.
fn descendants(root: u32) -> Vec<(u32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(u32, Stat)> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, stat) in &all {
            if stat.ppid == parent {
                frontier.push(*pid);
                found.push((*pid, stat.clone()));
            }
        }
    }
    found
}

/// Reads each live pid's ticks; a dead one keeps its last value.
fn sample(pids: &[u32], last: &Mutex<HashMap<u32, u64>>) {
    let now: Vec<(u32, u64)> = pids
        .iter()
        .filter_map(|&pid| Some((pid, read_stat(pid)?.ticks)))
        .collect();
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    for (pid, ticks) in now {
        last.insert(pid, ticks);
    }
}

/// CPU sampling in progress.
#[derive(Debug)]
pub struct CpuMeter {
    procs: Vec<(u32, Role)>,
    started: Instant,
    first: HashMap<u32, u64>,
    last: Arc<Mutex<HashMap<u32, u64>>>,
    /// Stops the sampler task when the meter goes.
    _stop: DropGuard,
}

impl CpuMeter {
    /// CPU used since [`ServerPids::start`], by role.
    pub fn finish(self) -> CpuUsed {
        let pids: Vec<u32> = self.procs.iter().map(|(p, _)| *p).collect();
        sample(&pids, &self.last);
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_role: BTreeMap<Role, (u64, usize)> = BTreeMap::new();
        for (pid, role) in &self.procs {
            let (Some(a), Some(b)) = (self.first.get(pid), last.get(pid)) else {
                continue;
            };
            let entry = by_role.entry(*role).or_default();
            entry.0 += b.saturating_sub(*a);
            entry.1 += 1;
        }
        let by_process = self
            .procs
            .iter()
            .filter_map(|&(pid, role)| {
                let (a, b) = (self.first.get(&pid)?, last.get(&pid)?);
                Some(ProcessUsed {
                    pid,
                    role,
                    name: process_name(pid, role),
                    ticks: b.saturating_sub(*a),
                })
            })
            .collect();
        CpuUsed {
            by_role,
            by_process,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// A replica's `APP_ID` (from its environment, readable for processes of the same user), a
/// Redis node's `redis-<port>` (from its process title), else `<role>-<pid>`: what a
/// per-process figure is labelled with. Redis by port because that is how a cluster's nodes
/// are known (the banner, `CLUSTER NODES`): the bench tells the shard owning a slot that way.
fn process_name(pid: u32, role: Role) -> String {
    match role {
        Role::Replica => environ_var(pid, "APP_ID"),
        Role::Redis => std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|title| redis_port(&String::from_utf8_lossy(&title)))
            .map(|port| format!("redis-{port}")),
        _ => None,
    }
    .unwrap_or_else(|| format!("{}-{pid}", role.as_str()))
}

/// The port in a `redis-server` process title (`redis-server 127.0.0.1:7001 [cluster]`, which
/// Redis writes over its argv; NUL-separated when it has not).
fn redis_port(title: &str) -> Option<u16> {
    title
        .split(|c: char| c == '\0' || c.is_whitespace())
        .find_map(|word| word.rsplit_once(':')?.1.parse().ok())
}

/// A variable of a process's environment (e.g. a replica's `REDIS_URL`), if readable.
pub fn environ_var(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// One process's share of a run.
#[derive(Debug, Clone)]
pub struct ProcessUsed {
    pub pid: u32,
    pub role: Role,
    /// The replica's `APP_ID`, or `<role>-<pid>`.
    pub name: String,
    ticks: u64,
}

impl ProcessUsed {
    pub fn ms(&self) -> f64 {
        CpuUsed::ms(self.ticks)
    }
}

/// CPU used during a run.
#[derive(Debug, Clone)]
pub struct CpuUsed {
    /// Ticks and process count per role.
    by_role: BTreeMap<Role, (u64, usize)>,
    /// Each process on its own (per-replica figures: who did the work).
    pub by_process: Vec<ProcessUsed>,
    /// Wall time the meter ran, for CPU per second of each process.
    seconds: f64,
}

impl CpuUsed {
    fn ms(ticks: u64) -> f64 {
        ticks as f64 * 1000.0 / TICKS_PER_SECOND as f64
    }

    pub fn total_ms(&self) -> f64 {
        Self::ms(self.by_role.values().map(|(t, _)| t).sum())
    }

    pub fn role_ms(&self, role: Role) -> f64 {
        Self::ms(self.by_role.get(&role).map_or(0, |(t, _)| *t))
    }

    /// `1234 ms (replicas ×3 600, nginx ×3 400, redis ×1 234) → 0.061 ms per delivery`.
    pub fn line(&self, count: u64, unit: &str) -> String {
        let parts: Vec<String> = self
            .by_role
            .iter()
            .map(|(role, (ticks, n))| format!("{} ×{n} {:.0}", role.as_str(), Self::ms(*ticks)))
            .collect();
        let per = if count > 0 {
            format!(
                " → {:.4} ms per {unit} (replicas alone {:.4})",
                self.total_ms() / count as f64,
                self.role_ms(Role::Replica) / count as f64
            )
        } else {
            String::new()
        };
        format!("{:.0} ms ({}){per}", self.total_ms(), parts.join(", "))
    }

    /// Totals, and per `unit` (`ms_per_<unit>`, `replica_ms_per_<unit>`).
    pub fn json(&self, count: u64, unit: &str) -> Value {
        let per = |ms: f64| (count > 0).then(|| ms / count as f64);
        let mut roles = serde_json::Map::new();
        for (role, (ticks, n)) in &self.by_role {
            roles.insert(
                role.as_str().to_owned(),
                json!({"ms": Self::ms(*ticks), "processes": n, format!("ms_per_{unit}"): per(Self::ms(*ticks))}),
            );
        }
        let mut out = serde_json::Map::new();
        out.insert("total_ms".to_owned(), json!(self.total_ms()));
        out.insert(format!("ms_per_{unit}"), json!(per(self.total_ms())));
        out.insert(
            format!("replica_ms_per_{unit}"),
            json!(per(self.role_ms(Role::Replica))),
        );
        out.insert("by_role".to_owned(), Value::Object(roles));
        // Each process's share, so a figure can say which one did the work (e.g. the one shard
        // that owns the broadcast slot, against the other Redis nodes).
        let seconds = self.seconds;
        let processes: Vec<Value> = self
            .by_process
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "role": p.role.as_str(),
                    "ms": p.ms(),
                    "ms_per_s": (seconds > 0.0).then(|| p.ms() / seconds),
                })
            })
            .collect();
        out.insert("seconds".to_owned(), json!(seconds));
        out.insert("by_process".to_owned(), Value::Array(processes));
        Value::Object(out)
    }
}

/// Parses `--server-pids 12,34`.
pub fn parse_pids(list: &str) -> anyhow::Result<Vec<u32>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("not a pid: {s}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194560 120 0 0 0 37 12 0 0 20 0 1";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "nginx: worker");
        assert_eq!(stat.ppid, 4241);
        assert_eq!(stat.ticks, 49);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = std::process::id();
        let pids = ServerPids::resolve(&[me], None).unwrap().unwrap();
        assert_eq!(pids.procs.len(), 1);
        assert!(ServerPids::resolve(&[], None).unwrap().is_none());
        assert_eq!(parse_pids("1, 2,").unwrap(), vec![1, 2]);
    }

    #[test]
    fn a_redis_node_is_named_by_the_port_in_its_title() {
        assert_eq!(
            redis_port("redis-server 127.0.0.1:7001 [cluster]"),
            Some(7001)
        );
        assert_eq!(redis_port("redis-server *:6379"), Some(6379));
        assert_eq!(redis_port("redis-server\0--port\0x"), None);
    }
}
