//! The real programs of the topology, each on a free loopback port: `redis-server`, replicas of
//! the built binary, and `nginx` running the repository's `nginx.conf`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stickyws::ops::redis_server;

use super::process::Proc;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            proc.is_running(),
            "{} exited early\n{}",
            proc.name,
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} not listening on {addr} after {limit:?}\n{}",
        proc.name,
        proc.log_tail()
    );
}

/// A real `redis-server`, started as the library starts it
/// ([`stickyws::ops::redis_server`]); dropping the handle kills it and waits.
pub struct RedisServer {
    server: redis_server::RedisServer,
    pub port: u16,
}

impl RedisServer {
    pub fn start(log_dir: &Path) -> RedisServer {
        Self::start_on(free_port(), log_dir)
    }

    /// On a given port: a fault test restarts Redis where the replicas expect it.
    pub fn start_on(port: u16, log_dir: &Path) -> RedisServer {
        Self::start_with(port, log_dir, &[])
    }

    /// With extra settings after the shipped ones (a smaller `--maxmemory`, say).
    pub fn start_with(port: u16, log_dir: &Path, extra: &[&str]) -> RedisServer {
        let server = redis_server::RedisServer::start_on(port, log_dir, extra)
            .unwrap_or_else(|err| panic!("{err}"));
        RedisServer { server, port }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// SIGKILL, as a crash would; the port is free again once this returns.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }

    /// Sends `signal` to the server: SIGSTOP freezes it with every connection left open, which
    /// is what a hung host looks like from the replicas; SIGCONT thaws it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.server.pid().expect("redis-server is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }
}

/// Settings shared by the replicas of one test deployment.
#[derive(Clone)]
pub struct ReplicaEnv {
    pub redis_url: Option<String>,
    pub secret: String,
    pub api_key: String,
    pub records_log: String,
    pub extra: Vec<(String, String)>,
}

pub struct ReplicaProc {
    pub proc: Proc,
    pub name: String,
    pub addr: SocketAddr,
}

impl ReplicaProc {
    pub fn start(name: &str, port: u16, env: &ReplicaEnv, log_dir: &Path) -> ReplicaProc {
        Self::start_at(name, loopback(port), env, log_dir, &[])
    }

    /// At any address, the binary run through `launcher` (e.g. `ip netns exec <ns>`) when given.
    pub fn start_at(
        name: &str,
        addr: SocketAddr,
        env: &ReplicaEnv,
        log_dir: &Path,
        launcher: &[String],
    ) -> ReplicaProc {
        let mut command = launched(launcher, env!("CARGO_BIN_EXE_stickyws").as_ref());
        command
            .arg("serve")
            .env_clear()
            .env("APP_ID", name)
            .env("BIND", addr.to_string())
            .env("STICKY_SECRET", &env.secret)
            .env("API_KEY", &env.api_key)
            .env("RECORDS_LOG", &env.records_log)
            .env("RUST_LOG", "stickyws=debug")
            // Tests mint from one address, many at once; the mint limit's own test lowers it.
            .env("MINT_RATE", "100000");
        if let Some(url) = &env.redis_url {
            command.env("REDIS_URL", url);
        }
        for (k, v) in &env.extra {
            command.env(k, v);
        }
        let mut proc = Proc::spawn(name, &mut command, log_dir);
        wait_listening(addr, &mut proc, Duration::from_secs(15));
        ReplicaProc {
            proc,
            name: name.to_owned(),
            addr,
        }
    }
}

/// `program`, or `launcher` followed by `program` (which then runs it: `ip netns exec <ns>`).
pub fn launched(launcher: &[String], program: &Path) -> Command {
    match launcher.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
    }
}

pub struct Nginx {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Nginx {
    /// Runs the repository's nginx.conf with only the addresses and listen port rewritten.
    pub fn start(replicas: &[SocketAddr], log_dir: &Path) -> Nginx {
        Self::start_at(loopback(free_port()), replicas, log_dir, &[])
    }

    /// Listening on `addr`, run through `launcher` when given (see [`launched`]).
    pub fn start_at(
        addr: SocketAddr,
        replicas: &[SocketAddr],
        log_dir: &Path,
        launcher: &[String],
    ) -> Nginx {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"))
            .expect("reading nginx.conf");
        let rendered = stickyws::ops::nginx_conf::render(&shipped, addr, replicas)
            .expect("rendering nginx.conf");
        let prefix = log_dir.join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, rendered).unwrap();
        let nginx = stickyws::ops::host::find("nginx", "nginx", Some("nginx"))
            .unwrap_or_else(|err| panic!("{err}"));
        let mut command = launched(launcher, &nginx);
        command
            .arg("-p")
            .arg(format!("{}/", prefix.display()))
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr", "-g"])
            .arg(format!("daemon off; pid {}/nginx.pid;", prefix.display()));
        let mut proc = Proc::spawn("nginx", &mut command, log_dir);
        wait_listening(addr, &mut proc, Duration::from_secs(10));
        Nginx { proc, addr }
    }
}
