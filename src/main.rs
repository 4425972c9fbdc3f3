//! The `stickyws` command: parses the subcommand and hands it to the library.

use clap::{Parser, Subcommand};
use stickyws::load::LoadArgs;
use stickyws::ops::cluster::ClusterArgs;
use stickyws::{Config, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "stickyws",
    version,
    about = "WebSocket fan-out behind nginx and Redis, and a sticky-session demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one replica (configured from the environment; flags mirror it).
    Serve(Box<ServeArgs>),
    /// Run the local demo: redis-server, N replicas and nginx on loopback.
    Cluster(ClusterArgs),
    /// Drive traffic against a running deployment and report (or check) what it does.
    Load(LoadArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stickyws::telemetry::init(std::io::stderr);
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(*args)?;
            stickyws::runtime(&config)?.block_on(stickyws::serve(config))
        }
        // One thread: children are spawned from it, and their parent-death signal follows
        // the thread that spawned them.
        Command::Cluster(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(stickyws::ops::cluster::run(args)),
        Command::Load(args) => tokio::runtime::Runtime::new()?.block_on(stickyws::load::run(args)),
    }
}
