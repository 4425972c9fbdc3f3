//! `stickyws cluster`: the whole topology on one machine without Docker — a real `redis-server`,
//! N replica processes of this binary and a real `nginx` running the repository's `nginx.conf`,
//! all on loopback, supervised as children.
//!
//! The cluster survives its children: a replica that dies is reported and can be started again
//! (from the page's drills or a key in the terminal); Redis exiting is reported and it is started
//! again on the same port on request. Only nginx exiting stops the cluster (nothing reaches the
//! replicas without it). Ctrl-C or SIGTERM stops everything it started; each child is also given
//! a parent-death signal ([`super::supervisor`]), so even a `kill -9` of the cluster takes them
//! down.
//!
//! Redis is started as [`super::redis_server`] starts it, nginx runs [`super::nginx_conf`]'s
//! rewrite of the shipped file, the drills are [`super::control`]'s; this module orders the
//! steps, prints the banner and reads the terminal's keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::control::{self, Control};
use super::host::{self, free_port};
use super::supervisor::{Role, RunState, Spec, Supervisor};
use super::{nginx_conf, redis_server};
use crate::drill::{Drill, ReplicaId};

/// `stickyws cluster` flags.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Replica processes to run.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Port nginx listens on (loopback); 0 picks a free one.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The nginx.conf to run (addresses and listen port are rewritten).
    #[arg(long, default_value = "nginx.conf")]
    pub nginx_conf: PathBuf,
    /// Records log every replica appends to (`off`: none, e.g. for benchmarks). The
    /// repository's own `records.log` is the sample `scripts/records-log` writes.
    #[arg(long, default_value = ".stickyws/records.log")]
    pub records_log: PathBuf,
    /// Start from an empty records log instead of appending.
    #[arg(long)]
    pub fresh_log: bool,
    /// Folder each run's process logs go to, one subfolder per run, kept after exit.
    #[arg(long, default_value = ".stickyws/logs")]
    pub logs_dir: PathBuf,
    /// Run the broker on a local Redis Cluster (six nodes: 3 masters, 3 replicas) instead of
    /// one Redis. The page's Redis drills act on a single Redis only.
    #[arg(long)]
    pub redis_cluster: bool,
}

/// Waits until `GET path` on `addr` answers 200, or `limit` passes.
pub async fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_status(addr, path).await == Some(200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The status of a plain `GET`; a few lines of HTTP/1.0 instead of an HTTP client.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()?
}

/// Waits until Redis on `port` answers `PING`, or `limit` passes (without blocking the runtime,
/// which also reaps children and serves the drills).
pub async fn wait_redis(port: u16, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let ping = async {
            let mut stream = tokio::net::TcpStream::connect(loopback(port)).await.ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).await.ok()?;
            Some(&reply == b"+PONG\r\n")
        };
        if tokio::time::timeout(Duration::from_millis(500), ping).await == Ok(Some(true)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// This run's log folder: `<logs_dir>/<UTC time>-<pid>`.
fn run_folder(logs_dir: &Path) -> anyhow::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let dir = logs_dir.join(format!("{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::path::absolute(&dir)?)
}

/// Runs the cluster until Ctrl-C, SIGTERM or nginx exiting.
/// The port nginx is to listen on is free, checked before anything starts: nginx itself would
/// retry its bind five times and print each failure.
fn port_free(port: u16) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("port {port} is in use; pass --port N (e.g. scripts/demo --port 8080)")
        }
        Err(err) => Err(err).with_context(|| format!("checking that port {port} is free")),
    }
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let redis = redis_server::program()?;
    let nginx = host::find("nginx", "nginx", Some("nginx"))?;
    let replicas = u8::try_from(args.replicas)
        .ok()
        .filter(|n| (1..=crate::drill::MAX_REPLICA).contains(n))
        .context("--replicas must be between 1 and 99")?;
    let conf = std::fs::read_to_string(&args.nginx_conf).with_context(|| {
        format!(
            "reading {} (run from the repository, or pass --nginx-conf)",
            args.nginx_conf.display()
        )
    })?;
    // `off` is the replicas' own word for no records log (benchmarks); it is not a path.
    let records_off = args.records_log.as_os_str() == "off";
    let records_log = if records_off {
        args.records_log.clone()
    } else {
        if let Some(parent) = args
            .records_log
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if args.fresh_log {
            std::fs::write(&args.records_log, "")
                .with_context(|| format!("truncating {}", args.records_log.display()))?;
        }
        std::path::absolute(&args.records_log)?
    };
    if args.port != 0 {
        port_free(args.port)?;
    }
    let me = std::env::current_exe().context("locating the stickyws binary")?;
    let sup = Supervisor::new(run_folder(&args.logs_dir)?);
    let stop = CancellationToken::new();
    let token = control::new_token();
    let control = Control::new(sup.clone(), token.clone(), replicas, stop.clone());

    let plan = Plan {
        replicas,
        port: args.port,
        conf: &conf,
        redis: &redis,
        nginx: &nginx,
        me: &me,
        records_log: &records_log,
        token: &token,
        redis_cluster: args.redis_cluster,
    };
    let result = start_and_wait(plan, &control, &stop).await;
    stop.cancel();
    eprintln!("\nstopping {} processes…", sup.running());
    let killed = sup.stop_all(Duration::from_secs(12)).await;
    for name in killed {
        eprintln!("{name} did not stop in time; killed it");
    }
    eprintln!("stopped. Process logs kept in {}", sup.logs().display());
    result
}

