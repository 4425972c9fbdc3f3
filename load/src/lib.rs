//! stickyws-load: `stickyws load <scenario> --url …` (the `stickyws-load` binary), traffic
//! against any running deployment (`stickyws cluster`, compose, or a real one), bounded in count
//! and time. Each scenario sends, collects and reports in separate steps. The wire format, the
//! limits and the open-files limit come from the gateway library (`stickyws`); nothing here is
//! part of a replica.
//!
//! Scenarios: `tour` (the demo's six buttons, checked), `connect`, `targeted`, `broadcast`,
//! `sticky`, `failover`, `channel`, `jitter` and `avalanche` (see [`Scenario`]), each a
//! subcommand whose `--help` lists only the flags it reads ([`command`], `Scenario::flags`).
//!
//! # Layout
//! - `client`: one client of the deployment — minted once, then HTTP calls and a checked socket.
//! - `deployment`: HTTP to the front door — minting clients in bulk, replica names, `/metrics`.
//! - `socket`: opening load sockets (source addresses, small buffers, the welcome), failure kinds.
//! - `sources`: the loopback source addresses `--source-addrs` / `--source-ips` name, checked.
//! - `publisher`: sending — HTTP requests at a rate with bounded concurrency, errors by kind.
//! - `fleet`: many sockets opened at a bounded rate and held, each by a task of its own.
//! - `deliveries`: collecting — what each socket receives, tallied; reconnects and outages.
//! - `report`: reporting — percentiles, the table, the JSON lines.  `plot`: SVG plots.
//! - `cpu`: the server processes' CPU and memory while a run goes on.  `progress`: the bar.
//! - `tour`, `connect`, `targeted`, `broadcast`, `sticky`, `failover`, `channel`, `jitter`,
//!   `avalanche`: the scenarios.

mod avalanche;
mod broadcast;
mod channel;
mod client;
mod connect;
mod cpu;
mod deliveries;
mod deployment;
mod failover;
mod fleet;
mod jitter;
mod plot;
mod progress;
mod publisher;
mod report;
mod socket;
mod sources;
mod sticky;
mod targeted;
mod tour;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, FromArgMatches, ValueEnum};

use self::cpu::ServerPids;
use self::deliveries::{Clock, Live};
use self::deployment::Deployment;
use self::report::Report;
use self::socket::Dialer;
pub use self::sources::SourceAddrs;

/// `stickyws load <scenario>` flags: every setting any scenario takes. Each scenario's command
/// ([`command`]) offers only those in `Scenario::flags`; the rest keep their defaults.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// What to run: the subcommand's name, filled in by [`from_matches`].
    #[arg(skip = Scenario::Tour)]
    pub scenario: Scenario,
    /// Front door of the deployment (nginx, or one replica).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Presses per button and per state-lab check.
    #[arg(long, default_value_t = 12)]
    pub count: usize,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The measuring scenarios' settings (boxed: they are many, and clap flattens a box).
    #[command(flatten)]
    pub options: Box<LoadOptions>,
}

