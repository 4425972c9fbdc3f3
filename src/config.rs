//! Configuration of one replica: read from the environment (12-factor), each setting mirrored by
//! a flag, validated once at start-up into a typed [`Config`]. Secrets never appear in `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::limits::Limits;
use crate::peer::TrustedProxies;

/// `stickyws serve` flags; every one also reads its environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The replica's name, shown in every response, frame and log line [default: <hostname>-<pid>]
    #[arg(long, env = "APP_ID")]
    pub app_id: Option<String>,

    /// Listen address.
    #[arg(long, env = "BIND", default_value = "0.0.0.0:8000")]
    pub bind: SocketAddr,

    /// Broker URL (redis://host:port); unset means an in-process broker, for one replica only.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes (host:port,host:port,…): the broker on a cluster, with sharded
    /// pub/sub; not together with REDIS_URL.
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,

    /// Key that signs client tokens; every replica of one deployment shares it.
    #[arg(long, env = "STICKY_SECRET", hide_env_values = true)]
    pub sticky_secret: Option<String>,

    /// Bearer key of the server-side publish API; unset disables it.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Path of the records log, appended to by every replica ("off" disables it).
    #[arg(long, env = "RECORDS_LOG", default_value = "records.log")]
    pub records_log: String,

    /// Processes sharing BIND through SO_REUSEPORT, each its own replica APP_ID.wN.
    #[arg(long, env = "WORKERS", default_value_t = 1)]
    pub workers: u16,

    /// Threads each replica process runs its sockets on; 1 runs everything on one thread, with
    /// no wake-ups between threads [default: available cores / WORKERS, at least 1]
    #[arg(long, env = "THREADS")]
    pub threads: Option<usize>,

    /// Origins allowed to open a WebSocket besides the page's own (comma separated, or "*").
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Networks whose X-Real-IP and X-Forwarded-Proto are believed (comma separated, or
    /// "none"); every other peer is taken as the client itself.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = crate::peer::TrustedProxies::DEFAULT)]
    pub trusted_proxies: String,

    /// Seconds a stopping replica waits for its sockets to close before exiting anyway.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,

    /// The fault-drill supervisor this replica forwards `/api/drills*` to (http://host:port);
    /// `stickyws cluster` sets it. Unset: drills are off.
    #[arg(long, env = "DRILLS_URL")]
    pub drills_url: Option<String>,

    /// The supervisor's per-run token: sent with every forwarded drill, accepted from the page.
    #[arg(long, env = "DRILLS_TOKEN", hide_env_values = true)]
    pub drills_token: Option<String>,

    /// "on" allows drills on a non-loopback BIND (with DRILLS_URL set); "off" or unset: only
    /// on a loopback BIND.
    #[arg(long, env = "DRILLS", default_value = "off")]
    pub drills: String,

    #[command(flatten)]
    pub limits: Limits,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("APP_ID must be 1 to 64 characters of [A-Za-z0-9._-], got {0:?}")]
    BadAppId(String),
    #[error("REDIS_URL must start with redis:// or rediss://, got {0:?}")]
    BadRedisUrl(String),
    #[error(transparent)]
    BadClusterNodes(#[from] crate::broker::redis_cluster::BadSeeds),
    #[error("set REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a Redis Cluster), not both")]
    TwoBrokers,
    #[error("{0} must not be empty when set")]
    EmptySecret(&'static str),
    #[error(
        "STICKY_SECRET must be at least 16 bytes (got {0}); generate one with `openssl rand -hex 32`"
    )]
    ShortSecret(usize),
    #[error("WORKERS must be between 1 and 64, got {0}")]
    BadWorkers(u16),
    #[error("THREADS must be between 1 and 1024, got {0}")]
    BadThreads(usize),
    #[error("{0}")]
    BadLimit(String),
    #[error("{0}")]
    BadTrustedProxies(String),
    #[error("DRAIN_TIMEOUT must be between 1 and 3600 seconds, got {0}")]
    BadDrainTimeout(u64),
    #[error("DRILLS_URL must be http://<host>:<port>, got {0:?}")]
    BadDrillsUrl(String),
    #[error("DRILLS_TOKEN must be printable ASCII without spaces")]
    BadDrillsToken,
    #[error("DRILLS must be on or off, got {0:?}")]
    BadDrills(String),
}

/// Where the signing secret came from: a random one works for a single replica only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    /// Shipped as a demo default (it starts with `demo-`): fine on a laptop, flagged on the page.
    Demo,
    Random,
}

