//! The one way a real `redis-server` is started, by the local cluster and by the tests alike:
//! found on this machine, on a loopback port, with no persistence (the broker holds nothing worth
//! keeping), its output in a log file, and ready only once it answers `PING`.
//!
//! [`RedisServer`] is the whole of it as a handle that kills and waits for the server on drop.
//! The cluster supervises its children itself (parent-death signal, graceful stop), so it takes
//! the pieces instead: [`program`], [`args`] and [`wait_ready`]. Which port and what runs against
//! the server are the callers' business.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::host::{self, Missing};

/// How long a fresh server has to answer `PING`; it takes milliseconds on an idle machine.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// Lines of the server's log quoted in an error.
const TAIL_LINES: usize = 20;

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pick a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("cannot create the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("redis-server on port {port} exited ({status}) before answering PING\n{tail}")]
    Exited {
        port: u16,
        status: ExitStatus,
        tail: String,
    },
    #[error("redis-server on port {port} did not answer PING within {limit:?}\n{tail}")]
    NoAnswer {
        port: u16,
        limit: Duration,
        tail: String,
    },
}

/// The installed `redis-server`, or the error naming the package to install.
pub fn program() -> Result<PathBuf, Missing> {
    host::find("redis-server", "redis-server", Some("redis"))
}

/// The history budget of every Redis this project starts (docker-compose.yml says the same).
pub const MAXMEMORY: &str = "256mb";
/// What Redis does at the budget: refuse writes. Every key the replicas write expires by itself
/// (histories after HISTORY_TTL_SECS, session state after STATE_TTL_SECS, announcements within
/// seconds), so the budget frees itself. An evicting policy would instead drop history a
/// reconnecting client is owed, silently (an evicted stream looks like one never written), and
/// `volatile-ttl` would evict the replicas' announcements first; refusing the write makes the
/// publisher see it at once (507 `history_full`) and nothing accepted is lost.
pub const MAXMEMORY_POLICY: &str = "noeviction";

/// The command line for a server on `127.0.0.1:port` without persistence, within the history
/// budget, then `extra` (later settings win: a test may shrink the budget).
pub fn args(port: u16, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    let base = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        MAXMEMORY,
        "--maxmemory-policy",
        MAXMEMORY_POLICY,
    ];
    base.iter()
        .chain(extra)
        .map(|arg| (*arg).to_owned())
        .collect()
}

/// Waits until the server on `port` answers `PING`, for at most `limit`. `exited` reports the
/// child's exit, so a server that failed to start is reported at once, not after `limit`; `log`
/// is its output, quoted in the error.
pub fn wait_ready(
    port: u16,
    limit: Duration,
    mut exited: impl FnMut() -> Option<ExitStatus>,
    log: &Path,
) -> Result<(), StartError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + limit;
    loop {
        if answers_ping(addr) {
            return Ok(());
        }
        if let Some(status) = exited() {
            let tail = log_tail(log, TAIL_LINES);
            return Err(StartError::Exited { port, status, tail });
        }
        if Instant::now() >= deadline {
            let tail = log_tail(log, TAIL_LINES);
            return Err(StartError::NoAnswer { port, limit, tail });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One inline `PING`; `+PONG` means ready (a loading server answers `-LOADING` instead).
fn answers_ping(addr: SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let timeout = Duration::from_millis(500);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    probe().unwrap_or(false)
}

/// The last `lines` lines of a log file, headed by its path.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// A running `redis-server`; dropping the handle kills it and waits for it.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` once killed: a fault test kills the server and starts another on the same port.
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    /// A server on a free loopback port, its log in `log_dir`.
    pub fn start(log_dir: &Path, extra: &[&str]) -> Result<RedisServer, StartError> {
        let port = host::free_port().map_err(StartError::Port)?;
        Self::start_on(port, log_dir, extra)
    }

    /// A server on `port` (a fault test restarts Redis where the replicas expect it), logging to
    /// `log_dir/redis-<port>.log`; returns once it answers `PING`.
    pub fn start_on(port: u16, log_dir: &Path, extra: &[&str]) -> Result<RedisServer, StartError> {
        let program = program()?;
        let log = log_dir.join(format!("redis-{port}.log"));
        let log_error = |source| StartError::Log {
            path: log.clone(),
            source,
        };
        let out = std::fs::File::create(&log).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = Command::new(&program)
            .args(args(port, extra))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| StartError::Spawn { program, source })?;
        let mut server = RedisServer {
            child: Some(child),
            port,
            log,
        };
        // On error, dropping `server` kills what was spawned.
        wait_ready(
            port,
            READY_WITHIN,
            || exited_now(&mut server.child),
            &server.log,
        )?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the server's output, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, TAIL_LINES)
    }

    /// SIGKILL, as a crash would, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn exited_now(child: &mut Option<Child>) -> Option<ExitStatus> {
    child
        .as_mut()
        .and_then(|child| child.try_wait().ok().flatten())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_binds_loopback_without_persistence_within_the_budget_then_adds_the_callers_args()
     {
        assert_eq!(
            args(6400, &["--maxmemory", "1mb"]),
            [
                "--port",
                "6400",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                "256mb",
                "--maxmemory-policy",
                "noeviction",
                "--maxmemory",
                "1mb"
            ]
        );
    }

    #[test]
    fn a_missing_program_names_the_package_to_install() {
        let missing = host::find("stickyws-no-such-program", "the-package", None).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "`stickyws-no-such-program` not found. Install it: \
             `sudo apt-get install -y the-package` (Debian/Ubuntu)"
        );
        let redis = Missing {
            program: "redis-server",
            debian: "redis-server",
            brew: Some("redis"),
        };
        assert!(
            redis
                .to_string()
                .contains("apt-get install -y redis-server"),
            "{redis}"
        );
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported_with_its_log_not_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        std::fs::write(&log, "FATAL CONFIG FILE ERROR\n").unwrap();
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let port = host::free_port().unwrap();
        let started = Instant::now();
        let err = wait_ready(
            port,
            Duration::from_secs(30),
            || child.try_wait().ok().flatten(),
            &log,
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        assert!(matches!(err, StartError::Exited { .. }), "{err}");
        assert!(err.to_string().contains("FATAL CONFIG FILE ERROR"), "{err}");
    }

    #[test]
    fn a_started_server_answers_ping_and_its_port_is_free_once_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = RedisServer::start(dir.path(), &[]).unwrap_or_else(|err| panic!("{err}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(answers_ping(addr), "{}", server.log_tail());
        server.kill();
        assert!(!answers_ping(addr));
        let again = RedisServer::start_on(server.port(), dir.path(), &[])
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(answers_ping(addr), "{}", again.log_tail());
    }
}
