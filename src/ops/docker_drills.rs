//! `stickyws drills-docker`: the fault drills under docker compose. It serves the cluster's
//! control API ([`super::control`], same routes, token and answers) and carries each drill out
//! on the compose project's containers through the Docker Engine API on its unix socket: kill
//! and drain are signals (`/kill?signal=KILL|TERM`), restart is `/restart`, the Redis drills are
//! `/kill`, `/start` and `/pause` … `/unpause`.
//!
//! Containers are found by compose's labels (`com.docker.compose.project` and
//! `com.docker.compose.service` = `app<N>` or `redis`); the state comes from each one's inspect.
//! Off unless `docker/compose.drills.yml` is layered over the shipped compose file; what the
//! replicas check and forward is [`crate::http`]'s, the drills' bodies [`crate::drill`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::control::{Backend, Refused};
use super::supervisor::now_ms;
use crate::drill::{Drill, ReplicaId};

/// The label compose puts on every container of a project, and the one naming its service.
const PROJECT_LABEL: &str = "com.docker.compose.project";
const SERVICE_LABEL: &str = "com.docker.compose.service";
/// One Engine API call (a restart waits for the stop, `RESTART_STOP_SECS`, then starts).
const ENGINE_WITHIN: Duration = Duration::from_secs(12);
/// The largest Engine answer read: a project's container list is a few KiB.
const MAX_ENGINE_BYTES: usize = 4 * 1024 * 1024;
/// A restarted replica gets this long to drain before the engine kills it.
const RESTART_STOP_SECS: u32 = 5;
/// A restart answers once the container is healthy, or after this long.
const RESTART_WITHIN: Duration = Duration::from_secs(15);
/// A killed container is seen exited within this.
const KILLED_WITHIN: Duration = Duration::from_secs(2);
/// How long a started Redis has to report healthy.
const REDIS_READY_WITHIN: Duration = Duration::from_secs(10);
/// A drill aimed at the replica that forwarded it waits this long, so the answer gets out first.
const SELF_DRILL_DELAY: Duration = Duration::from_millis(300);
/// The shortest token accepted: a guessable one would hand the Docker socket's powers to anyone
/// who reaches a replica.
const MIN_TOKEN_CHARS: usize = 16;
/// The port Redis listens on inside its container (the state's `redis.port`).
const REDIS_PORT: u16 = 6379;

/// `stickyws drills-docker`.
#[derive(Debug, clap::Args)]
pub struct DockerDrillsArgs {
    /// Where the control API listens (inside the compose network; not published).
    #[arg(long, env = "DRILLS_LISTEN", default_value = "0.0.0.0:9000")]
    pub listen: SocketAddr,
    /// The Docker Engine's socket, mounted into the container.
    #[arg(long, env = "DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub socket: PathBuf,
    /// The compose project whose containers the drills act on; by default this container's own.
    #[arg(long, env = "DRILLS_PROJECT")]
    pub project: Option<String>,
}

/// Why an Engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the Docker socket {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the Docker Engine: {0}")]
    Http(String),
    #[error("the Docker Engine did not answer within {ENGINE_WITHIN:?}")]
    Timeout,
    #[error("the Docker Engine answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error("the Docker Engine's answer to {0} is not what it documents: {1}")]
    Shape(String, String),
}

impl From<EngineError> for Refused {
    fn from(err: EngineError) -> Self {
        Refused::Failed(err.to_string())
    }
}

/// The Engine API over its unix socket: one HTTP/1.1 request per connection.
#[derive(Clone, Debug)]
struct Engine {
    socket: PathBuf,
}