/// A validated replica configuration.
#[derive(Clone)]
pub struct Config {
    pub app_id: String,
    pub bind: SocketAddr,
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes as connection URLs; empty unless REDIS_CLUSTER_NODES is set.
    pub redis_cluster_nodes: Vec<String>,
    pub secret: Vec<u8>,
    pub secret_source: SecretSource,
    pub api_key: Option<String>,
    /// `None` when the records log is turned off.
    pub records_log: Option<PathBuf>,
    pub workers: u16,
    /// Runtime threads of each replica process.
    pub threads: usize,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: TrustedProxies,
    pub drain_timeout: std::time::Duration,
    /// Fault drills: `Some` only when enabled (see [`Drills::enabled`]).
    pub drills: Option<Drills>,
    pub limits: Limits,
}

/// Where this replica forwards fault drills, and the token it sends with them.
#[derive(Clone, PartialEq, Eq)]
pub struct Drills {
    /// `host:port` of the supervisor's control server.
    pub supervisor: String,
    /// The supervisor's per-run token; `None`: only the API key opens `/api/drills*`, and
    /// the supervisor will refuse what is forwarded.
    pub token: Option<String>,
}

impl fmt::Debug for Drills {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drills")
            .field("supervisor", &self.supervisor)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Drills {
    /// Drills answer only where a supervisor was named, and then only on a loopback BIND
    /// unless switched on explicitly: a replica reachable from elsewhere must not hand out
    /// the power to kill its neighbours by default.
    fn enabled(
        url: Option<&str>,
        token: Option<String>,
        bind: SocketAddr,
        switch: &str,
    ) -> Result<Option<Drills>, ConfigError> {
        let on = match switch {
            "on" => true,
            "off" | "" => false,
            other => return Err(ConfigError::BadDrills(other.to_owned())),
        };
        let Some(url) = url else { return Ok(None) };
        let supervisor = parse_drills_url(url)?;
        if !(bind.ip().is_loopback() || on) {
            return Ok(None);
        }
        // It travels in a header line: nothing that could end or split one.
        if token
            .as_deref()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::BadDrillsToken);
        }
        let token = token.filter(|t| !t.is_empty());
        Ok(Some(Drills { supervisor, token }))
    }
}

/// `http://host:port` (a trailing `/` allowed) → `host:port`.
fn parse_drills_url(url: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadDrillsUrl(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(authority.to_owned())
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("app_id", &self.app_id)
            .field("bind", &self.bind)
            .field("redis_url", &self.redis_url)
            .field("redis_cluster_nodes", &self.redis_cluster_nodes)
            .field("secret", &"<redacted>")
            .field("secret_source", &self.secret_source)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("records_log", &self.records_log)
            .field("workers", &self.workers)
            .field("threads", &self.threads)
            .field("allowed_origins", &self.allowed_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("drain_timeout", &self.drain_timeout)
            .field("drills", &self.drills)
            .field("limits", &self.limits)
            .finish()
    }
}

const MIN_SECRET_BYTES: usize = 16;

impl Config {
    /// Validates the flags and environment into a configuration.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let app_id = match args.app_id {
            Some(id) => id,
            None => default_app_id(),
        };
        if !is_valid_app_id(&app_id) {
            return Err(ConfigError::BadAppId(app_id));
        }
        if let Some(url) = &args.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::BadRedisUrl(url.clone()));
        }
        let redis_cluster_nodes = match &args.redis_cluster_nodes {
            None => Vec::new(),
            Some(_) if args.redis_url.is_some() => return Err(ConfigError::TwoBrokers),
            Some(raw) => crate::broker::redis_cluster::parse_seeds(raw)?,
        };
        let (secret, secret_source) = match args.sticky_secret {
            Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret("STICKY_SECRET")),
            Some(s) if s.len() < MIN_SECRET_BYTES => return Err(ConfigError::ShortSecret(s.len())),
            Some(s) if s.starts_with("demo-") => (s.into_bytes(), SecretSource::Demo),
            Some(s) => (s.into_bytes(), SecretSource::Configured),
            None => (rand::random::<[u8; 32]>().to_vec(), SecretSource::Random),
        };
        if args.api_key.as_deref() == Some("") {
            return Err(ConfigError::EmptySecret("API_KEY"));
        }
        if args.workers == 0 || args.workers > 64 {
            return Err(ConfigError::BadWorkers(args.workers));
        }
        let threads = args
            .threads
            .unwrap_or_else(|| default_threads(args.workers));
        if !(1..=1024).contains(&threads) {
            return Err(ConfigError::BadThreads(threads));
        }
        args.limits.validate().map_err(ConfigError::BadLimit)?;
        if !(1..=3600).contains(&args.drain_timeout) {
            return Err(ConfigError::BadDrainTimeout(args.drain_timeout));
        }
        let trusted_proxies =
            TrustedProxies::parse(&args.trusted_proxies).map_err(ConfigError::BadTrustedProxies)?;
        let drills = Drills::enabled(
            args.drills_url.as_deref(),
            args.drills_token,
            args.bind,
            &args.drills,
        )?;
        let records_log = match args.records_log.as_str() {
            "" | "off" => None,
            path => Some(PathBuf::from(path)),
        };
        Ok(Self {
            app_id,
            bind: args.bind,
            redis_url: args.redis_url,
            redis_cluster_nodes,
            secret,
            secret_source,
            api_key: args.api_key,
            records_log,
            workers: args.workers,
            threads,
            trusted_proxies,
            drain_timeout: std::time::Duration::from_secs(args.drain_timeout),
            drills,
            allowed_origins: args
                .allowed_origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            limits: args.limits,
        })
    }
}