/// What to start, as worked out from the flags.
struct Plan<'a> {
    replicas: u8,
    port: u16,
    conf: &'a str,
    redis: &'a Path,
    nginx: &'a Path,
    me: &'a Path,
    records_log: &'a Path,
    token: &'a str,
    redis_cluster: bool,
}

/// The cluster's steps in order, then supervision until Ctrl-C, SIGTERM or nginx exits.
async fn start_and_wait(
    plan: Plan<'_>,
    control: &Control,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let sup = control.supervisor();
    let started = Instant::now();
    let drills = control::serve(control.clone(), stop.clone()).await?;
    // `--redis-cluster`: six nodes instead of one Redis, killed (by PID) when this returns.
    let nodes = super::redis_cluster::if_asked(plan.redis_cluster, sup.logs())?;
    let broker = match &nodes {
        Some(nodes) => ("REDIS_CLUSTER_NODES", nodes.seeds()),
        None => {
            let port = start_redis(plan.redis, sup).await?;
            ("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        }
    };
    let replicas = start_replicas(&plan, &broker, drills, sup)?;
    wait_replicas_ready(&replicas.addrs, sup).await?;
    let listen = start_nginx(plan.port, plan.conf, plan.nginx, &replicas.addrs, sup).await?;
    let shards = nodes
        .as_ref()
        .map(super::redis_cluster::RedisCluster::banner);
    print_banner(started, listen, drills, &replicas, plan.records_log, sup);
    if let Some(shards) = shards {
        println!("{shards}");
    }

    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<String>(16);
    if let Some(why) = read_keys(keys_tx) {
        println!("(terminal keys off: {why})");
    }
    let signal = crate::shutdown::signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            // Ctrl-C reaches the children too (one process group): stop before reporting their
            // exits as if they were news.
            biased;
            () = &mut signal => return Ok(()),
            _ = tick.tick() => {
                if let Some(nginx) = report_exits(sup) {
                    bail!("nginx exited ({nginx}); stopping the cluster:\n{}", sup.tail("nginx"));
                }
            }
            Some(line) = keys.recv() => on_key(line.trim(), control),
        }
    }
}

/// Reaps and reports exited children; returns nginx's exit, which ends the cluster.
fn report_exits(sup: &Supervisor) -> Option<String> {
    for exited in sup.reap() {
        match exited.role {
            Role::Nginx => return Some(exited.exit),
            Role::Replica(n) => println!(
                "{} exited ({}){}; nginx sends its traffic to the others. Restart it: {n}⏎. \
                 Log: {}",
                exited.name,
                exited.exit,
                if exited.expected { ", drained" } else { "" },
                exited.log.display()
            ),
            Role::Redis => println!(
                "redis exited ({}); the replicas keep serving what needs no broker (publish \
                 answers 503). Start it again: r⏎. Log: {}",
                exited.exit,
                exited.log.display()
            ),
        }
    }
    None
}

/// Reads lines from stdin into `keys` on a task of its own. Returns why not when stdin is a
/// terminal this process does not own (a background job would be stopped by reading it).
fn read_keys(keys: tokio::sync::mpsc::Sender<String>) -> Option<&'static str> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() && !in_foreground() {
        return Some("running in the background");
    }
    // A plain thread: reading a terminal blocks, and it spawns nothing (children are started
    // from the runtime's thread, whose death their parent-death signal follows).
    let spawned = std::thread::Builder::new()
        .name("keys".to_owned())
        .spawn(move || {
            use std::io::BufRead;
            // EOF (stdin is /dev/null or closed): no keys, nothing else changes.
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                if keys.blocking_send(line).is_err() {
                    return;
                }
            }
        });
    spawned.err().map(|_| "cannot start a thread to read them")
}

