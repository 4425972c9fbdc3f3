//! Running replicas and their neighbours on one machine: the local cluster (`stickyws cluster`:
//! a real `redis-server`, N replicas and `nginx`), workers sharing a port (`WORKERS=N`), and the
//! rewrite of the shipped `nginx.conf` for loopback addresses.
//!
//! A replica itself needs none of this; it is what runs beside one. The replica lives in
//! [`crate::server`]; what these modules start is supervised here, each child killed and waited
//! for when its owner stops.
//!
//! - [`cluster`]: `stickyws cluster`, the whole topology as supervised children.
//! - [`supervisor`]: the cluster's process table: start again on the same port, reap, signal.
//! - [`control`]: the cluster's control server, which runs the fault drills.
//! - [`docker_drills`]: `stickyws drills-docker`, the same drills on a compose project's containers.
//! - [`workers`]: `WORKERS=N`, several replica processes sharing one port.
//! - [`nginx_conf`]: the shipped `nginx.conf` with only addresses and the listen port rewritten.
//! - [`redis_server`]: the one way a real `redis-server` is started (cluster and tests alike).
//! - [`redis_cluster`]: a local Redis Cluster of six such servers (3 masters, 3 replicas).
//! - [`host`]: the programs this machine has, and free loopback ports.

pub mod cluster;
pub mod control;
pub mod docker_drills;
pub mod host;
pub mod nginx_conf;
pub mod redis_cluster;
pub mod redis_server;
pub mod supervisor;
pub mod workers;
