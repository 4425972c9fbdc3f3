//! The cluster's control server: the fault drills (kill, drain, restart a replica; stop, start,
//! freeze Redis) over loopback HTTP, behind the per-run token, and the same drills for the
//! terminal's keys.
//!
//! `GET /drills` answers the process table; `POST /drills/{action}` checks the body
//! ([`crate::drill`]), acts on [`super::supervisor`]'s children and answers the state after.
//! Only the replicas the cluster started know the address and the token; the page reaches this
//! through them.
//!
//! The HTTP layer (routes, token, error shape) is shared with `stickyws drills-docker`
//! ([`super::docker_drills`]), which carries the same drills out on a compose project's
//! containers: both implement [`Backend`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::supervisor::{NotApplicable, RunState, Supervisor, now_ms};
use crate::drill::{self as drills, BadDrill, Drill, FROM_HEADER, ReplicaId};

/// A drained replica has this long to exit during a restart before it is killed.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);
/// A restart answers once the new process answers `/healthz`, or after this long.
const RESTART_WITHIN: Duration = Duration::from_secs(15);
/// A killed child is reaped within this (SIGKILL cannot be caught).
const KILLED_WITHIN: Duration = Duration::from_secs(2);
/// How long a restarted Redis has to answer `PING`.
const REDIS_READY_WITHIN: Duration = Duration::from_secs(10);
/// A drill aimed at the replica that forwarded it waits this long, so the answer gets out first.
const SELF_DRILL_DELAY: Duration = Duration::from_millis(300);

/// What carries the drills out behind the control API: the cluster's process table
/// ([`Control`]) or the Docker engine ([`super::docker_drills`]).
pub trait Backend: Clone + Send + Sync + 'static {
    /// `GET /drills`'s answer: the state described in DRILLS.md.
    fn state(&self) -> impl Future<Output = Result<Value, Refused>> + Send;
    /// Runs a checked drill; `from` is the replica that forwarded it. Answers
    /// `{"drill", "target", "state"}` (and `"pending": true` when it runs just after).
    fn run(
        &self,
        drill: Drill,
        from: Option<&str>,
    ) -> impl Future<Output = Result<Value, Refused>> + Send;
}

/// What the drills act on.
#[derive(Clone, Debug)]
pub struct Control {
    sup: Supervisor,
    token: Arc<str>,
    /// Replicas the cluster runs (`app-1` .. `app-<replicas>`).
    replicas: u8,
    /// Ends pending freezes' timers with the cluster (their SIGCONT is then sent by the stop).
    stop: CancellationToken,
}

/// Why a drill was not run.
#[derive(Debug)]
pub enum Refused {
    Bad(BadDrill),
    UnknownReplica(String),
    NotApplicable(String),
    Failed(String),
}

/// The contract's error shape, `{"error": {"code", "message"}}` (the replicas' own is in
/// `crate::http`, which a supervisor does not run).
pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl Refused {
    pub(super) fn into_response(self) -> Response {
        let message = self.message();
        match self {
            Refused::Bad(bad) => error(bad.status(), bad.code(), message),
            Refused::UnknownReplica(_) => {
                error(StatusCode::BAD_REQUEST, "unknown_replica", message)
            }
            Refused::NotApplicable(_) => error(StatusCode::CONFLICT, "not_applicable", message),
            Refused::Failed(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "drill_failed", message),
        }
    }

    /// For the terminal.
    pub fn message(&self) -> String {
        match self {
            Refused::Bad(bad) => bad.to_string(),
            Refused::UnknownReplica(id) => format!("{id} is not one of this cluster's replicas"),
            Refused::NotApplicable(why) | Refused::Failed(why) => why.clone(),
        }
    }
}

impl From<NotApplicable> for Refused {
    fn from(err: NotApplicable) -> Self {
        Refused::NotApplicable(err.to_string())
    }
}