impl Engine {
    /// `method path` with an empty body; the answer's body when it is 2xx.
    async fn call(&self, method: Method, path: &str) -> Result<Bytes, EngineError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let (status, body) = tokio::time::timeout(ENGINE_WITHIN, self.send(method, path))
            .await
            .map_err(|_| EngineError::Timeout)??;
        if !(200..300).contains(&status) {
            return Err(EngineError::Status {
                status,
                what,
                message: engine_message(&body),
            });
        }
        Ok(body)
    }

    async fn send(&self, method: Method, path: &str) -> Result<(u16, Bytes), EngineError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|err| EngineError::Connect(self.socket.display().to_string(), err))?;
        let http = |err: hyper::Error| EngineError::Http(err.to_string());
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http)?;
        // Ends with the answer (the sender is dropped below) or with the timeout around it.
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(axum::http::header::HOST, "docker")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|err| EngineError::Http(err.to_string()))?;
        let answer = sender.send_request(request).await.map_err(http)?;
        let status = answer.status().as_u16();
        let body = http_body_util::Limited::new(answer.into_body(), MAX_ENGINE_BYTES)
            .collect()
            .await
            .map_err(|err| EngineError::Http(err.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

/// The Engine's error body is `{"message": "..."}`.
fn engine_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    serde_json::from_slice::<Message>(body).map_or_else(
        |_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        |m| m.message,
    )
}

/// `GET /containers/json` for every container (stopped too) of `project`.
fn list_path(project: &str) -> String {
    let filters = json!({"label": [format!("{PROJECT_LABEL}={project}")]}).to_string();
    format!(
        "/containers/json?all=1&filters={}",
        percent_encode(&filters)
    )
}

/// Everything but unreserved characters, %-encoded (a query value).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A container's id, checked before it goes into a path (the engine's ids are hex).
fn checked_id(id: &str) -> Option<&str> {
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// What a drill asks of one container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Signal(&'static str),
    Restart,
    Start,
    Pause,
    Unpause,
}

/// The Engine call for `act` on container `id`.
fn act_path(id: &str, act: Act) -> String {
    match act {
        Act::Signal(signal) => format!("/containers/{id}/kill?signal={signal}"),
        Act::Restart => format!("/containers/{id}/restart?t={RESTART_STOP_SECS}"),
        Act::Start => format!("/containers/{id}/start"),
        Act::Pause => format!("/containers/{id}/pause"),
        Act::Unpause => format!("/containers/{id}/unpause"),
    }
}

/// One row of `GET /containers/json`, the fields used.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Labels", default)]
    labels: HashMap<String, String>,
}

fn parse_list(body: &[u8]) -> Result<Vec<Listed>, EngineError> {
    serde_json::from_slice(body)
        .map_err(|err| EngineError::Shape("GET /containers/json".to_owned(), err.to_string()))
}

/// What a container is for, from its compose service name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Replica(ReplicaId),
    Redis,
    Nginx,
}

fn service(name: &str) -> Option<Service> {
    match name {
        "redis" => Some(Service::Redis),
        "nginx" => Some(Service::Nginx),
        _ => {
            // The shipped file names replica N `appN` and gives it APP_ID `app-N`.
            let n = name.strip_prefix("app")?;
            ReplicaId::parse(&format!("app-{n}")).map(Service::Replica)
        }
    }
}

/// `GET /containers/{id}/json`, the fields used.
#[derive(Debug, Deserialize)]
struct InspectJson {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State")]
    state: StateJson,
    #[serde(rename = "Config", default)]
    config: ConfigJson,
}

#[derive(Debug, Deserialize)]
struct StateJson {
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Pid", default)]
    pid: i64,
    #[serde(rename = "ExitCode", default)]
    exit_code: i64,
    #[serde(rename = "StartedAt", default)]
    started_at: String,
    #[serde(rename = "FinishedAt", default)]
    finished_at: String,
    #[serde(rename = "Health", default)]
    health: Option<HealthJson>,
}

#[derive(Debug, Deserialize)]
struct HealthJson {
    #[serde(rename = "Status")]
    status: String,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigJson {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// A container's state as the drills see it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Inspected {
    id: String,
    /// `running`, `paused`, `exited`, `restarting`, `created`, `dead`, `removing`.
    status: String,
    pid: Option<u32>,
    /// `healthy`, `starting`, `unhealthy`, or `None` without a healthcheck.
    health: Option<String>,
    started_at: String,
    since_ms: u64,
    /// How the last run ended, when it is not running.
    exit: Option<String>,
    project: Option<String>,
}

impl Inspected {
    fn running(&self) -> bool {
        matches!(self.status.as_str(), "running" | "paused" | "restarting")
    }