/// This process's group owns its controlling terminal (`/proc/self/stat`: pgrp is field 5,
/// the terminal's foreground group field 8).
fn in_foreground() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return true;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return true;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): pgrp is index 2, tpgid index 5.
    match (fields.get(2), fields.get(5)) {
        (Some(pgrp), Some(tpgid)) => pgrp == tpgid,
        _ => true,
    }
}

const KEYS_HELP: &str = "keys (then Enter): 1..N restart app-N · r restart Redis (or start it) \
                         · s state · h help · Ctrl-C stops everything";

/// One line typed in the terminal.
fn on_key(line: &str, control: &Control) {
    let drills: Vec<Drill> = match line {
        "" => return,
        "s" => {
            print_state(control.supervisor());
            return;
        }
        "h" | "?" | "help" => {
            println!("{KEYS_HELP}");
            return;
        }
        "r" => match control.supervisor().get("redis") {
            Some((RunState::Down, _, _)) => vec![Drill::RedisStart],
            _ => vec![Drill::RedisStop, Drill::RedisStart],
        },
        digits => match digits.parse::<u8>().ok().and_then(ReplicaId::new) {
            Some(id) => vec![Drill::Restart(id)],
            None => {
                println!("unknown key {digits:?}; {KEYS_HELP}");
                return;
            }
        },
    };
    let control = control.clone();
    // On a task: a restart takes seconds, and the loop must keep reaping meanwhile.
    tokio::spawn(async move {
        for drill in drills {
            println!("{} {}…", drill.name(), drill.target());
            match control.run(drill, None).await {
                Ok(_) => println!("{} {}: done", drill.name(), drill.target()),
                Err(refused) => {
                    println!("{} {}: {}", drill.name(), drill.target(), refused.message());
                    return;
                }
            }
        }
        print_state(control.supervisor());
    });
}