/// The cores this process may use, shared among the WORKERS processes: more runtime threads
/// than cores only adds wake-ups between them.
pub fn default_threads(workers: u16) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / usize::from(workers.max(1))).max(1)
}

/// `<hostname>-<pid>`, reduced to the characters an APP_ID may hold.
fn default_app_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "replica".to_owned()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// APP_ID travels in a cookie, JSON and log lines; keep it to characters that need no escaping.
pub fn is_valid_app_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("flags parse");
        Config::from_args(cli.serve)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = parse(&["--app-id", "app-1"]).unwrap();
        assert_eq!(config.bind.to_string(), "0.0.0.0:8000");
        assert_eq!(config.redis_url, None);
        assert_eq!(config.secret_source, SecretSource::Random);
        assert_eq!(config.records_log, Some(PathBuf::from("records.log")));
        assert_eq!(config.workers, 1);
        assert_eq!(config.threads, default_threads(1));
        assert!(config.api_key.is_none());
        assert_eq!(config.trusted_proxies, TrustedProxies::default());
    }

    #[test]
    fn trusted_proxies_can_be_narrowed_or_refused_when_malformed() {
        let config = parse(&["--app-id", "a", "--trusted-proxies", "none"]).unwrap();
        assert!(
            !config
                .trusted_proxies
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(matches!(
            parse(&["--app-id", "a", "--trusted-proxies", "10.0.0.0/99"]),
            Err(ConfigError::BadTrustedProxies(_))
        ));
    }

    #[test]
    fn limit_defaults_are_the_documented_ones() {
        // The README's configuration table, as `stickyws serve` reads it with nothing set.
        let limits = parse(&["--app-id", "app-1"]).unwrap().limits;
        let documented = [
            ("MAX_BODY_BYTES", limits.max_body_bytes, 16 * 1024),
            ("MAX_TEXT_BYTES", limits.max_text_bytes, 4 * 1024),
            (
                "MAX_WS_MESSAGE_BYTES",
                limits.max_ws_message_bytes,
                16 * 1024,
            ),
            ("MAX_SOCKETS", limits.max_sockets, 100_000),
            ("MAX_SOCKETS_PER_CLIENT", limits.max_sockets_per_client, 16),
            ("SOCKET_QUEUE", limits.socket_queue, 256),
            ("PUBLISH_RATE", limits.publish_rate as usize, 200),
            ("MINT_RATE", limits.mint_rate as usize, 20),
            ("MAX_REPLAY_BYTES", limits.max_replay_bytes, 1024 * 1024),
            (
                "REPLAY_TIMEOUT_SECS",
                limits.replay_timeout_secs as usize,
                10,
            ),
            ("HISTORY_LEN", limits.history_len, 1000),
            (
                "HISTORY_BROADCAST_LEN",
                limits.history_broadcast_len,
                10_000,
            ),
            ("HISTORY_TTL_SECS", limits.history_ttl_secs as usize, 300),
            ("STATE_TTL_SECS", limits.state_ttl_secs as usize, 600),
            (
                "STATE_MAX_ENTRIES",
                limits.state_max_entries as usize,
                10_000,
            ),
            ("MAX_NOTES", limits.max_notes, 20),
            ("MAX_NOTE_BYTES", limits.max_note_bytes, 200),
        ];
        for (name, got, want) in documented {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn default_app_id_is_hostname_dash_pid() {
        let id = default_app_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(is_valid_app_id(&id), "{id}");
    }

    #[test]
    fn app_id_with_spaces_or_separators_is_refused() {
        for bad in ["", "app 1", "app|1", "a;b", &"x".repeat(65)] {
            assert!(
                matches!(parse(&["--app-id", bad]), Err(ConfigError::BadAppId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn short_or_empty_secret_is_refused() {
        assert_eq!(
            parse(&["--app-id", "a", "--sticky-secret", "short"]).unwrap_err(),
            ConfigError::ShortSecret(5)
        );
        assert_eq!(
            parse(&["--app-id", "a", "--sticky-secret", ""]).unwrap_err(),
            ConfigError::EmptySecret("STICKY_SECRET")
        );
    }

    #[test]
    fn demo_secret_is_accepted_but_flagged() {
        let config = parse(&["--app-id", "a", "--sticky-secret", "demo-secret-change-me"]).unwrap();
        assert_eq!(config.secret_source, SecretSource::Demo);
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seed_nodes_and_never_beside_redis_url() {
        let config = parse(&[
            "--app-id",
            "a",
            "--redis-cluster-nodes",
            "127.0.0.1:7000,127.0.0.1:7001",
        ])
        .unwrap();
        assert_eq!(config.redis_cluster_nodes.len(), 2);
        assert_eq!(config.redis_url, None);
        assert!(matches!(
            parse(&["--app-id", "a", "--redis-cluster-nodes", "127.0.0.1"]),
            Err(ConfigError::BadClusterNodes(_))
        ));
        let both = parse(&[
            "--app-id",
            "a",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-cluster-nodes",
            "127.0.0.1:7000",
        ]);
        assert_eq!(both.unwrap_err(), ConfigError::TwoBrokers);
        assert!(
            parse(&["--app-id", "a"])
                .unwrap()
                .redis_cluster_nodes
                .is_empty()
        );
    }

    #[test]
    fn redis_url_must_be_a_redis_url() {
        assert!(matches!(
            parse(&["--app-id", "a", "--redis-url", "http://localhost"]),
            Err(ConfigError::BadRedisUrl(_))
        ));
        assert!(parse(&["--app-id", "a", "--redis-url", "redis://127.0.0.1:6379"]).is_ok());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = parse(&[
            "--app-id",
            "a",
            "--sticky-secret",
            "a-very-secret-value-123",
            "--api-key",
            "key-456",
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("a-very-secret-value-123"), "{shown}");
        assert!(!shown.contains("key-456"), "{shown}");
    }

    #[test]
    fn threads_default_to_the_cores_shared_among_workers() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_threads(1), cores);
        assert_eq!(default_threads(64), (cores / 64).max(1));
        let config = parse(&["--app-id", "a", "--threads", "1"]).unwrap();
        assert_eq!(config.threads, 1);
        assert_eq!(
            parse(&["--app-id", "a", "--threads", "0"]).unwrap_err(),
            ConfigError::BadThreads(0)
        );
    }

    #[test]
    fn drills_need_a_supervisor_and_a_loopback_bind_or_the_switch() {
        let url = "http://127.0.0.1:4100";
        let off = parse(&["--app-id", "a", "--bind", "127.0.0.1:8000"]).unwrap();
        assert_eq!(off.drills, None, "no DRILLS_URL: off");
        let local = parse(&[
            "--app-id",
            "a",
            "--bind",
            "127.0.0.1:8000",
            "--drills-url",
            url,
            "--drills-token",
            "t0k",
        ])
        .unwrap();
        assert_eq!(
            local.drills,
            Some(Drills {
                supervisor: "127.0.0.1:4100".to_owned(),
                token: Some("t0k".to_owned())
            })
        );
        assert!(!format!("{local:?}").contains("t0k"));
        let public = parse(&["--app-id", "a", "--drills-url", url]).unwrap();
        assert_eq!(public.drills, None, "0.0.0.0 without DRILLS=on: off");
        let switched = parse(&["--app-id", "a", "--drills-url", url, "--drills", "on"]).unwrap();
        assert!(switched.drills.is_some());
        assert_eq!(
            parse(&["--app-id", "a", "--drills", "yes"]).unwrap_err(),
            ConfigError::BadDrills("yes".to_owned())
        );
        for bad in [
            "127.0.0.1:4100",
            "https://h:1",
            "http://h",
            "http://h:0",
            "http://h:1/x",
        ] {
            assert!(
                matches!(
                    parse(&["--app-id", "a", "--drills-url", bad]),
                    Err(ConfigError::BadDrillsUrl(_))
                ),
                "{bad}"
            );
        }
        assert!(parse(&["--app-id", "a", "--drills-url", "http://supervisor:9/"]).is_ok());
    }

    #[test]
    fn records_log_can_be_turned_off() {
        let config = parse(&["--app-id", "a", "--records-log", "off"]).unwrap();
        assert_eq!(config.records_log, None);
    }
}