    /// Up and, where it has a healthcheck, healthy.
    fn ready(&self) -> bool {
        self.status == "running" && self.health.as_deref().is_none_or(|h| h == "healthy")
    }
}

fn parse_inspect(body: &[u8]) -> Result<Inspected, EngineError> {
    let raw: InspectJson = serde_json::from_slice(body).map_err(|err| {
        EngineError::Shape("GET /containers/{id}/json".to_owned(), err.to_string())
    })?;
    let state = raw.state;
    let started = rfc3339_ms(&state.started_at);
    let finished = rfc3339_ms(&state.finished_at);
    let running = matches!(state.status.as_str(), "running" | "paused" | "restarting");
    let since_ms = if running {
        started
    } else {
        finished.or(started)
    };
    let exit = (!running && finished.is_some()).then(|| describe_exit_code(state.exit_code));
    Ok(Inspected {
        id: raw.id,
        pid: u32::try_from(state.pid).ok().filter(|&p| p > 0),
        health: state.health.map(|h| h.status),
        started_at: state.started_at,
        since_ms: since_ms.unwrap_or(0),
        exit,
        status: state.status,
        project: raw
            .config
            .labels
            .and_then(|mut labels| labels.remove(PROJECT_LABEL)),
    })
}

/// The engine's times are RFC 3339 with nanoseconds; its "never" is year 1 (→ `None`).
fn rfc3339_ms(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok().filter(|&ms| ms > 0)
}

/// As the cluster says it: a container killed by signal N exits with 128 + N.
fn describe_exit_code(code: i64) -> String {
    if (129..160).contains(&code) {
        let n = (code - 128) as i32;
        if let Ok(sig) = nix::sys::signal::Signal::try_from(n) {
            return format!("signal {n} ({})", sig.as_str());
        }
    }
    format!("exit code {code}")
}

/// What the drills remember between calls: what the engine does not say.
#[derive(Debug, Default)]
struct Memory {
    /// Drained containers, with the `StartedAt` of the run being drained.
    draining: HashMap<String, String>,
    /// A pending freeze: its number (so a later one is not ended by an earlier timer) and end.
    frozen: Option<(u64, u64)>,
    freezes: u64,
    /// Starts seen per service: (the last `StartedAt` seen, how many).
    starts: HashMap<String, (String, u32)>,
}

/// The drills on one compose project's containers.
#[derive(Clone, Debug)]
pub struct DockerDrills {
    engine: Engine,
    project: Arc<str>,
    memory: Arc<Mutex<Memory>>,
    stop: CancellationToken,
}

/// One service's container, inspected.
#[derive(Debug)]
struct Found {
    service: Service,
    name: String,
    container: Inspected,
}

impl DockerDrills {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // Nothing panics while holding it.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The project's containers the drills know, inspected, replicas by number.
    async fn containers(&self) -> Result<Vec<Found>, EngineError> {
        let listed = parse_list(
            &self
                .engine
                .call(Method::GET, &list_path(&self.project))
                .await?,
        )?;
        let mut found = Vec::new();
        for row in listed {
            let Some(name) = row.labels.get(SERVICE_LABEL) else {
                continue;
            };
            let (Some(service), Some(id)) = (service(name), checked_id(&row.id)) else {
                continue;
            };
            let path = format!("/containers/{id}/json");
            let container = match self.engine.call(Method::GET, &path).await {
                Ok(body) => parse_inspect(&body)?,
                // Removed between the list and the inspect.
                Err(EngineError::Status { status: 404, .. }) => continue,
                Err(err) => return Err(err),
            };
            found.push(Found {
                service,
                name: name.clone(),
                container,
            });
        }
        found.sort_by_key(|f| match f.service {
            Service::Replica(r) => r.number(),
            _ => 0,
        });
        Ok(found)
    }

    async fn find(&self, wanted: Service) -> Result<Inspected, Refused> {
        self.containers()
            .await?
            .into_iter()
            .find(|f| f.service == wanted)
            .map(|f| f.container)
            .ok_or_else(|| match wanted {
                Service::Replica(r) => Refused::UnknownReplica(r.to_string()),
                _ => Refused::NotApplicable(format!(
                    "compose project {} has no {wanted:?} container",
                    self.project
                )),
            })
    }

