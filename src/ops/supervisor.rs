//! The cluster's process table: every child `stickyws cluster` started (Redis, the replicas,
//! nginx), how to start each again on the same port with the same environment, and what state
//! each is in — as the page's drills and the terminal see it.
//!
//! The table only records and signals; it never waits while locked. What a drill does with it
//! (signal, wait, start again) is [`super::control`]'s; the order of the cluster's steps and its
//! banner are [`super::cluster`]'s.
//!
//! Children are started through `setpriv --pdeathsig TERM` where available, so even a `kill -9`
//! of the cluster takes them down; and from the cluster's one runtime thread, whose death is
//! what that signal follows.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};

use super::host::which;

/// What a child is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Redis,
    /// `app-<n>`, 1-based.
    Replica(u8),
    Nginx,
}

impl Role {
    pub fn describe(self) -> &'static str {
        match self {
            Role::Redis => "broker",
            Role::Replica(_) => "replica",
            Role::Nginx => "proxy",
        }
    }
}

/// How to start a child, kept so a restart is the same start again.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where it listens (the same on every start).
    pub addr: SocketAddr,
}

/// A child's state, as `GET /drills` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Up,
    Down,
    Draining,
    Starting,
    /// Redis only: SIGSTOPped by a drill.
    Frozen,
}

/// One row of the table.
#[derive(Debug)]
struct Slot {
    spec: Spec,
    /// `None` once reaped.
    child: Option<Child>,
    pid: Option<u32>,
    state: RunState,
    since_ms: u64,
    starts: u32,
    /// How the last run ended, e.g. `signal 9 (SIGKILL)`.
    exit: Option<String>,
    frozen_until_ms: Option<u64>,
    log: PathBuf,
}

impl Slot {
    fn set(&mut self, state: RunState) {
        if self.state != state {
            self.state = state;
            self.since_ms = now_ms();
        }
    }
}

/// A child that exited, as the reaper found it.
#[derive(Debug, Clone)]
pub struct Exited {
    pub name: String,
    pub role: Role,
    pub exit: String,
    pub log: PathBuf,
    /// It was being drained or stopped on purpose.
    pub expected: bool,
}

/// What `GET /drills` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub replicas: Vec<ReplicaRow>,
    pub redis: RedisRow,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRow {
    pub id: String,
    pub pid: Option<u32>,
    pub state: RunState,
    pub since_ms: u64,
    pub starts: u32,
    pub exit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisRow {
    pub pid: Option<u32>,
    pub state: RunState,
    pub since_ms: u64,
    pub frozen_until_ms: Option<u64>,
    pub port: u16,
}

/// A child the table cannot act on as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotApplicable {
    #[error("{0} is not part of this cluster")]
    Unknown(String),
    #[error("{name} is {state:?}, not running")]
    NotRunning { name: String, state: RunState },
}