/// Settings of the measuring scenarios (all but `tour`).
#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
    /// WebSockets to open (one client identity each).
    #[arg(long, visible_alias = "clients", default_value_t = 100)]
    pub sockets: usize,
    /// Messages to send: publishes (targeted, failover, channel), broadcasts (broadcast),
    /// requests per cookie mode (sticky).
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Messages per second; 0 sends as fast as --concurrency allows (failover: 0 means 500).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// targeted, channel: publish through `POST /api/publish` (API key), this many messages to
    /// a request; 0 or 1: one request per message.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Handshakes started per second; 0: as fast as --connect-concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Seconds to hold the sockets idle before reading memory (connect).
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// Longest wait, in seconds, for deliveries still on their way after the last send.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Loopback source addresses to spread sockets over (127.0.0.1, .2, …): each has its own
    /// ~28k ephemeral ports.
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Loopback source addresses to spread sockets over, named: `127.0.0.2-127.0.0.9`, or
    /// addresses and ranges separated by commas. Give each of several load processes its own.
    #[arg(long, value_name = "ADDRS", conflicts_with = "source_ips")]
    pub source_addrs: Option<SourceAddrs>,
    /// channel: how many channels (`public:bench-0` …) the subscribers (--sockets) and the
    /// publishes are spread over, round robin.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// channel: put every subscriber on one replica (the first /api/replicas names, through its
    /// sticky cookie; the publishes go there too), and report each replica's CPU on its own.
    #[arg(long)]
    pub on_one_replica: bool,
    /// channel: seconds of idle CPU to measure before publishing, to set each replica's busy
    /// CPU beside.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// channel: Redis to ask `PUBSUB NUMSUB` (default: a measured replica's REDIS_URL).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The deployment's API key: for /api/broadcast and channel publishes, and sent when
    /// minting clients, which a deployment then does not rate-limit (MINT_RATE).
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Append the results as JSON lines to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Names this run in the JSON lines and plot file names (default: the scenario).
    #[arg(long)]
    pub label: Option<String>,
    /// Server processes whose CPU to measure (comma-separated pids).
    #[arg(long, default_value = "")]
    pub server_pids: String,
    /// Measure the stickyws, nginx and redis-server processes below this pid (`stickyws cluster`).
    #[arg(long)]
    pub cluster_pid: Option<u32>,
    /// failover: SIGKILL this pid (a replica you started) during the run.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// failover: SIGTERM this pid (the replica drains) during the run.
    #[arg(long, conflicts_with = "kill_pid")]
    pub drain_pid: Option<u32>,
    /// failover, avalanche: seconds into the sending before the signal (default: a third of
    /// the run).
    #[arg(long)]
    pub fault_after: Option<f64>,
    /// jitter: each socket's TCP connection is reset about this often, in seconds (±25 %).
    #[arg(long, default_value_t = 15.0)]
    pub jitter_every: f64,
    /// jitter: seconds a reset socket stays offline before it reconnects (±25 %).
    #[arg(long, default_value_t = 2.0)]
    pub offline: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Presses each of the demo page's six buttons and the state lab's three checks, and
    /// checks what each one promises.
    Tour,
    /// Ramps --sockets WebSockets, holds them: connect rate, handshake latency, failures by
    /// kind, sockets and resident memory per socket on each replica.
    Connect,
    /// --messages publishes, each to one client's socket, over HTTP through the front door:
    /// deliveries/s, publish-to-receipt latency, loss, duplicates, misdeliveries.
    Targeted,
    /// --messages broadcasts (API key) to --sockets sockets: deliveries/s and latency.
    Broadcast,
    /// /api/direct with and without the sticky cookie: where requests land, and how often a
    /// direct message reaches its socket (about 1/N without the cookie, all with it).
    Sticky,
    /// A targeted run at a fixed rate while --kill-pid or --drain-pid is signalled: time until
    /// the clients are back, messages lost.
    Failover,
    /// --messages channel publishes (API key) over --channels channels with --sockets
    /// subscribers: deliveries/s, latency, loss, duplicates, CPU per replica, `PUBSUB NUMSUB`;
    /// fails if anything was lost or duplicated.
    Channel,
    /// AnyCable's jitter benchmark: --messages broadcasts (API key) at --rate to --clients
    /// sockets whose TCP connections are reset about every --jitter-every s and stay offline
    /// about --offline s, then resume from their cursors: delivery rate, duplicates, replay
    /// latency; fails if anything was lost or duplicated.
    Jitter,
    /// --sockets sockets all on one replica, broadcasts at --rate, that replica SIGKILLed
    /// (--kill-pid, or found through --cluster-pid): time until all are back, loss, duplicates;
    /// fails if anything was lost or duplicated or a socket never came back.
    Avalanche,
}

/// Flags of every scenario.
const COMMON_FLAGS: &[&str] = &["url", "timeout"];
/// Flags of every scenario but `tour`: minting, reporting, measuring the servers.
const MEASURING_FLAGS: &[&str] = &[
    "concurrency",
    "api_key",
    "source_ips",
    "source_addrs",
    "json",
    "plots",
    "label",
    "server_pids",
    "cluster_pid",
];

impl Scenario {
    /// The flags (clap ids, the [`LoadArgs`] and [`LoadOptions`] field names) this scenario
    /// reads, besides `COMMON_FLAGS` and, for all but `tour`, `MEASURING_FLAGS`: what its
    /// `--help` shows and what it accepts.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Scenario::Tour => &["count"],
            Scenario::Connect => &["sockets", "connect_concurrency", "connect_rate", "hold"],
            Scenario::Targeted => &[
                "sockets",
                "messages",
                "rate",
                "connect_concurrency",
                "connect_rate",
                "settle",
                "batch",
            ],
            Scenario::Broadcast | Scenario::Sticky => &["sockets", "messages", "rate", "settle"],
            Scenario::Failover => &[
                "sockets",
                "messages",
                "rate",
                "connect_concurrency",
                "connect_rate",
                "settle",
                "kill_pid",
                "drain_pid",
                "fault_after",
            ],
            Scenario::Channel => &[
                "sockets",
                "messages",
                "rate",
                "connect_concurrency",
                "settle",
                "channels",
                "on_one_replica",
                "idle",
                "redis_url",
                "batch",
            ],
            Scenario::Jitter => &[
                "sockets",
                "messages",
                "rate",
                "connect_concurrency",
                "connect_rate",
                "settle",
                "jitter_every",
                "offline",
            ],
            Scenario::Avalanche => &[
                "sockets",
                "messages",
                "rate",
                "connect_concurrency",
                "connect_rate",
                "settle",
                "kill_pid",
                "fault_after",
            ],
        }
    }

    /// Whether this scenario's command offers the flag with clap id `id`.
    fn takes(self, id: &str) -> bool {
        COMMON_FLAGS.contains(&id)
            || (self != Scenario::Tour && MEASURING_FLAGS.contains(&id))
            || self.flags().contains(&id)
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Tour => "tour",
            Scenario::Connect => "connect",
            Scenario::Targeted => "targeted",
            Scenario::Broadcast => "broadcast",
            Scenario::Sticky => "sticky",
            Scenario::Failover => "failover",
            Scenario::Channel => "channel",
            Scenario::Jitter => "jitter",
            Scenario::Avalanche => "avalanche",
        }
    }
}