    async fn act(&self, id: &str, act: Act) -> Result<(), EngineError> {
        self.engine.call(Method::POST, &act_path(id, act)).await?;
        Ok(())
    }

    /// The state in DRILLS.md's shape.
    async fn snapshot(&self) -> Result<Value, EngineError> {
        let found = self.containers().await?;
        let mut memory = self.memory();
        let now = now_ms();
        if memory.frozen.is_some_and(|(_, until)| until < now) {
            memory.frozen = None;
        }
        let mut replicas = Vec::new();
        let mut redis = json!({"pid": null, "state": "down", "since_ms": 0,
                               "frozen_until_ms": null, "port": REDIS_PORT});
        for f in found {
            let c = &f.container;
            let draining = memory.draining.get(&c.id) == Some(&c.started_at);
            if !c.running() {
                memory.draining.remove(&c.id);
            }
            let starts = {
                let seen = memory
                    .starts
                    .entry(f.name.clone())
                    .or_insert_with(|| (c.started_at.clone(), 1));
                if seen.0 != c.started_at {
                    *seen = (c.started_at.clone(), seen.1 + 1);
                }
                seen.1
            };
            let state = match c.status.as_str() {
                "running" if draining => "draining",
                "running" if c.health.as_deref() == Some("starting") => "starting",
                "running" => "up",
                "paused" => "frozen",
                "restarting" => "starting",
                _ => "down",
            };
            match f.service {
                Service::Replica(r) => replicas.push(json!({
                    "id": r.to_string(), "pid": c.pid, "state": state, "since_ms": c.since_ms,
                    "starts": starts, "exit": c.exit,
                })),
                Service::Redis => {
                    let frozen_until = memory
                        .frozen
                        .filter(|_| state == "frozen")
                        .map(|(_, until)| until);
                    redis = json!({"pid": c.pid, "state": state, "since_ms": c.since_ms,
                                   "frozen_until_ms": frozen_until, "port": REDIS_PORT});
                }
                Service::Nginx => {}
            }
        }
        Ok(json!({"replicas": replicas, "redis": redis}))
    }

    /// Waits (bounded) until `wanted` holds for the service's container.
    async fn wait_for(&self, service: Service, limit: Duration, wanted: fn(&Inspected) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.find(service).await.is_ok_and(|c| wanted(&c)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn carry_out(&self, drill: Drill) -> Result<(), Refused> {
        match drill {
            Drill::Kill(r) => {
                let c = self.find(Service::Replica(r)).await?;
                self.act(&c.id, Act::Signal("KILL")).await?;
                self.wait_for(Service::Replica(r), KILLED_WITHIN, |c| !c.running())
                    .await;
            }
            Drill::Drain(r) => {
                let c = self.find(Service::Replica(r)).await?;
                self.act(&c.id, Act::Signal("TERM")).await?;
                self.memory().draining.insert(c.id, c.started_at);
            }
            Drill::Restart(r) => {
                let c = self.find(Service::Replica(r)).await?;
                let started = Instant::now();
                // Stops (TERM, then KILL after RESTART_STOP_SECS) and starts; a stopped one starts.
                self.act(&c.id, Act::Restart).await?;
                self.memory().draining.remove(&c.id);
                let left = RESTART_WITHIN.saturating_sub(started.elapsed());
                self.wait_for(Service::Replica(r), left, Inspected::ready)
                    .await;
                // nginx resolved the replica's name when it loaded its configuration, and keeps
                // a failed server out for fail_timeout: a reload does both afresh.
                if let Ok(nginx) = self.find(Service::Nginx).await
                    && nginx.status == "running"
                    && self.act(&nginx.id, Act::Signal("HUP")).await.is_ok()
                {
                    println!("{r} is back; nginx reloaded so it sends {r} traffic at once");
                }
            }
            Drill::RedisStop => {
                let c = self.find(Service::Redis).await?;
                if c.status == "paused" {
                    self.act(&c.id, Act::Unpause).await?;
                    self.memory().frozen = None;
                }
                self.act(&c.id, Act::Signal("KILL")).await?;
                self.wait_for(Service::Redis, KILLED_WITHIN, |c| !c.running())
                    .await;
            }
            Drill::RedisStart => {
                let c = self.find(Service::Redis).await?;
                self.act(&c.id, Act::Start).await?;
                self.wait_for(Service::Redis, REDIS_READY_WITHIN, Inspected::ready)
                    .await;
            }
            Drill::RedisFreeze { seconds } => self.freeze(seconds).await?,
        }
        Ok(())
    }

    async fn freeze(&self, seconds: u64) -> Result<(), Refused> {
        let c = self.find(Service::Redis).await?;
        self.act(&c.id, Act::Pause).await?;
        let number = {
            let mut memory = self.memory();
            memory.freezes += 1;
            memory.frozen = Some((memory.freezes, now_ms() + seconds * 1000));
            memory.freezes
        };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                // The stop resumes a frozen Redis itself.
                () = this.stop.cancelled() => return,
            }
            let ours = {
                let mut memory = this.memory();
                let ours = memory.frozen.is_some_and(|(n, _)| n == number);
                if ours {
                    memory.frozen = None;
                }
                ours
            };
            if ours {
                match this.act(&c.id, Act::Unpause).await {
                    Ok(()) => println!("redis resumed after {seconds}s frozen"),
                    Err(err) => tracing::warn!(%err, "resuming redis"),
                }
            }
        });
        Ok(())
    }