/// The process table; clones share it.
#[derive(Clone, Debug)]
pub struct Supervisor {
    table: Arc<Mutex<Vec<Slot>>>,
    /// The run's log folder, kept after exit.
    logs: Arc<PathBuf>,
    /// Set by [`Supervisor::stop_all`]: a drill still running (a restart) starts nothing more.
    stopping: Arc<AtomicBool>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `exit code 0`, `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(n) => match Signal::try_from(n) {
            Ok(sig) => format!("signal {n} ({})", sig.as_str()),
            Err(_) => format!("signal {n}"),
        },
        None => status.to_string(),
    }
}

impl Supervisor {
    pub fn new(logs: PathBuf) -> Self {
        Self {
            table: Arc::new(Mutex::new(Vec::new())),
            logs: Arc::new(logs),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn logs(&self) -> &Path {
        &self.logs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // Nothing panics while holding it; a poisoned table is still the truth.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `spec` (a new row, or the same row again once it is down); returns the PID.
    pub fn start(&self, spec: Spec, state: RunState) -> anyhow::Result<u32> {
        let log = self.logs.join(format!("{}.log", spec.name));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut table = self.lock();
        if self.stopping.load(Ordering::Relaxed) {
            anyhow::bail!("the cluster is stopping");
        }
        let index = table.iter().position(|s| s.spec.name == spec.name);
        if let Some(i) = index {
            if table[i].child.is_some() {
                anyhow::bail!("{} is still running", spec.name);
            }
            // Every start appends: the log of the run that died stays readable above.
            let _ = writeln!(
                out,
                "--- started again ({}) ---",
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
        }
        let err = out.try_clone()?;
        let mut command = match which("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&spec.program);
                c
            }
            None => Command::new(&spec.program),
        };
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
        let pid = child.id().unwrap_or(0);
        let slot = Slot {
            spec,
            child: Some(child),
            pid: Some(pid),
            state,
            since_ms: now_ms(),
            starts: 1,
            exit: None,
            frozen_until_ms: None,
            log,
        };
        match index {
            Some(i) => {
                let starts = table[i].starts + 1;
                table[i] = Slot { starts, ..slot };
            }
            None => table.push(slot),
        }
        Ok(pid)
    }

    /// Reaps every child that exited since the last call; each is marked down.
    pub fn reap(&self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for slot in self.lock().iter_mut() {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => describe_exit(status),
                Ok(None) => continue,
                Err(err) => format!("lost track of it: {err}"),
            };
            let expected = slot.state == RunState::Draining;
            slot.child = None;
            slot.pid = None;
            slot.exit = Some(status.clone());
            slot.frozen_until_ms = None;
            slot.set(RunState::Down);
            exited.push(Exited {
                name: slot.spec.name.clone(),
                role: slot.spec.role,
                exit: status,
                log: slot.log.clone(),
                expected,
            });
        }
        exited
    }

    /// Sends `signal` to a running child; returns its PID.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<u32, NotApplicable> {
        let table = self.lock();
        let slot = table
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| NotApplicable::Unknown(name.to_owned()))?;
        match slot.pid {
            Some(pid) if slot.child.is_some() => {
                // The child is not reaped yet, so the PID is still its own.
                let _ = kill(Pid::from_raw(pid as i32), signal);
                Ok(pid)
            }
            _ => Err(NotApplicable::NotRunning {
                name: name.to_owned(),
                state: slot.state,
            }),
        }
    }

    /// Sets a child's state (the drills' view: draining, frozen, up once ready).
    pub fn set_state(&self, name: &str, state: RunState, frozen_until_ms: Option<u64>) {
        if let Some(slot) = self.lock().iter_mut().find(|s| s.spec.name == name) {
            slot.set(state);
            slot.frozen_until_ms = frozen_until_ms;
        }
    }

    /// `state` only if the child is still the one with `pid` (a start may have replaced it).
    pub fn set_state_if(&self, name: &str, pid: u32, from: &[RunState], to: RunState) -> bool {
        let mut table = self.lock();
        let Some(slot) = table.iter_mut().find(|s| s.spec.name == name) else {
            return false;
        };
        if slot.pid != Some(pid) || !from.contains(&slot.state) {
            return false;
        }
        slot.set(to);
        if to != RunState::Frozen {
            slot.frozen_until_ms = None;
        }
        true
    }

    /// The state, PID and spec of one child.
    pub fn get(&self, name: &str) -> Option<(RunState, Option<u32>, Spec)> {
        self.lock()
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| (s.state, s.pid, s.spec.clone()))
    }

    pub fn log_of(&self, name: &str) -> Option<PathBuf> {
        self.lock()
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| s.log.clone())
    }

    /// Every child: name, role, PID, address, state; in start order.
    pub fn rows(&self) -> Vec<(String, Role, Option<u32>, SocketAddr, RunState)> {
        self.lock()
            .iter()
            .map(|s| {
                (
                    s.spec.name.clone(),
                    s.spec.role,
                    s.pid,
                    s.spec.addr,
                    s.state,
                )
            })
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        let table = self.lock();
        let replicas = table
            .iter()
            .filter(|s| matches!(s.spec.role, Role::Replica(_)))
            .map(|s| ReplicaRow {
                id: s.spec.name.clone(),
                pid: s.pid,
                state: s.state,
                since_ms: s.since_ms,
                starts: s.starts,
                exit: s.exit.clone(),
            })
            .collect();
        let redis = table.iter().find(|s| s.spec.role == Role::Redis).map_or(
            RedisRow {
                pid: None,
                state: RunState::Down,
                since_ms: 0,
                frozen_until_ms: None,
                port: 0,
            },
            |s| RedisRow {
                pid: s.pid,
                state: s.state,
                since_ms: s.since_ms,
                frozen_until_ms: s.frozen_until_ms,
                port: s.spec.addr.port(),
            },
        );
        Snapshot { replicas, redis }
    }

    /// The last lines of a child's log.
    pub fn tail(&self, name: &str) -> String {
        self.log_of(name)
            .map(|log| super::redis_server::log_tail(&log, 15))
            .unwrap_or_default()
    }

    /// Stops everything: a frozen Redis is resumed first (a stopped process cannot act on
    /// SIGTERM), then SIGTERM to all in reverse start order (nginx, replicas, Redis), and
    /// SIGKILL to what is left after `grace`. Returns the PIDs that had to be killed.
    pub async fn stop_all(&self, grace: Duration) -> Vec<String> {
        {
            let table = self.lock();
            // Under the lock: a start either finished before (and is stopped here) or fails.
            self.stopping.store(true, Ordering::Relaxed);
            for slot in table.iter().rev() {
                let Some(pid) = slot.pid.filter(|_| slot.child.is_some()) else {
                    continue;
                };
                let pid = Pid::from_raw(pid as i32);
                if slot.state == RunState::Frozen {
                    let _ = kill(pid, Signal::SIGCONT);
                }
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.running() > 0 {
            self.reap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut killed = Vec::new();
        let mut children = Vec::new();
        for slot in self.lock().iter_mut() {
            if let Some(child) = slot.child.take() {
                killed.push(slot.spec.name.clone());
                children.push(child);
            }
        }
        for mut child in children {
            let _ = child.kill().await;
        }
        killed
    }

    /// Children not yet reaped.
    pub fn running(&self) -> usize {
        self.lock().iter().filter(|s| s.child.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_as_a_person_reads_them() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exit code 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn a_child_that_dies_is_reaped_down_and_starts_again_as_the_same_row() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().to_owned());
        let spec = Spec {
            name: "app-1".to_owned(),
            role: Role::Replica(1),
            program: "sleep".into(),
            args: vec!["30".to_owned()],
            env: vec![],
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let first = sup.start(spec.clone(), RunState::Up).unwrap();
        assert!(
            sup.start(spec.clone(), RunState::Up).is_err(),
            "still running"
        );
        sup.signal("app-1", Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let exited = loop {
            let exited = sup.reap();
            if !exited.is_empty() || Instant::now() > deadline {
                break exited;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].exit, "signal 9 (SIGKILL)");
        let row = &sup.snapshot().replicas[0];
        assert_eq!((row.state, row.pid, row.starts), (RunState::Down, None, 1));
        assert!(matches!(
            sup.signal("app-1", Signal::SIGKILL),
            Err(NotApplicable::NotRunning { .. })
        ));
        let second = sup.start(spec, RunState::Up).unwrap();
        assert_ne!(first, second);
        let row = &sup.snapshot().replicas[0];
        assert_eq!(
            (row.state, row.pid, row.starts),
            (RunState::Up, Some(second), 2)
        );
        assert!(sup.stop_all(Duration::from_secs(5)).await.is_empty());
        assert_eq!(sup.running(), 0);
    }
}