/// The token every request needs: 32 hex characters, fresh per run.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Control {
    pub fn new(sup: Supervisor, token: String, replicas: u8, stop: CancellationToken) -> Self {
        Self {
            sup,
            token: token.into(),
            replicas,
            stop,
        }
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    fn check_replica(&self, id: ReplicaId) -> Result<String, Refused> {
        if id.number() > self.replicas {
            return Err(Refused::UnknownReplica(id.to_string()));
        }
        Ok(id.to_string())
    }

    /// Runs a drill; `from` is the replica that forwarded it, if any. Answers with the drill's
    /// JSON: `{"drill", "target", "state"}` (and `"pending": true` when it runs just after).
    pub async fn run(&self, drill: Drill, from: Option<&str>) -> Result<Value, Refused> {
        let target = drill.target();
        if let Drill::Kill(r) | Drill::Drain(r) | Drill::Restart(r) = drill {
            let name = self.check_replica(r)?;
            let (state, _, _) = self
                .sup
                .get(&name)
                .ok_or_else(|| Refused::UnknownReplica(name.clone()))?;
            let applicable = match drill {
                Drill::Kill(_) => state != RunState::Down,
                Drill::Drain(_) => !matches!(state, RunState::Down | RunState::Draining),
                _ => !matches!(state, RunState::Draining | RunState::Starting),
            };
            if !applicable {
                return Err(Refused::NotApplicable(format!(
                    "{name} is {}",
                    serde_json::to_value(state).unwrap_or_default()
                )));
            }
            // The forwarding replica would die before its answer got out: answer, then act.
            if from == Some(name.as_str()) {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SELF_DRILL_DELAY).await;
                    if let Err(refused) = this.act(drill).await {
                        tracing::warn!(drill = drill.name(), why = refused.message(), "drill");
                    }
                });
                return Ok(self.answer(drill, &target, true));
            }
        }
        self.act(drill).await?;
        Ok(self.answer(drill, &target, false))
    }

    fn answer(&self, drill: Drill, target: &str, pending: bool) -> Value {
        let mut answer = json!({
            "drill": drill.name(),
            "target": target,
            "state": self.sup.snapshot(),
        });
        if pending {
            answer["pending"] = json!(true);
        }
        answer
    }

    async fn act(&self, drill: Drill) -> Result<(), Refused> {
        match drill {
            Drill::Kill(r) => {
                let name = r.to_string();
                self.sup.signal(&name, Signal::SIGKILL)?;
                self.wait_down(&name, KILLED_WITHIN).await;
                Ok(())
            }
            Drill::Drain(r) => {
                let name = r.to_string();
                let pid = self.sup.signal(&name, Signal::SIGTERM)?;
                self.sup.set_state_if(
                    &name,
                    pid,
                    &[RunState::Up, RunState::Starting],
                    RunState::Draining,
                );
                Ok(())
            }
            Drill::Restart(r) => self.restart_replica(&r.to_string()).await,
            Drill::RedisStop => {
                let (state, _, _) = self.redis()?;
                if state == RunState::Down {
                    return Err(Refused::NotApplicable("redis is already down".to_owned()));
                }
                self.sup.signal("redis", Signal::SIGKILL)?;
                self.wait_down("redis", KILLED_WITHIN).await;
                Ok(())
            }
            Drill::RedisStart => self.start_redis().await,
            Drill::RedisFreeze { seconds } => self.freeze_redis(seconds),
        }
    }

    fn redis(&self) -> Result<(RunState, Option<u32>, super::supervisor::Spec), Refused> {
        self.sup.get("redis").ok_or_else(|| {
            Refused::NotApplicable(
                "the Redis drills act on a single Redis; this cluster runs a Redis Cluster"
                    .to_owned(),
            )
        })
    }

    /// Waits (bounded) until the cluster's reaper has marked `name` down.
    async fn wait_down(&self, name: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .sup
                .get(name)
                .is_some_and(|(s, _, _)| s == RunState::Down)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn restart_replica(&self, name: &str) -> Result<(), Refused> {
        let started = Instant::now();
        if let Ok(pid) = self.sup.signal(name, Signal::SIGTERM) {
            self.sup.set_state_if(
                name,
                pid,
                &[RunState::Up, RunState::Starting],
                RunState::Draining,
            );
            if !self.wait_down(name, DRAIN_WITHIN).await {
                let _ = self.sup.signal(name, Signal::SIGKILL);
                self.wait_down(name, KILLED_WITHIN).await;
            }
        }
        let (_, _, spec) = self
            .sup
            .get(name)
            .ok_or_else(|| Refused::UnknownReplica(name.to_owned()))?;
        let addr = spec.addr;
        let pid = self
            .sup
            .start(spec, RunState::Starting)
            .map_err(|err| Refused::Failed(format!("{err:#}")))?;
        let left = RESTART_WITHIN.saturating_sub(started.elapsed());
        let answers = super::cluster::wait_http_ok(addr, "/healthz", left).await;
        // Slow to answer is still running: up, as far as the table can tell.
        self.sup
            .set_state_if(name, pid, &[RunState::Starting], RunState::Up);
        if answers {
            // nginx keeps a replica that failed out of rotation for its fail_timeout (10 s by
            // default); a reload starts fresh workers that try it at once. Old workers finish
            // the requests and sockets they hold.
            if self.sup.signal("nginx", Signal::SIGHUP).is_ok() {
                println!("{name} is back; nginx reloaded so it sends {name} traffic at once");
            }
        }
        Ok(())
    }

    async fn start_redis(&self) -> Result<(), Refused> {
        let (state, _, spec) = self.redis()?;
        if state != RunState::Down {
            return Err(Refused::NotApplicable(format!(
                "redis is {}, not down",
                serde_json::to_value(state).unwrap_or_default()
            )));
        }
        let port = spec.addr.port();
        let pid = self
            .sup
            .start(spec, RunState::Starting)
            .map_err(|err| Refused::Failed(format!("{err:#}")))?;
        if !super::cluster::wait_redis(port, REDIS_READY_WITHIN).await {
            return Err(Refused::Failed(format!(
                "redis did not answer PING on port {port} within {REDIS_READY_WITHIN:?}\n{}",
                self.sup.tail("redis")
            )));
        }
        self.sup
            .set_state_if("redis", pid, &[RunState::Starting], RunState::Up);
        Ok(())
    }

    fn freeze_redis(&self, seconds: u64) -> Result<(), Refused> {
        let (state, pid, _) = self.redis()?;
        let Some(pid) = pid.filter(|_| state == RunState::Up) else {
            return Err(Refused::NotApplicable(format!(
                "redis is {}, not up",
                serde_json::to_value(state).unwrap_or_default()
            )));
        };
        self.sup.signal("redis", Signal::SIGSTOP)?;
        let until = now_ms() + seconds * 1000;
        self.sup.set_state("redis", RunState::Frozen, Some(until));
        let sup = self.sup.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                // The cluster's stop resumes a frozen Redis itself before stopping it.
                () = stop.cancelled() => return,
            }
            // Only the process that was frozen, and only if nothing else moved it since.
            if sup.set_state_if("redis", pid, &[RunState::Frozen], RunState::Up) {
                let _ = sup.signal("redis", Signal::SIGCONT);
                println!("redis resumed after {seconds}s frozen");
            }
        });
        Ok(())
    }
}