/// The `stickyws load` command: a subcommand per scenario, each showing (and accepting) only
/// its own flags. Every subcommand is built from all of [`LoadArgs`], the other scenarios' flags
/// hidden, so one struct parses them all and a hidden flag given anyway is refused by
/// [`from_matches`].
pub fn command() -> clap::Command {
    let mut command = clap::Command::new("stickyws-load")
        .bin_name("stickyws load")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Drive traffic against a running deployment and report (or check) what it does")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand_value_name("SCENARIO")
        .subcommand_help_heading("Scenarios");
    for &scenario in Scenario::value_variants() {
        let about = scenario
            .to_possible_value()
            .and_then(|value| value.get_help().cloned());
        let sub = clap::Command::new(scenario.name())
            .bin_name(format!("stickyws load {}", scenario.name()));
        let mut sub = LoadArgs::augment_args(sub).mut_args(|arg| {
            let shown = scenario.takes(arg.get_id().as_str());
            arg.hide(!shown)
        });
        if let Some(about) = about {
            sub = sub.about(about);
        }
        command = command.subcommand(sub);
    }
    command
}

/// The scenario and its settings from [`command`]'s matches; a flag of another scenario is an
/// error naming the scenario's `--help`.
pub fn from_matches(matches: &clap::ArgMatches) -> Result<LoadArgs, clap::Error> {
    let mut command = command();
    let Some((name, sub)) = matches.subcommand() else {
        return Err(command.error(
            clap::error::ErrorKind::MissingSubcommand,
            "name a scenario; `stickyws load --help` lists them",
        ));
    };
    let scenario = Scenario::from_str(name, false)
        .map_err(|e| command.error(clap::error::ErrorKind::InvalidSubcommand, e))?;
    let mut sub_command = command.find_subcommand(name).cloned().unwrap_or(command);
    // The arguments, not `sub.ids()`: that also lists the flattened groups.
    let refused = sub_command.get_arguments().find(|arg| {
        let id = arg.get_id().as_str();
        !scenario.takes(id) && sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    });
    if let Some(arg) = refused {
        let flag = arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned();
        return Err(sub_command.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--{flag} is not an option of `{name}`; `stickyws load {name} --help` lists \
                 its options"
            ),
        ));
    }
    let mut args = LoadArgs::from_arg_matches(sub)?;
    args.scenario = scenario;
    Ok(args)
}

/// What every scenario shares: the target, the run's clock and limits, the counters the
/// progress bar reads, and the server processes to measure.
#[derive(Debug)]
struct Ctx {
    scenario: Scenario,
    timeout: u64,
    args: LoadOptions,
    deployment: Deployment,
    dialer: Arc<Dialer>,
    clock: Clock,
    /// The run ends by this time, whatever it is doing.
    deadline: Instant,
    live: Arc<Live>,
    /// Marks this run's messages.
    tag: String,
    servers: Option<ServerPids>,
}

impl Ctx {
    fn label(&self) -> String {
        self.args
            .label
            .clone()
            .unwrap_or_else(|| self.scenario.name().to_owned())
    }

    fn report(&self) -> Report {
        Report::new(
            self.scenario.name(),
            &self.deployment.base,
            self.args.label.as_deref(),
        )
    }

    /// Time left before the deadline, keeping `reserve` for reporting.
    fn until_deadline(&self, reserve: Duration) -> Instant {
        self.deadline.checked_sub(reserve).unwrap_or(self.deadline)
    }

    /// Sends --messages requests made by `make` at `rate` with --concurrency workers, stopping
    /// in time to let deliveries settle and the report be written.
    async fn send<F>(&self, rate: f64, make: F) -> publisher::Sent
    where
        F: Fn(u64, u64) -> publisher::Request + Send + Sync + 'static,
    {
        let plan = publisher::Plan {
            count: self.args.messages,
            rate,
            concurrency: self.args.concurrency,
            deadline: self.until_deadline(Duration::from_secs_f64(self.args.settle + 2.0)),
        };
        let http = self.deployment.http.clone();
        let base = self.deployment.base.clone();
        publisher::send(http, base, plan, self.clock, self.live.clone(), make).await
    }

