//! The command connection of either Redis broker, as one type: the single-Redis driver's checked
//! [`CommandLink`], or a Redis Cluster connection (which routes each command to the shard owning
//! its key and follows `MOVED`/`ASK` and topology changes itself). What lives beside the broker
//! in the same Redis (channel presence, the state lab's shared store) takes this, so it works on
//! both without knowing which.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::link::CommandLink;

/// A command connection to one Redis or to a cluster; clones share it.
#[derive(Clone)]
pub enum RedisConn {
    Single(CommandLink),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConn::Single(link) => link.fmt(f),
            RedisConn::Cluster(_) => f.write_str("ClusterConnection"),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(link) => link.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(link) => link.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(link) => link.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}
