//! Fault drills, end to end: the real `stickyws cluster` (Redis, three replicas, nginx, its
//! control server), driven through nginx with the token the page itself carries, as the page's
//! drills panel drives it; and `stickyws serve` alone, where drills are off.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cluster_command::children_of;
use crate::support::process::Proc;
use crate::support::servers::{ReplicaEnv, ReplicaProc, free_port};

/// A running `stickyws cluster` and what its banner and page said.
struct DrillCluster {
    proc: Proc,
    url: String,
    /// The banner, as printed: one line per process with its PID and address.
    banner: String,
    /// The page's `data-drills-token`.
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `name="value"` in the page's HTML.
fn attr(html: &str, name: &str) -> String {
    let start = format!("{name}=\"");
    html.split(&start)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {name} in the page"))
        .to_owned()
}

impl DrillCluster {
    async fn start() -> DrillCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stickyws"));
        command
            .args(["cluster", "--port", "0", "--nginx-conf"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"))
            .arg("--records-log")
            .arg(dir.path().join("records.log"))
            .arg("--logs-dir")
            .arg(dir.path().join("logs"))
            .env_remove("API_KEY");
        let proc = Proc::spawn("cluster", &mut command, dir.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        let (banner, url) = loop {
            let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap_or_default();
            if let Some(url) = log.lines().find_map(|l| l.strip_prefix("open ")) {
                break (log.clone(), url.trim().trim_end_matches('/').to_owned());
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not print its URL\n{}",
                proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut cluster = DrillCluster {
            proc,
            url,
            banner,
            token: String::new(),
            http,
            _dir: dir,
        };
        let (_, _, html) = cluster.page(None).await;
        cluster.token = attr(&html, "data-drills-token");
        assert_eq!(cluster.token.len(), 32, "a per-run token on the page");
        cluster
    }

    /// The banner's line for `name`: `  app-2    replica  pid 1234     127.0.0.1:40001  up`.
    fn banner_line(&self, name: &str) -> Vec<String> {
        let line = self
            .banner
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no banner line for {name}\n{}", self.banner));
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn pid_of(&self, name: &str) -> u32 {
        let fields = self.banner_line(name);
        let at = fields.iter().position(|f| f == "pid").unwrap();
        fields[at + 1].parse().unwrap()
    }

    fn addr_of(&self, name: &str) -> SocketAddr {
        let fields = self.banner_line(name);
        let at = fields.iter().position(|f| f == "pid").unwrap();
        fields[at + 2].parse().unwrap()
    }

    /// `GET /` (with `sticky=<replica>` when given): the replica that rendered it, its local
    /// visit count, the HTML.
    async fn page(&self, sticky: Option<&str>) -> (String, u64, String) {
        let mut request = self.http.get(format!("{}/", self.url));
        if let Some(replica) = sticky {
            request = request.header("cookie", format!("sticky={replica}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "the page answers");
        let html = response.text().await.unwrap();
        let visits = attr(&html, "data-visits-local").parse().unwrap();
        (attr(&html, "data-replica"), visits, html)
    }

    async fn drills(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/api/drills", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `POST /api/drills/{action}` through nginx, sent by the page of `sticky`'s replica.
    async fn drill(&self, action: &str, body: Value, sticky: &str) -> (StatusCode, Value) {
        self.drill_raw(action, body.to_string(), &self.token, sticky)
            .await
    }

    async fn drill_raw(
        &self,
        action: &str,
        body: String,
        token: &str,
        sticky: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/api/drills/{action}", self.url))
            .bearer_auth(token)
            .header("cookie", format!("sticky={sticky}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET /api/drills` until `check` holds; returns the state and how long it took.
    async fn wait_drills(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let state = self.drills().await;
            if check(&state) {
                return (state, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "{what} not within {limit:?}: {state}\n{}",
                self.proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/api/stats` of one replica, asked directly.
    async fn stats_of(&self, name: &str) -> Value {
        let url = format!("http://{}/api/stats", self.addr_of(name));
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn mint(&self) -> (String, String) {
        let minted: Value = self
            .http
            .post(format!("{}/api/clients", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            minted["client_id"].as_str().unwrap().to_owned(),
            minted["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn post_text(&self, path: &str, token: &str) -> StatusCode {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&json!({"text": "during the drill"}))
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn replica<'a>(state: &'a Value, id: &str) -> &'a Value {
    state["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {state}"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_shows_down_within_a_second_the_site_keeps_answering_and_a_restart_starts_it_over()
 {
    let mut cluster = DrillCluster::start().await;
    // app-2's own memory counts these visits.
    for _ in 0..3 {
        cluster.page(Some("app-2")).await;
    }
    let (_, before, _) = cluster.page(Some("app-2")).await;
    assert!(before >= 4, "app-2 counted its visits: {before}");

    // A crash from outside (the README's `kill -9 <pid>` with the PID the banner printed).
    let pid = cluster.pid_of("app-2");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let (state, took) = cluster
        .wait_drills("app-2 down", Duration::from_secs(1), |s| {
            replica(s, "app-2")["state"] == "down"
        })
        .await;
    assert_eq!(replica(&state, "app-2")["exit"], "signal 9 (SIGKILL)");
    assert_eq!(replica(&state, "app-2")["pid"], Value::Null);
    eprintln!("app-2 shown down {took:?} after SIGKILL");

    // The site keeps answering: the page of a client whose cookie names app-2 comes from
    // another replica.
    for _ in 0..5 {
        let (rendered_by, _, _) = cluster.page(Some("app-2")).await;
        assert_ne!(rendered_by, "app-2");
    }
    let (status, refused) = cluster
        .drill("kill", json!({"replica": "app-2"}), "app-1")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "not_applicable");

    // Restart: up again on the same port (nginx's upstream for app-2 reaches it), its memory
    // empty.
    let (status, answer) = cluster
        .drill("restart", json!({"replica": "app-2"}), "app-1")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["drill"], "restart");
    assert_eq!(answer["target"], "app-2");
    assert_eq!(answer["replica"], "app-1", "the replica that forwarded it");
    let row = replica(&answer["state"], "app-2");
    assert_eq!(row["state"], "up", "{answer}");
    assert_eq!(row["starts"], 2);
    let new_pid = row["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, pid);
    // nginx would keep a failed upstream out for its fail_timeout (10 s); the restart reloads
    // nginx, so the cookie's requests reach app-2 again at once.
    let started = Instant::now();
    let after = loop {
        let (rendered_by, visits, _) = cluster.page(Some("app-2")).await;
        if rendered_by == "app-2" {
            break visits;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "nginx does not reach app-2 where it was"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "nginx sent the cookie's requests to app-2 again {:?} after its restart",
        started.elapsed()
    );
    assert_eq!(
        after, 1,
        "a restart sets app-2's local counter back to zero"
    );

    // A drill on the very replica that forwards it is answered before it is carried out.
    let (status, answer) = cluster
        .drill("kill", json!({"replica": "app-2"}), "app-2")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replica"], "app-2");
    assert_eq!(answer["pending"], true);
    cluster
        .wait_drills(
            "app-2 down after killing itself",
            Duration::from_secs(2),
            |s| replica(s, "app-2")["state"] == "down",
        )
        .await;

    // Drain: SIGTERM, the replica finishes and exits by itself.
    let (status, answer) = cluster
        .drill("drain", json!({"replica": "app-3"}), "app-1")
        .await;
    assert_eq!(status, 200, "{answer}");
    let drained = replica(&answer["state"], "app-3")["state"].clone();
    assert!(drained == "draining" || drained == "down", "{answer}");
    let (state, _) = cluster
        .wait_drills("app-3 drained", Duration::from_secs(12), |s| {
            replica(s, "app-3")["state"] == "down"
        })
        .await;
    assert_eq!(replica(&state, "app-3")["exit"], "exit code 0", "{state}");
    let (rendered_by, _, _) = cluster.page(Some("app-3")).await;
    assert_eq!(rendered_by, "app-1", "only app-1 is left");

    // Ctrl-C: every process the banner printed, and the restarted one, is gone.
    let mut pids: Vec<u32> = ["redis", "app-1", "app-2", "app-3", "nginx"]
        .iter()
        .map(|name| cluster.pid_of(name))
        .collect();
    pids.push(new_pid);
    let children = children_of(cluster.proc.pid());
    let status = cluster
        .proc
        .signal_and_wait(Signal::SIGINT, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().chain(&children).any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<u32> = pids
        .iter()
        .chain(&children)
        .copied()
        .filter(|p| alive(*p))
        .collect();
    assert_eq!(left, Vec::<u32>::new(), "processes outlived the cluster");
    let records = std::fs::read_to_string(cluster._dir.path().join("records.log")).unwrap();
    assert!(
        records.contains(&format!(
            "| app-1 | {:<15} | - | restart app-2: supervisor answered 200 OK",
            "drill"
        )),
        "{records}"
    );
    let log = std::fs::read_to_string(cluster._dir.path().join("cluster.log")).unwrap();
    assert!(log.contains("Process logs kept in"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_started_and_frozen_from_the_page_while_the_site_keeps_answering() {
    let mut cluster = DrillCluster::start().await;
    let (client, client_token) = cluster.mint().await;
    let redis_pid = cluster.pid_of("redis");
    let port = cluster.drills().await["redis"]["port"].clone();

    let (status, answer) = cluster.drill("redis-stop", json!({}), "app-1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"]["redis"]["state"], "down");
    // Every replica's own view of its broker link turns within a few seconds.
    let started = Instant::now();
    for name in ["app-1", "app-2", "app-3"] {
        loop {
            let stats = cluster.stats_of(name).await;
            if stats["broker"]["up"] == false {
                assert!(stats["broker"]["detail"].as_str().unwrap().len() > 3);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} still sees Redis up: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "every replica saw Redis down within {:?}",
        started.elapsed()
    );
    // What needs no broker keeps answering; publish says the broker is away.
    cluster.page(None).await;
    let echo = format!("/api/echo/{client}");
    let publish = format!("/api/publish/{client}");
    assert_eq!(cluster.post_text(&echo, &client_token).await, 200);
    assert_eq!(
        cluster.post_text(&publish, &client_token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, refused) = cluster.drill("redis-stop", json!({}), "app-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        cluster.proc.is_running(),
        "Redis exiting does not stop the cluster"
    );

    let (status, answer) = cluster.drill("redis-start", json!({}), "app-2").await;
    assert_eq!(status, 200, "{answer}");
    let redis = &answer["state"]["redis"];
    assert_eq!(redis["state"], "up", "{answer}");
    assert_eq!(redis["port"], port, "on the same port");
    assert_ne!(redis["pid"], json!(redis_pid));
    let started = Instant::now();
    for name in ["app-1", "app-2", "app-3"] {
        while cluster.stats_of(name).await["broker"]["up"] != true {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} not back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(cluster.post_text(&publish, &client_token).await, 200);
    let (status, refused) = cluster.drill("redis-start", json!({}), "app-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");

    // Frozen for 2 s, then resumed by the supervisor itself: the same process.
    let pid = cluster.drills().await["redis"]["pid"].clone();
    let (status, answer) = cluster
        .drill("redis-freeze", json!({"seconds": 2}), "app-3")
        .await;
    assert_eq!(status, 200, "{answer}");
    let redis = &answer["state"]["redis"];
    assert_eq!(redis["state"], "frozen", "{answer}");
    let until = redis["frozen_until_ms"].as_u64().unwrap();
    let since = redis["since_ms"].as_u64().unwrap();
    assert!((1900..=2100).contains(&(until - since)), "{answer}");
    let (state, took) = cluster
        .wait_drills("redis resumed", Duration::from_secs(4), |s| {
            s["redis"]["state"] == "up"
        })
        .await;
    assert!(
        took >= Duration::from_millis(1500),
        "resumed after {took:?}"
    );
    assert_eq!(state["redis"]["pid"], pid);
    assert_eq!(state["redis"]["frozen_until_ms"], Value::Null);
    let publish_ok = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.post_text(&publish, &client_token).await != 200 {
            assert!(
                Instant::now() < deadline,
                "publish not back after the freeze"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    publish_ok.await;

    // Frozen when the cluster stops: resumed, then stopped with everything else.
    let (status, _) = cluster
        .drill("redis-freeze", json!({"seconds": 30}), "app-1")
        .await;
    assert_eq!(status, 200);
    let redis_now = cluster.drills().await["redis"]["pid"].as_u64().unwrap() as u32;
    let status = cluster
        .proc
        .signal_and_wait(Signal::SIGINT, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(redis_now) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(redis_now), "a frozen Redis outlived the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_refuse_a_bad_token_a_bad_body_and_an_unknown_replica() {
    let cluster = DrillCluster::start().await;
    let kill = json!({"replica": "app-1"}).to_string();
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        (
            "kill",
            kill.clone(),
            "not-the-token",
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "kill",
            kill.clone(),
            "",
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "kill",
            "{not json".to_owned(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "kill",
            "{}".to_owned(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_replica",
        ),
        (
            "kill",
            json!({"replica": "app-9"}).to_string(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "unknown_replica",
        ),
        (
            "kill",
            json!({"replica": "app-100"}).to_string(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_replica",
        ),
        (
            "kill",
            json!({"replica": "app-1", "extra": 1}).to_string(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "redis-freeze",
            json!({"seconds": 31}).to_string(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_seconds",
        ),
        (
            "redis-freeze",
            json!({"seconds": 0}).to_string(),
            &cluster.token,
            StatusCode::BAD_REQUEST,
            "bad_seconds",
        ),
        (
            "kill",
            json!({"replica": "app-1", "pad": "x".repeat(1100)}).to_string(),
            &cluster.token,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "kill",
            json!({"replica": "app-1", "pad": "x".repeat(20 * 1024)}).to_string(),
            &cluster.token,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "explode",
            "{}".to_owned(),
            &cluster.token,
            StatusCode::NOT_FOUND,
            "unknown_drill",
        ),
    ];
    for (action, body, token, want, code) in cases {
        let (status, answer) = cluster.drill_raw(action, body, token, "app-2").await;
        assert_eq!(status, want, "{action} with {token:?}: {answer}");
        if !code.is_empty() {
            assert_eq!(answer["error"]["code"], code, "{action}: {answer}");
        }
    }
    let state = cluster.drills().await;
    for id in ["app-1", "app-2", "app-3"] {
        assert_eq!(
            replica(&state, id)["state"],
            "up",
            "nothing was killed: {state}"
        );
    }
    assert_eq!(state["redis"]["state"], "up");
    // The API key printed in the banner opens the drills too; a bad bearer does not.
    let api_key = cluster
        .banner
        .lines()
        .find_map(|l| l.split("API key for /api/broadcast: ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let with_key = cluster
        .http
        .get(format!("{}/api/drills", cluster.url))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    let without = cluster
        .http
        .get(format!("{}/api/drills", cluster.url))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
}

/// `stickyws serve` at `bind` with `extra` environment: drills answer 404 `drills_off` (or,
/// when on, try the supervisor); the page's token attribute.
async fn serve_drills(bind: SocketAddr, extra: &[(&str, &str)]) -> (StatusCode, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let env = ReplicaEnv {
        redis_url: None,
        secret: "a-test-secret-of-enough-bytes".to_owned(),
        api_key: "the-api-key".to_owned(),
        records_log: "off".to_owned(),
        extra: extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let _replica = ReplicaProc::start_at("solo", bind, &env, dir.path(), &[]);
    let base = format!("http://127.0.0.1:{}", bind.port());
    let http = reqwest::Client::new();
    let html = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = http
        .post(format!("{base}/api/drills/kill"))
        .bearer_auth("the-api-key")
        .json(&json!({"replica": "app-1"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, attr(&html, "data-drills-token"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_are_off_in_serve_alone_and_on_a_public_bind_unless_switched_on() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let loopback = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let public = || SocketAddr::from(([0, 0, 0, 0], free_port()));

    let (status, body, token) = serve_drills(loopback, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "drills_off");
    assert_eq!(token, "", "no drills, no token on the page");

    let with_url = [("DRILLS_URL", nobody.as_str()), ("DRILLS_TOKEN", "t0ken")];
    let (status, body, token) = serve_drills(public(), &with_url).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "drills_off");
    assert_eq!(token, "");

    let switched = [
        ("DRILLS_URL", nobody.as_str()),
        ("DRILLS_TOKEN", "t0ken"),
        ("DRILLS", "on"),
    ];
    let (status, body, token) = serve_drills(public(), &switched).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "on, but nobody listens: {body}"
    );
    assert_eq!(body["error"]["code"], "supervisor_unreachable");
    assert_eq!(token, "t0ken");
}

/// Kills the cluster's process group when the test ends, however it ends.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_keys_restart_a_replica_and_redis_and_the_end_of_input_changes_nothing() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("cluster.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cluster = Group(
        Command::new(env!("CARGO_BIN_EXE_stickyws"))
            .args([
                "cluster",
                "--port",
                "0",
                "--records-log",
                "off",
                "--nginx-conf",
            ])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"))
            .arg("--logs-dir")
            .arg(dir.path().join("logs"))
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !read_log().contains(what) {
            assert!(Instant::now() < deadline, "no {what:?} in\n{}", read_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("open http://");
    let banner = read_log();
    assert!(
        banner.contains("1..N restart app-N"),
        "the banner names the keys\n{banner}"
    );
    let pid_of = |text: &str, name: &str| -> String {
        text.lines()
            .rev()
            .filter(|l| l.split_whitespace().next() == Some(name))
            .find_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .unwrap()
    };
    let (app1, redis) = (pid_of(&banner, "app-1"), pid_of(&banner, "redis"));
    let mut stdin = cluster.0.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    wait_for("restart app-1: done");
    // Redis dying by itself is reported; the cluster goes on and `r` starts it again.
    let redis_pid: i32 = redis.parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(redis_pid), Signal::SIGKILL).unwrap();
    wait_for("redis exited (signal 9 (SIGKILL))");
    assert!(matches!(cluster.0.try_wait(), Ok(None)), "{}", read_log());
    stdin.write_all(b"r\n").unwrap();
    wait_for("redis-start redis: done");
    assert!(
        !read_log().contains("redis-stop redis"),
        "it was down: only started"
    );
    // On a running Redis, `r` stops it and starts it again.
    stdin.write_all(b"r\n").unwrap();
    wait_for("redis-stop redis: done");
    let deadline = Instant::now() + Duration::from_secs(15);
    while read_log().matches("redis-start redis: done").count() < 2 {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"nonsense\n").unwrap();
    wait_for("unknown key \"nonsense\"");
    stdin.write_all(b"s\n").unwrap();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(500));
    let after = read_log();
    // The state table printed last names new PIDs for both.
    assert_ne!(pid_of(&after, "app-1"), app1, "{after}");
    assert_ne!(pid_of(&after, "redis"), redis, "{after}");
    assert!(
        after.contains("redis exited (signal 9 (SIGKILL))"),
        "{after}"
    );
    // End of input: the cluster keeps serving.
    let url = banner
        .lines()
        .find_map(|l| l.strip_prefix("open "))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    assert!(matches!(cluster.0.try_wait(), Ok(None)), "{}", read_log());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cluster.0.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = cluster.0.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the cluster did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", read_log());
}