impl Backend for Control {
    async fn state(&self) -> Result<Value, Refused> {
        serde_json::to_value(self.sup.snapshot()).map_err(|err| Refused::Failed(err.to_string()))
    }

    async fn run(&self, drill: Drill, from: Option<&str>) -> Result<Value, Refused> {
        Control::run(self, drill, from).await
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(token: &str, headers: &HeaderMap) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|given| {
        Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(token.as_bytes()))
            .into()
    })
}

/// The router's state: a backend behind its token.
#[derive(Clone)]
struct Guarded<B> {
    backend: B,
    token: Arc<str>,
}

/// Serves the control API on a free loopback port until `stop`; returns the address.
pub async fn serve(control: Control, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let token = control.token.clone();
    serve_on(listener, &token, control, stop)
}

/// Serves the control API for `backend` on `listener`, behind `token`, until `stop`.
pub fn serve_on<B: Backend>(
    listener: tokio::net::TcpListener,
    token: &str,
    backend: B,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/drills", get(state::<B>))
        .route("/drills/{action}", post(drill::<B>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(drills::MAX_BODY_BYTES))
        .with_state(Guarded {
            backend,
            token: token.into(),
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(cause = %err, "control server stopped");
        }
    });
    Ok(addr)
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "bad_token",
        "send Authorization: Bearer <the drills token>",
    )
}

async fn state<B: Backend>(State(guarded): State<Guarded<B>>, headers: HeaderMap) -> Response {
    if !authorized(&guarded.token, &headers) {
        return unauthorized();
    }
    match guarded.backend.state().await {
        Ok(state) => Json(state).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn drill<B: Backend>(
    State(guarded): State<Guarded<B>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&guarded.token, &headers) {
        return unauthorized();
    }
    let Ok(body) = body else {
        return Refused::Bad(BadDrill::TooLarge(drills::MAX_BODY_BYTES + 1)).into_response();
    };
    let from = headers.get(FROM_HEADER).and_then(|v| v.to_str().ok());
    let parsed = drills::parse(&action, &body).map_err(Refused::Bad);
    match async { guarded.backend.run(parsed?, from).await }.await {
        Ok(answer) => {
            let from = from.map_or_else(String::new, |r| format!(" (forwarded by {r})"));
            println!(
                "drill {} on {}{from}",
                answer["drill"].as_str().unwrap_or_default(),
                answer["target"].as_str().unwrap_or_default()
            );
            Json(answer).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}