    /// Prints the table, appends the JSON lines.
    fn publish(&self, report: &Report) -> anyhow::Result<()> {
        print!("{}", report.table());
        if let Some(path) = &self.args.json {
            report.append_json(path)?;
        }
        Ok(())
    }
}

/// Runs a scenario; an error means the run could not be made (or, for `tour`, that a promise of
/// the deployment did not hold). Measured figures are reported, not judged.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let limit = Duration::from_secs(args.timeout);
    if args.scenario == Scenario::Tour {
        return match tokio::time::timeout(limit, tour::run(&args.url, args.count)).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the run did not finish within {}s", args.timeout),
        };
    }
    stickyws::raise_open_files_limit();
    let url: reqwest::Url = args
        .url
        .parse()
        .with_context(|| format!("--url {}", args.url))?;
    let LoadArgs {
        scenario,
        timeout,
        options,
        ..
    } = args;
    let args = *options;
    let servers = ServerPids::resolve(&cpu::parse_pids(&args.server_pids)?, args.cluster_pid)?;
    if let Some(plots) = &args.plots {
        std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    }
    let ctx = Ctx {
        deployment: Deployment::new(url.as_str(), args.concurrency)?
            .with_api_key(args.api_key.clone()),
        dialer: Arc::new(
            Dialer::new(
                &url,
                args.source_addrs
                    .clone()
                    .or_else(|| SourceAddrs::first(args.source_ips)),
                Duration::from_secs(10),
            )
            .await?,
        ),
        clock: Clock::start(),
        deadline: Instant::now() + limit,
        live: Arc::new(Live {
            arrived: deliveries::Arrived::new(args.messages),
            ..Live::default()
        }),
        tag: deliveries::new_tag(),
        servers,
        scenario,
        timeout,
        args,
    };
    // Every stage watches the deadline itself; this outer bound (with a little room for the
    // report) only catches a stage that does not.
    let work = async {
        match ctx.scenario {
            Scenario::Tour => Ok(()),
            Scenario::Connect => connect::run(&ctx).await,
            Scenario::Targeted => targeted::run(&ctx).await,
            Scenario::Broadcast => broadcast::run(&ctx).await,
            Scenario::Sticky => sticky::run(&ctx).await,
            Scenario::Failover => failover::run(&ctx).await,
            Scenario::Channel => channel::run(&ctx).await,
            Scenario::Jitter => jitter::run(&ctx).await,
            Scenario::Avalanche => avalanche::run(&ctx).await,
        }
    };
    match tokio::time::timeout(limit + Duration::from_secs(10), work).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the run did not finish within {}s", ctx.timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_option() -> Vec<String> {
        LoadArgs::augment_args(clap::Command::new("all"))
            .get_arguments()
            .map(|arg| arg.get_id().to_string())
            .collect()
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn every_flag_a_scenario_names_is_an_option() {
        let options = every_option();
        for scenario in Scenario::value_variants() {
            for id in scenario
                .flags()
                .iter()
                .chain(COMMON_FLAGS)
                .chain(MEASURING_FLAGS)
            {
                assert!(
                    options.contains(&id.to_string()),
                    "{scenario:?}: no option {id}"
                );
            }
        }
    }

    /// A new option that no scenario lists would be hidden from every `--help` and refused.
    #[test]
    fn every_option_belongs_to_some_scenario() {
        for id in every_option() {
            assert!(
                Scenario::value_variants().iter().any(|s| s.takes(&id)),
                "--{id} is no scenario's: add it to Scenario::flags"
            );
        }
    }

    #[test]
    fn a_scenario_parses_its_own_flags_and_refuses_another_ones() {
        let parse = |argv: &[&str]| {
            let matches = command().try_get_matches_from(argv)?;
            from_matches(&matches)
        };
        let args = parse(&["load", "targeted", "--sockets", "7", "--api-key", "k"]).unwrap();
        assert_eq!(args.scenario, Scenario::Targeted);
        assert_eq!(args.options.sockets, 7);
        assert_eq!(args.options.api_key.as_deref(), Some("k"));
        let args = parse(&["load", "connect", "--source-addrs", "127.0.0.2-127.0.0.3"]).unwrap();
        assert_eq!(args.options.source_addrs.map(|s| s.addrs().len()), Some(2));
        let err = parse(&["load", "connect", "--source-addrs", "10.0.0.1"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("10.0.0.1 is not a loopback address"),
            "{err}"
        );
        let err = parse(&[
            "load",
            "connect",
            "--source-addrs",
            "127.0.0.2",
            "--source-ips",
            "2",
        ])
        .unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
        let err = parse(&["load", "tour", "--jitter-every", "3"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("--jitter-every is not an option of `tour`"),
            "{err}"
        );
    }
}
