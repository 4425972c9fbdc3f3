//! The topology on a Redis Cluster: six real `redis-server` nodes in cluster mode (three
//! masters, three replicas, started by the library's own [`RedisCluster`], which kills each
//! node by its PID at drop), replicas run with `REDIS_CLUSTER_NODES`, nginx in front; and what
//! the tests ask each shard directly (`PUBSUB SHARDNUMSUB`, `PUBSUB SHARDCHANNELS`).

use std::net::SocketAddr;
use std::time::Duration;

pub use stickyws::ops::redis_cluster::RedisCluster;

use super::{Nginx, TestCluster};

/// Replicas and nginx on a local Redis Cluster. Fields drop in order: the replicas and nginx
/// first, then the cluster's nodes.
pub struct OnRedisCluster {
    pub web: TestCluster,
    pub nodes: RedisCluster,
}

impl OnRedisCluster {
    /// A settled six-node cluster, `n` replicas app-1..app-n on it, nginx in front, every
    /// replica ready.
    pub async fn start(n: usize) -> OnRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes = RedisCluster::start(&dir.path().join("redis-cluster"))
            .unwrap_or_else(|err| panic!("{err}"));
        let env = vec![("REDIS_CLUSTER_NODES".to_owned(), nodes.seeds())];
        let mut web = TestCluster::empty(dir, None, env);
        for i in 1..=n {
            web.add_replica(&format!("app-{i}"));
        }
        let addrs: Vec<SocketAddr> = web.replicas.iter().map(|r| r.addr).collect();
        web.nginx = Some(Nginx::start(&addrs, web.dir.path()));
        let cluster = OnRedisCluster { web, nodes };
        cluster.web.wait_all_ready(Duration::from_secs(20)).await;
        cluster
    }

    /// A connection to one node (not the cluster): what that shard itself says.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        node_at(&format!("127.0.0.1:{port}")).await
    }

    /// `PUBSUB SHARDNUMSUB <channel>` on every master now: (port, subscribers there).
    pub async fn shard_numsub(&self, channel: &str) -> Vec<(u16, i64)> {
        let mut counts = Vec::new();
        for port in self.nodes.masters() {
            let (_, count): (String, i64) = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(channel)
                .query_async(&mut self.node(port).await)
                .await
                .unwrap();
            counts.push((port, count));
        }
        counts
    }

    /// `PUBSUB SHARDCHANNELS stickyws:*` on every master now: (port, its channels, sorted).
    pub async fn shard_channels(&self) -> Vec<(u16, Vec<String>)> {
        let mut all = Vec::new();
        for port in self.nodes.masters() {
            let mut names: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg("stickyws:*")
                .query_async(&mut self.node(port).await)
                .await
                .unwrap();
            names.sort();
            all.push((port, names));
        }
        all
    }

    /// The master that owns `key`'s slot now, by `CLUSTER KEYSLOT` and `CLUSTER SLOTS`.
    pub async fn owner(&self, key: &str) -> u16 {
        let masters = self.nodes.masters();
        let mut conn = self.node(masters[0]).await;
        let slot = keyslot(&mut conn, key).await;
        // Each entry: [start, end, [host, port, id], replicas…].
        let ranges: Vec<(i64, i64, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<Vec<redis::Value>>>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|parts| {
                let start = redis::from_redis_value_ref::<i64>(parts.first()?).ok()?;
                let end = redis::from_redis_value_ref::<i64>(parts.get(1)?).ok()?;
                let master: Vec<redis::Value> = redis::from_redis_value_ref(parts.get(2)?).ok()?;
                let host = redis::from_redis_value_ref::<String>(master.first()?).ok()?;
                let port = redis::from_redis_value_ref::<u16>(master.get(1)?).ok()?;
                Some((start, end, (host, port)))
            })
            .collect();
        ranges
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, (_, port))| port)
            .unwrap_or_else(|| panic!("no master serves the slot of {key}"))
    }
}

/// What the page says of a key — slot `slot`, served by `master` — is true: that master puts
/// `key` in that slot, and answers a key of it itself (no `MOVED`).
pub async fn assert_master_serves(master: &str, key: &str, slot: i64) {
    let mut conn = node_at(master).await;
    assert_eq!(
        slot,
        keyslot(&mut conn, key).await,
        "the slot shown for {key}"
    );
    let served: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("{key}:probe"))
        .query_async(&mut conn)
        .await;
    assert!(served.is_ok(), "{master} serves slot {slot}: {served:?}");
}

/// The next text frame within `limit`: Ok(None) when quiet, Err(why) once the server closed
/// the socket (a client then reconnects with its cursor).
pub async fn next_or_close(
    socket: &mut super::Socket,
    limit: Duration,
) -> Result<Option<serde_json::Value>, String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let Ok(message) = tokio::time::timeout_at(deadline, socket.ws.next()).await else {
            return Ok(None);
        };
        match message {
            Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text).unwrap())),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => return Err(format!("{frame:?}")),
            Some(Ok(other)) => return Err(format!("unexpected {other:?}")),
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("closed".to_owned()),
        }
    }
}

impl OnRedisCluster {
    /// Moves the slot of `key` from master `from` to master `to`, keys included, the way
    /// `redis-cli --cluster reshard` moves each slot: `IMPORTING`/`MIGRATING`, `MIGRATE` of
    /// every key in it, then `SETSLOT … NODE` on both and the other masters.
    pub async fn move_slot(&self, key: &str, from: u16, to: u16) {
        let mut source = self.node(from).await;
        let mut target = self.node(to).await;
        let id = |conn: &mut redis::aio::MultiplexedConnection| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async::<String>(&mut conn)
                    .await
                    .unwrap()
            }
        };
        let (from_id, to_id) = (id(&mut source).await, id(&mut target).await);
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut source)
            .await
            .unwrap();
        let setslot = |state: &str, node: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
            cmd
        };
        let () = setslot("IMPORTING", &from_id)
            .query_async(&mut target)
            .await
            .unwrap();
        let () = setslot("MIGRATING", &to_id)
            .query_async(&mut source)
            .await
            .unwrap();
        for _ in 0..100 {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async::<redis::Value>(&mut source)
                .await
                .map(|_| ())
                .unwrap();
        }
        let () = setslot("NODE", &to_id)
            .query_async(&mut target)
            .await
            .unwrap();
        let () = setslot("NODE", &to_id)
            .query_async(&mut source)
            .await
            .unwrap();
        for port in self.nodes.masters() {
            if port != from && port != to {
                let _: redis::RedisResult<()> = setslot("NODE", &to_id)
                    .query_async(&mut self.node(port).await)
                    .await;
            }
        }
    }
}

/// A connection to the node at `addr` (host:port) alone, not to the cluster.
async fn node_at(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `CLUSTER KEYSLOT key`, as the node behind `conn` computes it.
async fn keyslot(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}
