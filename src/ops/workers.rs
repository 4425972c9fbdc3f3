//! `WORKERS=N`: one container, several replicas. The parent runs N processes of this binary
//! sharing one port through `SO_REUSEPORT`, each its own replica `APP_ID.wN` with its own sockets
//! and memory; it restarts a worker that dies and passes SIGTERM on to all of them.
//!
//! This is the lesson of the seed's "one container, four workers": the kernel spreads
//! connections over the workers, and a sticky cookie naming the container cannot tell them
//! apart, so in-memory delivery fails about (N-1)/N of the time while publish always arrives.

use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::config::{Config, SecretSource};

/// Set in a worker's environment: bind with `SO_REUSEPORT`.
pub const REUSEPORT_ENV: &str = "STICKYWS_REUSEPORT";

/// A listener on `addr` that other workers may bind too.
pub fn reuseport_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn spawn(config: &Config, index: u16, secret: &str) -> anyhow::Result<Child> {
    let me = std::env::current_exe().context("locating the stickyws binary")?;
    let mut command = match super::host::which("setpriv") {
        // The workers die with the supervisor, even if it is killed outright.
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(me);
            c
        }
        None => Command::new(me),
    };
    command
        .arg("serve")
        .env("APP_ID", format!("{}.w{index}", config.app_id))
        .env("WORKERS", "1")
        // The supervisor divided the cores among its workers; each must not count them again.
        .env("THREADS", config.threads.to_string())
        .env("BIND", config.bind.to_string())
        .env("STICKY_SECRET", secret)
        .env(REUSEPORT_ENV, "1")
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("starting worker {index}"))
}

/// Supervises `config.workers` worker processes until Ctrl-C or SIGTERM.
pub async fn supervise(config: Config) -> anyhow::Result<()> {
    // Every worker must accept every other's tokens: one secret for all of them.
    let secret = match config.secret_source {
        SecretSource::Random => hex::encode(rand::random::<[u8; 32]>()),
        _ => String::from_utf8_lossy(&config.secret).into_owned(),
    };
    let mut workers = Vec::new();
    for index in 1..=config.workers {
        workers.push(spawn(&config, index, &secret)?);
    }
    tracing::info!(workers = config.workers, bind = %config.bind, "workers started");
    let signal = crate::shutdown::signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (i, worker) in workers.iter_mut().enumerate() {
            if let Ok(Some(status)) = worker.try_wait() {
                let index = i as u16 + 1;
                tracing::warn!(worker = index, %status, "worker exited; restarting it");
                tokio::time::sleep(Duration::from_millis(500)).await;
                *worker = spawn(&config, index, &secret)?;
            }
        }
    }
    // Pass the signal on; each worker drains its own sockets.
    for worker in &workers {
        if let Some(pid) = worker.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let limit = config.drain_timeout + Duration::from_secs(2);
    for worker in &mut workers {
        if tokio::time::timeout(limit, worker.wait()).await.is_err() {
            let _ = worker.kill().await;
        }
    }
    Ok(())
}
