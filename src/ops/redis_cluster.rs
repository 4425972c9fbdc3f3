//! A real local Redis Cluster: six `redis-server` nodes in cluster mode on free loopback ports,
//! joined by `redis-cli --cluster create … --cluster-replicas 1` into three masters with one
//! replica each, ready once every node reports `cluster_state:ok` and every replica's link to
//! its master is up. Used by `stickyws cluster --redis-cluster` and by the tests alike.
//!
//! Each node is a [`RedisServer`] (the one way this project starts Redis), so dropping the
//! [`RedisCluster`] kills every node by its own PID and waits for it. What runs against the
//! cluster (the broker driver, the replicas) is the callers' business.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::host::{self, Missing};
use super::redis_server::{RedisServer, StartError};

/// Nodes of the local cluster: three masters, each with one replica.
pub const NODES: usize = 6;
/// How long a master may be silent before its replica is promoted, in ms. Redis's default is
/// 15 s; a local demo and its failover test want the promotion within a few seconds, while a
/// busy 2-core machine must not promote by mistake (a pause of one node below this is fine).
pub const NODE_TIMEOUT_MS: u64 = 2000;
/// How long the created cluster has to agree on `cluster_state:ok` everywhere.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// Why the cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Node(#[from] StartError),
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("cannot create the node folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("redis-cli --cluster create failed: {0}")]
    Create(String),
    #[error("the cluster did not reach cluster_state:ok within {0:?}: {1}")]
    NotSettled(Duration, String),
}

/// A running local cluster; dropping it kills every node (by PID) and waits for each.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// The command line of one cluster node on `port`, its `nodes.conf` in `dir`: the shipped
/// settings of [`super::redis_server::args`] plus cluster mode.
pub fn node_args(port: u16, dir: &Path) -> Vec<String> {
    let conf = dir.join(format!("nodes-{port}.conf"));
    let timeout = NODE_TIMEOUT_MS.to_string();
    let conf = conf.to_string_lossy();
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        conf.as_ref(),
        "--cluster-node-timeout",
        timeout.as_str(),
        "--dir",
        dir.to_string_lossy().as_ref(),
    ]
    .map(str::to_owned)
    .to_vec()
}