    /// Refuses a drill that makes no sense in the container's state, as the cluster does.
    fn applicable(drill: Drill, c: &Inspected, draining: bool) -> Result<(), Refused> {
        let status = c.status.as_str();
        let ok = match drill {
            Drill::Kill(_) => c.running(),
            Drill::Drain(_) => status == "running" && !draining,
            Drill::Restart(_) => !draining && status != "restarting",
            Drill::RedisStop => c.running(),
            Drill::RedisStart => !c.running(),
            Drill::RedisFreeze { .. } => status == "running",
        };
        if ok {
            return Ok(());
        }
        let shown = if draining { "draining" } else { status };
        Err(Refused::NotApplicable(format!(
            "{} is {shown}",
            drill.target()
        )))
    }

    /// Resumes a Redis this process froze (on its way out).
    async fn resume_frozen(&self) {
        if self.memory().frozen.take().is_none() {
            return;
        }
        if let Ok(c) = self.find(Service::Redis).await
            && c.status == "paused"
        {
            match self.act(&c.id, Act::Unpause).await {
                Ok(()) => println!("redis resumed (drills stopping)"),
                Err(err) => tracing::warn!(%err, "resuming redis"),
            }
        }
    }
}

impl Backend for DockerDrills {
    async fn state(&self) -> Result<Value, Refused> {
        Ok(self.snapshot().await?)
    }

    async fn run(&self, drill: Drill, from: Option<&str>) -> Result<Value, Refused> {
        let target = drill.target();
        let service = match drill {
            Drill::Kill(r) | Drill::Drain(r) | Drill::Restart(r) => Service::Replica(r),
            _ => Service::Redis,
        };
        let c = self.find(service).await?;
        let draining = self.memory().draining.get(&c.id) == Some(&c.started_at);
        Self::applicable(drill, &c, draining)?;
        let pending = from == Some(target.as_str());
        if pending {
            // The forwarding replica would die before its answer got out: answer, then act.
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SELF_DRILL_DELAY).await;
                if let Err(refused) = this.carry_out(drill).await {
                    tracing::warn!(drill = drill.name(), why = refused.message(), "drill");
                }
            });
        } else {
            self.carry_out(drill).await?;
        }
        let mut answer = json!({
            "drill": drill.name(),
            "target": target,
            "state": self.snapshot().await?,
        });
        if pending {
            answer["pending"] = json!(true);
        }
        Ok(answer)
    }
}