fn print_state(sup: &Supervisor) {
    for (name, role, pid, addr, state) in sup.rows() {
        let pid = pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let state = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  {name:<8} {:<8} pid {pid:<8} {addr:<21} {state}",
            role.describe()
        );
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Step 1: Redis, with no persistence: the broker holds nothing worth keeping. Returns its port.
async fn start_redis(redis: &Path, sup: &Supervisor) -> anyhow::Result<u16> {
    let port = free_port()?;
    let spec = Spec {
        name: "redis".to_owned(),
        role: Role::Redis,
        program: redis.to_owned(),
        args: redis_server::args(port, &[]),
        env: Vec::new(),
        addr: loopback(port),
    };
    sup.start(spec, RunState::Starting)?;
    if !wait_redis(port, redis_server::READY_WITHIN).await {
        bail!(
            "starting redis-server: no answer to PING on port {port}\n{}",
            sup.tail("redis")
        );
    }
    sup.set_state("redis", RunState::Up, None);
    Ok(port)
}

/// Clients one address may mint per second on the local cluster.
const LOCAL_MINT_RATE: &str = "5000";

/// The replicas as started: where each listens, and the API key they share.
struct Replicas {
    addrs: Vec<SocketAddr>,
    api_key: String,
}

/// Step 2: the replicas, sharing one fresh secret so any replica accepts any token, each told
/// where the drills are.
fn start_replicas(
    plan: &Plan<'_>,
    broker: &(&'static str, String),
    drills: SocketAddr,
    sup: &Supervisor,
) -> anyhow::Result<Replicas> {
    let count = plan.replicas;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let api_key =
        std::env::var("API_KEY").unwrap_or_else(|_| hex::encode(rand::random::<[u8; 16]>()));
    // The replicas share this machine's cores (THREADS, when set, is inherited instead).
    let threads = std::env::var_os("THREADS")
        .is_none()
        .then(|| (crate::config::default_threads(1) / usize::from(count.max(1))).max(1));
    let mut addrs = Vec::new();
    for i in 1..=count {
        let addr = loopback(free_port()?);
        let mut env = vec![
            ("APP_ID", format!("app-{i}")),
            ("BIND", addr.to_string()),
            (broker.0, broker.1.clone()),
            ("STICKY_SECRET", secret.clone()),
            ("API_KEY", api_key.clone()),
            (
                "RECORDS_LOG",
                plan.records_log.to_string_lossy().into_owned(),
            ),
            ("WORKERS", "1".to_owned()),
            ("DRILLS_URL", format!("http://{drills}")),
            ("DRILLS_TOKEN", plan.token.to_owned()),
            // The logs are files for people to read: no colour codes in them.
            ("NO_COLOR", "1".to_owned()),
        ];
        if let Some(threads) = threads {
            env.push(("THREADS", threads.to_string()));
        }
        // Everything here comes from one address (nginx on loopback passes 127.0.0.1), and
        // `stickyws load` mints thousands of clients at once: the local demo allows that
        // (MINT_RATE, when set, is inherited instead).
        if std::env::var_os("MINT_RATE").is_none() {
            env.push(("MINT_RATE", LOCAL_MINT_RATE.to_owned()));
        }
        let spec = Spec {
            name: format!("app-{i}"),
            role: Role::Replica(i),
            program: plan.me.to_owned(),
            args: vec!["serve".to_owned()],
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            addr,
        };
        sup.start(spec, RunState::Starting)?;
        addrs.push(addr);
    }
    Ok(Replicas { addrs, api_key })
}

/// Step 3: every replica answers `/readyz` (its broker is connected and subscribed).
async fn wait_replicas_ready(addrs: &[SocketAddr], sup: &Supervisor) -> anyhow::Result<()> {
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("app-{}", i + 1);
        if !wait_http_ok(*addr, "/readyz", Duration::from_secs(15)).await {
            bail!(
                "{name} did not become ready on {addr}:\n{}",
                sup.tail(&name)
            );
        }
        sup.set_state(&name, RunState::Up, None);
    }
    Ok(())
}

/// Step 4: nginx, running the shipped file with only addresses and the listen port rewritten;
/// returns once it answers `/healthz`, with the address it listens on.
async fn start_nginx(
    port: u16,
    conf: &str,
    nginx: &Path,
    replicas: &[SocketAddr],
    sup: &Supervisor,
) -> anyhow::Result<SocketAddr> {
    let port = if port == 0 { free_port()? } else { port };
    let listen = loopback(port);
    let rendered = nginx_conf::render(conf, listen, replicas)?;
    let prefix = sup.logs().join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, rendered)?;
    let spec = Spec {
        name: "nginx".to_owned(),
        role: Role::Nginx,
        program: nginx.to_owned(),
        args: vec![
            "-p".to_owned(),
            format!("{}/", prefix.display()),
            "-c".to_owned(),
            conf_path.to_string_lossy().into_owned(),
            "-e".to_owned(),
            "stderr".to_owned(),
            "-g".to_owned(),
            format!("daemon off; pid {}/nginx.pid;", prefix.display()),
        ],
        env: Vec::new(),
        addr: listen,
    };
    sup.start(spec, RunState::Starting)?;
    if !wait_http_ok(listen, "/healthz", Duration::from_secs(10)).await {
        bail!("nginx did not start on {listen}:\n{}", sup.tail("nginx"));
    }
    sup.set_state("nginx", RunState::Up, None);
    Ok(listen)
}

/// Step 5: the URL, every process with its role and PID, and what a person needs to look
/// inside or break something on purpose.
fn print_banner(
    started: Instant,
    listen: SocketAddr,
    drills: SocketAddr,
    replicas: &Replicas,
    records_log: &Path,
    sup: &Supervisor,
) {
    println!();
    println!(
        "stickyws cluster is up in {:.1}s ({} replicas behind nginx, Redis as the broker)",
        started.elapsed().as_secs_f64(),
        replicas.addrs.len()
    );
    print_state(sup);
    println!(
        "  drills   control  pid {:<8} {drills:<21} (this process: the page's fault drills)",
        std::process::id()
    );
    let records = if records_log.as_os_str() == "off" {
        "off".to_owned()
    } else {
        format!("tail -f {}", records_log.display())
    };
    println!("  records: {records}");
    println!("  process logs (kept after exit): {}", sup.logs().display());
    println!("  API key for /api/broadcast: {}", replicas.api_key);
    println!("  {KEYS_HELP}");
    // Last, and alone on its line: scripts and tests read the URL from it.
    println!("open http://{listen}/");
}