impl RedisCluster {
    /// Six nodes on free loopback ports, logs and `nodes.conf` files in `dir`, joined into
    /// three masters and three replicas; returns once the cluster is settled.
    pub fn start(dir: &Path) -> Result<RedisCluster, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let cli = host::find("redis-cli", "redis-tools", Some("redis"))?;
        let mut nodes = Vec::with_capacity(NODES);
        let mut taken = Vec::with_capacity(NODES * 2);
        for _ in 0..NODES {
            nodes.push(start_node(dir, &mut taken)?);
        }
        let cluster = RedisCluster { nodes };
        let mut create = Command::new(cli);
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| ClusterError::Create(err.to_string()))?;
        if !out.status.success() {
            return Err(ClusterError::Create(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        cluster.wait_settled(SETTLE_WITHIN)?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok` and every replica's master link is
    /// up (so a master killed next has a replica with its data to promote).
    pub fn wait_settled(&self, limit: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + limit;
        loop {
            let mut waiting = None;
            for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
                let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
                let info = inline(addr, "CLUSTER INFO").unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    waiting = Some(format!("{addr}: not cluster_state:ok"));
                    break;
                }
                let replication = inline(addr, "INFO replication").unwrap_or_default();
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    waiting = Some(format!("{addr}: replica link not up"));
                    break;
                }
            }
            let Some(why) = waiting else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(ClusterError::NotSettled(limit, why));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed nodes as `REDIS_CLUSTER_NODES` takes them: `127.0.0.1:port,…`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, killed ones included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The ports of the live nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(RedisServer::port)
            .filter(|port| {
                inline(SocketAddr::from(([127, 0, 0, 1], *port)), "ROLE")
                    .is_some_and(|role| role.contains("master"))
            })
            .collect()
    }

    /// The node's PID while it runs.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.nodes.iter().find(|n| n.port() == port)?.pid()
    }

    /// SIGKILLs the node on `port`, as a crash would, and waits for it.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.kill();
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What a node's cluster bus listens on: its port + 10000, as Redis fixes it by default.
const BUS_OFFSET: u16 = 10000;
/// Tries at a port pair for one node before giving up.
const PORT_TRIES: usize = 100;
/// Starts of one node on fresh ports before giving up: a port checked free can still be taken
/// by another process before the node binds it.
const START_TRIES: usize = 3;

/// The first of `candidates` that is usable as a node's port: neither it nor its cluster bus
/// port is in `taken` (this cluster's ports so far) or held by another process now, and the bus
/// port exists. A port the kernel calls free says nothing of port + 10000, so both are checked.
fn pick_node_port(taken: &[u16], candidates: impl IntoIterator<Item = u16>) -> Option<u16> {
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    candidates.into_iter().find(|&port| {
        port.checked_add(BUS_OFFSET).is_some_and(|bus| {
            ![port, bus].iter().any(|p| taken.contains(p)) && free(port) && free(bus)
        })
    })
}

/// One node on ports [`pick_node_port`] chose, retried on fresh ports when it exits before
/// answering (as when another process took a port in between); its ports added to `taken`.
fn start_node(dir: &Path, taken: &mut Vec<u16>) -> Result<RedisServer, ClusterError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let kernel_picks = std::iter::repeat_with(host::free_port)
            .take(PORT_TRIES)
            .filter_map(Result::ok);
        let port = pick_node_port(taken, kernel_picks).ok_or_else(|| {
            StartError::Port(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("no free loopback port p with p + {BUS_OFFSET} free in {PORT_TRIES} tries"),
            ))
        })?;
        taken.extend([port, port + BUS_OFFSET]);
        let args = node_args(port, dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match RedisServer::start_on(port, dir, &args) {
            Ok(node) => return Ok(node),
            Err(StartError::Exited { port, tail, .. }) if tries < START_TRIES => {
                tracing::warn!(port, %tail, "a cluster node exited at start; trying other ports");
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// `stickyws cluster --redis-cluster`: the local cluster in `dir`, when asked for.
pub fn if_asked(asked: bool, dir: &Path) -> Result<Option<RedisCluster>, ClusterError> {
    asked
        .then(|| RedisCluster::start(&dir.join("redis-cluster")))
        .transpose()
}

impl RedisCluster {
    /// How `stickyws cluster` names it on its banner: every node, masters first.
    pub fn banner(&self) -> String {
        let masters = self.masters();
        let replicas: Vec<String> = self
            .ports()
            .into_iter()
            .filter(|port| !masters.contains(port))
            .map(|port| port.to_string())
            .collect();
        let masters: Vec<String> = masters.iter().map(u16::to_string).collect();
        format!(
            "Redis Cluster on 127.0.0.1: masters {}, replicas {}",
            masters.join(" "),
            replicas.join(" ")
        )
    }
}

/// One inline command and its whole reply as text (a bulk string's body, or a few lines of an
/// array's), read until the server pauses; None when the node does not answer.
pub fn inline(addr: SocketAddr, command: &str) -> Option<String> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // A reply is complete when the server stops sending; replies here are small and local.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                stream
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .ok()?;
            }
            Err(_) => break,
        }
        if reply.len() > 1 << 20 {
            break;
        }
    }
    (!reply.is_empty()).then(|| String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_port_has_its_cluster_bus_port_free_too() {
        let port_of = |l: &TcpListener| l.local_addr().unwrap().port();
        let bus_free = |p: u16| {
            p.checked_add(BUS_OFFSET)
                .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok())
        };
        // A free port whose bus port another listener (this test's) holds.
        let (bus_held, _holder) = loop {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = port_of(&probe);
            if let Some(Ok(holder)) = port
                .checked_add(BUS_OFFSET)
                .map(|bus| TcpListener::bind(("127.0.0.1", bus)))
            {
                break (port, holder);
            }
        };
        let ok = loop {
            let p = host::free_port().unwrap();
            if bus_free(p) {
                break p;
            }
        };
        // 60000: its bus port would be past 65535.
        assert_eq!(pick_node_port(&[], [bus_held, 60000, ok]), Some(ok));
        assert_eq!(pick_node_port(&[ok], [ok]), None, "already this cluster's");
        assert_eq!(
            pick_node_port(&[ok + BUS_OFFSET], [ok]),
            None,
            "its bus port is this cluster's"
        );
    }

    #[test]
    fn a_node_runs_in_cluster_mode_with_its_own_nodes_file() {
        let args = node_args(7001, Path::new("/tmp/c"));
        assert_eq!(args[..2], ["--cluster-enabled", "yes"]);
        assert_eq!(args[3], "/tmp/c/nodes-7001.conf");
        assert_eq!(args[5], NODE_TIMEOUT_MS.to_string());
    }
}
