//! `stickyws cluster`: the whole topology on one machine without Docker — a real `redis-server`,
//! N replica processes of this binary and a real `nginx` running the repository's `nginx.conf`,
//! all on loopback, supervised as children.
//!
//! Nothing it starts outlives it: children get SIGTERM on Ctrl-C, on SIGTERM, or when one of
//! them dies; and each is started through `setpriv --pdeathsig TERM` where available, so even a
//! `kill -9` of the cluster takes them down.
//!
//! Redis is started as [`super::redis_server`] starts it, nginx runs [`super::nginx_conf`]'s
//! rewrite of the shipped file; this module orders the steps and supervises the children.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::host::{self, free_port, which};
use super::{nginx_conf, redis_server};

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
    /// Records log every replica appends to (`off`: none, e.g. for benchmarks).
    #[arg(long, default_value = "records.log")]
    pub records_log: PathBuf,
    /// Start from an empty records log instead of appending.
    #[arg(long)]
    pub fresh_log: bool,
    /// Run the broker on a local Redis Cluster (six nodes: 3 masters, 3 replicas) instead of
    /// one Redis.
    #[arg(long)]
    pub redis_cluster: bool,
}

/// One supervised child.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }
}

/// Everything the cluster started; stopping it stops them all.
#[derive(Debug)]
struct Children {
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Children {
    fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<&mut Proc> {
        let log = self.dir.path().join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = match which("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--", program]);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        let index = self.procs.len();
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(&mut self.procs[index])
    }