/// The token (`DRILLS_TOKEN`), or why it is not fit to use.
fn checked_token(token: Option<String>) -> anyhow::Result<String> {
    let token = token.unwrap_or_default();
    let token = token.trim();
    if token.chars().count() < MIN_TOKEN_CHARS {
        anyhow::bail!(
            "DRILLS_TOKEN must be set to at least {MIN_TOKEN_CHARS} characters (e.g. \
             `echo DRILLS_TOKEN=$(openssl rand -hex 16) >> .env`): anyone with it can kill \
             this project's containers"
        );
    }
    Ok(token.to_owned())
}

/// Runs `stickyws drills-docker` until SIGTERM or Ctrl-C.
pub async fn run(args: DockerDrillsArgs) -> anyhow::Result<()> {
    let token = checked_token(std::env::var("DRILLS_TOKEN").ok())?;
    let engine = Engine {
        socket: args.socket.clone(),
    };
    engine.call(Method::GET, "/_ping").await.with_context(|| {
        format!(
            "reaching the Docker Engine (mount its socket at {})",
            args.socket.display()
        )
    })?;
    let project = match args.project {
        Some(project) => project,
        None => {
            // A container's hostname is its short id unless compose was told otherwise.
            let me = gethostname::gethostname().to_string_lossy().into_owned();
            let id = checked_id(&me)
                .context("this container's hostname is not its id: set DRILLS_PROJECT")?;
            let body = engine
                .call(Method::GET, &format!("/containers/{id}/json"))
                .await?;
            parse_inspect(&body)?
                .project
                .context("this container has no compose project label: set DRILLS_PROJECT")?
        }
    };
    let stop = CancellationToken::new();
    let drills = DockerDrills {
        engine,
        project: project.as_str().into(),
        memory: Arc::default(),
        stop: stop.clone(),
    };
    let found = drills.snapshot().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = super::control::serve_on(listener, &token, drills.clone(), stop.clone())?;
    println!(
        "drills for compose project {project} on http://{addr} ({} replicas; redis {})",
        found["replicas"].as_array().map_or(0, Vec::len),
        found["redis"]["state"].as_str().unwrap_or("missing"),
    );
    crate::shutdown::signal().await;
    drills.resume_frozen().await;
    stop.cancel();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_asks_for_every_container_of_the_project_by_label() {
        assert_eq!(
            list_path("stickyws-e2e"),
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22com.docker.compose.\
             project%3Dstickyws-e2e%22%5D%7D"
        );
        assert_eq!(
            act_path("ab12", Act::Signal("KILL")),
            "/containers/ab12/kill?signal=KILL"
        );
        assert_eq!(
            act_path("ab12", Act::Restart),
            "/containers/ab12/restart?t=5"
        );
        assert_eq!(act_path("ab12", Act::Pause), "/containers/ab12/pause");
        assert_eq!(checked_id("0123abcDEF"), Some("0123abcDEF"));
        for bad in ["", "../x", "ab cd", "ab/kill", &"a".repeat(65)] {
            assert_eq!(checked_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn services_map_to_replicas_redis_and_nginx_and_nothing_else() {
        assert_eq!(service("app2"), ReplicaId::new(2).map(Service::Replica));
        assert_eq!(service("redis"), Some(Service::Redis));
        assert_eq!(service("nginx"), Some(Service::Nginx));
        for other in [
            "app0",
            "app",
            "app-2",
            "app02",
            "workers",
            "records-log",
            "drills",
        ] {
            assert_eq!(service(other), None, "{other}");
        }
    }

    /// The shape of `GET /containers/json` (Engine API 1.41), trimmed to a few fields.
    const LIST: &str = r#"[{"Id":"8dfafdbc3a40","Names":["/stickyws-e2e_app2_1"],
        "Image":"stickyws:local","State":"running","Status":"Up 2 minutes (healthy)",
        "Labels":{"com.docker.compose.project":"stickyws-e2e",
                  "com.docker.compose.service":"app2"}},
        {"Id":"9cd1","Names":["/x"],"State":"exited","Labels":{}}]"#;

    /// The shape of `GET /containers/{id}/json` for a container killed by SIGKILL.
    const KILLED: &str = r#"{"Id":"8dfafdbc3a40","Created":"2026-12-02T05:00:00.1Z",
        "State":{"Status":"exited","Running":false,"Paused":false,"Restarting":false,
                 "OOMKilled":false,"Dead":false,"Pid":0,"ExitCode":137,"Error":"",
                 "StartedAt":"2026-12-02T05:00:01.123456789Z",
                 "FinishedAt":"2026-12-02T05:03:04.500000000Z"},
        "RestartCount":0,
        "Config":{"Hostname":"8dfafdbc3a40","Env":["APP_ID=app-2"],
                  "Labels":{"com.docker.compose.project":"stickyws-e2e",
                            "com.docker.compose.service":"app2"}}}"#;

    /// A running container with a healthcheck, never stopped (the engine's zero time).
    const RUNNING: &str = r#"{"Id":"77aa","State":{"Status":"running","Running":true,
        "Paused":false,"Pid":4242,"ExitCode":0,"StartedAt":"2026-12-02T05:00:01Z",
        "FinishedAt":"0001-01-01T00:00:00Z","Health":{"Status":"starting","FailingStreak":0}},
        "Config":{"Labels":null}}"#;

    #[test]
    fn list_and_inspect_answers_parse_into_what_the_state_needs() {
        let listed = parse_list(LIST.as_bytes()).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "8dfafdbc3a40");
        assert_eq!(listed[0].labels[SERVICE_LABEL], "app2");

        let killed = parse_inspect(KILLED.as_bytes()).unwrap();
        assert_eq!(killed.status, "exited");
        assert!(!killed.running());
        assert_eq!(killed.pid, None);
        assert_eq!(killed.exit.as_deref(), Some("signal 9 (SIGKILL)"));
        assert_eq!(killed.since_ms, 1_796_187_784_500);
        assert_eq!(killed.project.as_deref(), Some("stickyws-e2e"));

        let running = parse_inspect(RUNNING.as_bytes()).unwrap();
        assert!(running.running() && !running.ready());
        assert_eq!(running.pid, Some(4242));
        assert_eq!(running.exit, None);
        assert_eq!(running.since_ms, 1_796_187_601_000);
        assert_eq!(running.project, None);

        assert!(parse_list(b"{\"message\":\"no\"}").is_err());
        assert!(parse_inspect(b"[]").is_err());
        assert_eq!(
            engine_message(br#"{"message":"Container 77aa is not running"}"#),
            "Container 77aa is not running"
        );
        assert_eq!(describe_exit_code(0), "exit code 0");
        assert_eq!(describe_exit_code(143), "signal 15 (SIGTERM)");
    }

    #[test]
    fn drills_that_make_no_sense_in_the_containers_state_are_refused() {
        let app2 = ReplicaId::new(2).unwrap();
        let killed = parse_inspect(KILLED.as_bytes()).unwrap();
        let mut running = parse_inspect(RUNNING.as_bytes()).unwrap();
        running.status = "running".to_owned();
        assert!(DockerDrills::applicable(Drill::Kill(app2), &killed, false).is_err());
        assert!(DockerDrills::applicable(Drill::Restart(app2), &killed, false).is_ok());
        assert!(DockerDrills::applicable(Drill::Kill(app2), &running, false).is_ok());
        assert!(DockerDrills::applicable(Drill::Drain(app2), &running, true).is_err());
        assert!(DockerDrills::applicable(Drill::RedisStart, &running, false).is_err());
        assert!(DockerDrills::applicable(Drill::RedisStart, &killed, false).is_ok());
        let mut paused = running;
        paused.status = "paused".to_owned();
        assert!(
            DockerDrills::applicable(Drill::RedisFreeze { seconds: 2 }, &paused, false).is_err()
        );
    }

    #[test]
    fn a_token_shorter_than_16_characters_is_refused() {
        assert!(checked_token(Some("short".to_owned())).is_err());
        assert!(checked_token(Some(" ".repeat(20))).is_err());
        assert!(checked_token(None).is_err());
        assert_eq!(
            checked_token(Some("0123456789abcdef\n".to_owned())).unwrap(),
            "0123456789abcdef"
        );
    }
}
