//! Integration tests against the real topology: `redis-server`, replica processes of the built
//! binary and `nginx` from the shipped `nginx.conf`, all started by the tests on free loopback
//! ports. Statistical claims are asserted with bounds a correct system meets every time.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api;
mod batch;
mod browser;
mod channels;
mod cluster_command;
mod drills;
mod failover;
mod first_run;
mod fuzz_seeds;
mod gap_fill;
mod headers;
mod layout;
mod limits;
mod link;
mod load;
mod partitions;
mod records_tail;
mod redis_cluster;
mod reliability;
mod retries;
mod routing;
mod state;
// Helpers serve several test modules; not every module uses every helper.
#[allow(dead_code)]
mod support;
mod workers;