    /// Resolves when Redis or nginx exits (the cluster cannot go on without them); a replica
    /// that exits is reported and left down, so failover can be watched.
    async fn vital_exit(&mut self) -> (String, String) {
        let mut reported = std::collections::HashSet::new();
        loop {
            for proc in &mut self.procs {
                let Ok(Some(status)) = proc.child.try_wait() else {
                    continue;
                };
                if !proc.name.starts_with("app-") {
                    return (proc.name.clone(), status.to_string());
                }
                if reported.insert(proc.name.clone()) {
                    println!(
                        "{} exited ({status}); nginx sends its traffic to the others. \
                         Log: {}",
                        proc.name,
                        proc.log.display()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to all, in reverse start order (nginx, replicas, Redis); SIGKILL what is left
    /// after `grace`.
    async fn stop(&mut self, grace: Duration) {
        for proc in self.procs.iter().rev() {
            if let Some(pid) = proc.pid() {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for proc in self.procs.iter_mut().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, proc.child.wait()).await.is_err() {
                eprintln!("{} did not stop in time; killing it", proc.name);
                let _ = proc.child.kill().await;
            }
        }
    }

    fn tail(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .map(|log| {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            })
            .unwrap_or_default()
    }
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

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let redis = redis_server::program()?;
    let nginx = host::find("nginx", "nginx", Some("nginx"))?;
    if args.replicas == 0 || args.replicas > 99 {
        bail!("--replicas must be between 1 and 99");
    }
    let conf = std::fs::read_to_string(&args.nginx_conf).with_context(|| {
        format!(
            "reading {} (run from the repository, or pass --nginx-conf)",
            args.nginx_conf.display()
        )
    })?;
    // `off` is the replicas' own word for no records log (benchmarks); it is not a path.
    let records_off = args.records_log.as_os_str() == "off";
    if args.fresh_log && !records_off {
        std::fs::write(&args.records_log, "")
            .with_context(|| format!("truncating {}", args.records_log.display()))?;
    }
    let records_log = if records_off {
        args.records_log.clone()
    } else {
        std::path::absolute(&args.records_log)?
    };
    let me = std::env::current_exe().context("locating the stickyws binary")?;
    let dir = tempfile::Builder::new()
        .prefix("stickyws-cluster-")
        .tempdir()?;
    let mut children = Children {
        procs: Vec::new(),
        dir,
    };

    let result = start_and_wait(
        &args,
        &conf,
        &redis,
        &nginx,
        &me,
        &records_log,
        &mut children,
    )
    .await;
    eprintln!("\nstopping {} processes…", children.procs.len());
    children.stop(Duration::from_secs(12)).await;
    eprintln!("stopped.");
    result
}

/// The cluster's steps in order, then supervision until Ctrl-C, SIGTERM or a vital exit.
async fn start_and_wait(
    args: &ClusterArgs,
    conf: &str,
    redis: &Path,
    nginx: &Path,
    me: &Path,
    records_log: &Path,
    children: &mut Children,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // `--redis-cluster`: six nodes instead of one Redis, killed (by PID) when this returns.
    let nodes = super::redis_cluster::if_asked(args.redis_cluster, children.dir.path())?;
    let (broker, redis_shown) = match &nodes {
        Some(nodes) => (("REDIS_CLUSTER_NODES", nodes.seeds()), nodes.banner()),
        None => {
            let port = start_redis(redis, children)?;
            let url = format!("redis://127.0.0.1:{port}");
            (("REDIS_URL", url), format!("Redis 127.0.0.1:{port}"))
        }
    };
    let replicas = start_replicas(args.replicas, me, records_log, &broker, children)?;
    wait_replicas_ready(&replicas.addrs, children).await?;
    let listen = start_nginx(args.port, conf, nginx, &replicas.addrs, children).await?;
    print_banner(
        started,
        listen,
        &redis_shown,
        &replicas,
        records_log,
        children,
    );

    tokio::select! {
        () = crate::shutdown::signal() => Ok(()),
        (name, status) = children.vital_exit() => {
            bail!("{name} exited ({status}); stopping the cluster:\n{}", children.tail(&name))
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Step 1: Redis, with no persistence: the broker holds nothing worth keeping. Returns its port.
fn start_redis(redis: &Path, children: &mut Children) -> anyhow::Result<u16> {
    let port = free_port()?;
    let redis_args = redis_server::args(port, &[]);
    let proc = children.spawn("redis", &redis.to_string_lossy(), &redis_args, &[])?;
    // A blocking wait of milliseconds, bounded: nothing else runs on this runtime yet.
    redis_server::wait_ready(
        port,
        redis_server::READY_WITHIN,
        || proc.child.try_wait().ok().flatten(),
        &proc.log,
    )
    .context("starting redis-server")?;
    Ok(port)
}

/// Clients one address may mint per second on the local cluster.
const LOCAL_MINT_RATE: &str = "5000";

/// The replicas as started: where each listens, and the API key they share.
struct Replicas {
    addrs: Vec<SocketAddr>,
    api_key: String,
}

/// Step 2: the replicas, sharing one fresh secret so any replica accepts any token.
fn start_replicas(
    count: usize,
    me: &Path,
    records_log: &Path,
    broker: &(&'static str, String),
    children: &mut Children,
) -> anyhow::Result<Replicas> {
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let api_key =
        std::env::var("API_KEY").unwrap_or_else(|_| hex::encode(rand::random::<[u8; 16]>()));
    // The replicas share this machine's cores (THREADS, when set, is inherited instead).
    let threads = std::env::var_os("THREADS")
        .is_none()
        .then(|| (crate::config::default_threads(1) / count.max(1)).max(1));
    let mut addrs = Vec::new();
    for i in 1..=count {
        let addr = loopback(free_port()?);
        let mut env = vec![
            ("APP_ID", format!("app-{i}")),
            ("BIND", addr.to_string()),
            (broker.0, broker.1.clone()),
            ("STICKY_SECRET", secret.clone()),
            ("API_KEY", api_key.clone()),
            ("RECORDS_LOG", records_log.to_string_lossy().into_owned()),
            ("WORKERS", "1".to_owned()),
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
        children.spawn(
            &format!("app-{i}"),
            &me.to_string_lossy(),
            &["serve".to_owned()],
            &env,
        )?;
        addrs.push(addr);
    }
    Ok(Replicas { addrs, api_key })
}

/// Step 3: every replica answers `/readyz` (its broker is connected and subscribed).
async fn wait_replicas_ready(addrs: &[SocketAddr], children: &Children) -> anyhow::Result<()> {
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("app-{}", i + 1);
        if !wait_http_ok(*addr, "/readyz", Duration::from_secs(15)).await {
            bail!(
                "{name} did not become ready on {addr}:\n{}",
                children.tail(&name)
            );
        }
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
    children: &mut Children,
) -> anyhow::Result<SocketAddr> {
    let port = if port == 0 { free_port()? } else { port };
    let listen = loopback(port);
    let rendered = nginx_conf::render(conf, listen, replicas)?;
    let prefix = children.dir.path().join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, rendered)?;
    let nginx_args = [
        "-p".to_owned(),
        format!("{}/", prefix.display()),
        "-c".to_owned(),
        conf_path.to_string_lossy().into_owned(),
        "-e".to_owned(),
        "stderr".to_owned(),
        "-g".to_owned(),
        format!("daemon off; pid {}/nginx.pid;", prefix.display()),
    ];
    children.spawn("nginx", &nginx.to_string_lossy(), &nginx_args, &[])?;
    if !wait_http_ok(listen, "/healthz", Duration::from_secs(10)).await {
        bail!(
            "nginx did not start on {listen}:\n{}",
            children.tail("nginx")
        );
    }
    Ok(listen)
}

/// Step 5: the URL and what a person needs to look inside.
fn print_banner(
    started: Instant,
    listen: SocketAddr,
    redis: &str,
    replicas: &Replicas,
    records_log: &Path,
    children: &Children,
) {
    println!();
    println!(
        "stickyws cluster is up in {:.1}s: open http://{listen}/",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  nginx {listen} → app-1..app-{} ({}), {redis}",
        replicas.addrs.len(),
        replicas
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let records = if records_log.as_os_str() == "off" {
        "off".to_owned()
    } else {
        format!("tail -f {}", records_log.display())
    };
    println!(
        "  records: {records}   process logs: {}",
        children.dir.path().display()
    );
    println!("  API key for /api/broadcast: {}", replicas.api_key);
    println!("Ctrl-C stops everything.");
}
