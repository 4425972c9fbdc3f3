//! The real topology for tests: `redis-server`, replica processes of the built binary and
//! `nginx` from the shipped `nginx.conf`, on free loopback ports; a method per endpoint.
//! Dropping a [`TestCluster`] stops every process it started; when the test is failing, the
//! last lines of every process's log are printed first.

pub mod browser;
pub mod netns;
pub mod outage;
pub mod process;
pub mod proxy;
pub mod redis_cluster;
pub mod servers;
pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
pub use servers::{Nginx, RedisServer, ReplicaEnv, ReplicaProc, free_port};
pub use ws::Socket;

/// A client id and its token.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub token: String,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub redis: Option<RedisServer>,
    pub replicas: Vec<ReplicaProc>,
    pub nginx: Option<Nginx>,
    pub env: ReplicaEnv,
    pub http: reqwest::Client,
}

pub const API_KEY: &str = "test-api-key-0123456789";

impl TestCluster {
    /// Redis, `n` replicas named app-1..app-n, and nginx in front.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, Vec::new())
    }

    pub fn start_with(n: usize, extra_env: Vec<(String, String)>) -> TestCluster {
        Self::start_with_redis(n, extra_env, &[])
    }

    /// Like [`TestCluster::start_with`], Redis run with `redis_args` after the shipped settings.
    pub fn start_with_redis(
        n: usize,
        extra_env: Vec<(String, String)>,
        redis_args: &[&str],
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start_with(free_port(), dir.path(), redis_args);
        let mut cluster = Self::empty(dir, Some(redis), extra_env);
        for i in 1..=n {
            cluster.add_replica(&format!("app-{i}"));
        }
        let addrs: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.addr).collect();
        // No replicas: Redis only, for tests that start their own (nginx needs an upstream).
        if n > 0 {
            cluster.nginx = Some(Nginx::start(&addrs, cluster.dir.path()));
        }
        cluster
    }

    /// Nothing started yet but Redis (if given); the replicas' shared settings.
    fn empty(
        dir: tempfile::TempDir,
        redis: Option<RedisServer>,
        extra: Vec<(String, String)>,
    ) -> TestCluster {
        let env = ReplicaEnv {
            redis_url: redis.as_ref().map(RedisServer::url),
            secret: "test-secret-0123456789abcdef".to_owned(),
            api_key: API_KEY.to_owned(),
            records_log: dir
                .path()
                .join("records.log")
                .to_string_lossy()
                .into_owned(),
            extra,
        };
        TestCluster {
            dir,
            redis,
            replicas: Vec::new(),
            nginx: None,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// One replica with the in-process broker, no Redis, no nginx.
    pub fn single() -> TestCluster {
        let mut cluster = Self::empty(tempfile::tempdir().unwrap(), None, Vec::new());
        cluster.add_replica("solo");
        cluster
    }

    pub fn add_replica(&mut self, name: &str) {
        let replica = ReplicaProc::start(name, free_port(), &self.env, self.dir.path());
        self.replicas.push(replica);
    }

    /// Where requests go: nginx when there is one, else the single replica.
    pub fn base(&self) -> String {
        match &self.nginx {
            Some(nginx) => format!("http://{}", nginx.addr),
            None => format!("http://{}", self.replicas[0].addr),
        }
    }

    pub fn replica(&mut self, name: &str) -> &mut ReplicaProc {
        self.replicas
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    /// Direct address of one replica, bypassing nginx.
    pub fn replica_base(&self, name: &str) -> String {
        let r = self.replicas.iter().find(|r| r.name == name).unwrap();
        format!("http://{}", r.addr)
    }

    pub fn records(&self) -> String {
        std::fs::read_to_string(&self.env.records_log).unwrap_or_default()
    }

    pub async fn mint(&self) -> Client {
        let response = self
            .http
            .post(format!("{}/api/clients", self.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        Client {
            id: body["client_id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    /// `POST /api/{action}/{client}` with the client's token, `{"text"}`, and the cookie if given.
    pub async fn call(
        &self,
        action: &str,
        client: &Client,
        sticky: Option<&str>,
        text: &str,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/api/{action}/{}", client.id),
            Some(&client.token),
            sticky,
            &json!({ "text": text }).to_string(),
        )
        .await
    }

    /// A POST with full control over credential, cookie and raw body.
    pub async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        sticky: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base()))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(replica) = sticky {
            request = request.header("cookie", format!("sticky={replica}"));
        }
        answer(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, sticky: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base()));
        if let Some(replica) = sticky {
            request = request.header("cookie", format!("sticky={replica}"));
        }
        request.send().await.unwrap()
    }

    /// `/metrics` of one replica (through nginx with its cookie), or of whichever answers.
    pub async fn metrics(&self, replica: Option<&str>) -> String {
        self.get("/metrics", replica).await.text().await.unwrap()
    }

    /// A WebSocket for `client` through the front door, with the cookie if given.
    pub async fn connect(&self, client: &Client, sticky: Option<&str>) -> Socket {
        self.connect_query(client, sticky, "").await
    }

    /// A WebSocket with extra query parameters, e.g. `&last_id=…` to resume.
    pub async fn connect_query(
        &self,
        client: &Client,
        sticky: Option<&str>,
        extra: &str,
    ) -> Socket {
        let host = self.base().trim_start_matches("http://").to_owned();
        Socket::connect_query(&host, client, sticky, extra).await
    }

    /// Resident memory of a replica process, in bytes (from /proc).
    pub fn replica_rss(&mut self, name: &str) -> u64 {
        let pid = self.replica(name).proc.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// Stops Redis (SIGKILL); `restart_redis` brings it back on the same port.
    pub fn kill_redis(&mut self) {
        if let Some(redis) = &mut self.redis {
            redis.kill();
        }
    }

    /// Starts a killed replica again on its old port, under its old name.
    pub fn restart_replica(&mut self, name: &str) {
        let at = self
            .replicas
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"));
        let port = self.replicas[at].addr.port();
        self.replicas[at] = ReplicaProc::start(name, port, &self.env, self.dir.path());
    }

    /// `/metrics` of one replica, asked directly (nginx not involved).
    pub async fn replica_metrics(&self, name: &str) -> String {
        let url = format!("{}/metrics", self.replica_base(name));
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A POST straight to one replica, bypassing nginx.
    pub async fn post_to(
        &self,
        replica: &str,
        path: &str,
        bearer: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        answer(
            self.http
                .post(format!("{}{path}", self.replica_base(replica)))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {bearer}"))
                .body(body.to_owned())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Lines of the records log whose replica, event and client are these.
    pub fn records_of(&self, replica: &str, event: &str, client: &str) -> Vec<String> {
        self.records()
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split(" | ").collect();
                fields.len() == 5
                    && fields[1] == replica
                    && fields[2].trim() == event
                    && fields[3] == client
            })
            .map(str::to_owned)
            .collect()
    }

    /// `POST /api/channels/{channel}/publish` with the API key, through nginx; asserts 200.
    pub async fn channel_publish(&self, channel: &str, text: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/channels/{channel}/publish"),
                Some(API_KEY),
                None,
                &json!({ "text": text }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// A subscription token for (client, channel), minted with the API key; asserts 200.
    pub async fn channel_token(&self, channel: &str, client_id: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/api/channels/{channel}/tokens"),
                Some(API_KEY),
                None,
                &json!({ "client_id": client_id }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// `GET /api/channels/{channel}/presence` through nginx with these headers.
    pub async fn presence(&self, channel: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut request = self
            .http
            .get(format!("{}/api/channels/{channel}/presence", self.base()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.unwrap()).await
    }

    /// A plain connection to the cluster's Redis, to ask it what the replicas did.
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        let url = self.env.redis_url.as_deref().unwrap();
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Polls every replica's `/readyz` directly until each answers 200, within `limit`.
    pub async fn wait_all_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for replica in &self.replicas {
            let url = format!("http://{}/readyz", replica.addr);
            loop {
                let ok = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ok {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} not ready within {limit:?}",
                    replica.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn restart_redis(&mut self) {
        let port = self.redis.as_ref().map(|r| r.port).unwrap();
        self.redis = Some(RedisServer::start_on(port, self.dir.path()));
    }
}

/// A response's status and body: the body as JSON, or as a JSON string when it is not JSON
/// (nginx's own error pages).
pub async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The value of one series in Prometheus text (`name{labels}` exactly as exposed); 0 when the
/// series is not there yet (a counter nothing has touched).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Every command Redis executes, as `MONITOR` shows it (one line each, in execution order): what
/// an operator watches to see who talks to the broker.
pub struct RedisMonitor {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisMonitor {
    /// Connects and returns once Redis confirmed MONITOR: every later command is seen.
    pub async fn start(port: u16) -> RedisMonitor {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(b"MONITOR\r\n").await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut ok))
            .await
            .expect("MONITOR answered in time")
            .unwrap();
        assert_eq!(ok.trim_end(), "+OK", "MONITOR refused");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut line = String::new();
            while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                if tx.send(line.trim_end().to_owned()).is_err() {
                    return;
                }
                line.clear();
            }
        });
        RedisMonitor { lines, task }
    }

    /// Every line up to and including the first one containing `marker`, within `limit`.
    pub async fn until(&mut self, marker: &str, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{marker:?} not seen by MONITOR in {limit:?}"))
                .expect("MONITOR connection open");
            let found = line.contains(marker);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }
}

impl Drop for RedisMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for replica in &self.replicas {
                eprintln!("{}", replica.proc.log_tail());
            }
            if let Some(nginx) = &self.nginx {
                eprintln!("{}", nginx.proc.log_tail());
            }
        }
    }
}
