//! The `stickyws` command: parses the subcommand and hands it to the library; `load` is a
//! program of its own (the `stickyws-load` crate), which this one runs in its place. A failure
//! ends the process with one `error: …` line on stderr (the cause chain, joined), whatever
//! `RUST_BACKTRACE` says: configuration and start-up errors are for the person at the terminal,
//! not a debugger.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// Serve the fault drills for a docker compose project (docker/compose.drills.yml), acting
    /// on its containers through the Docker socket; needs DRILLS_TOKEN.
    DrillsDocker(stickyws::ops::docker_drills::DockerDrillsArgs),
    /// Drive traffic against a running deployment and report (or check) what it does.
    ///
    /// Runs the `stickyws-load` program beside this one; `stickyws load --help` lists the
    /// scenarios, `stickyws load <scenario> --help` the flags of one.
    // Every argument, `--help` included, is the load tool's to read.
    #[command(disable_help_flag = true)]
    Load {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Bad flags and `--help` are clap's to print (exit code 2, or 0), before anything runs.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", stickyws::telemetry::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The load tool sets up its own diagnostics.
    if !matches!(cli.command, Command::Load { .. }) {
        stickyws::telemetry::init_stderr();
    }
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
        Command::DrillsDocker(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(stickyws::ops::docker_drills::run(args)),
        Command::Load { args } => forward_to_load(args),
    }
}

/// The load tool's binary, installed beside this one (cargo builds both into one folder).
const LOAD_BIN: &str = "stickyws-load";

/// Replaces this process with `stickyws-load <args>`, so its exit code and signals are the
/// caller's directly. Returns only when it cannot be started.
fn forward_to_load(args: Vec<OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().context("finding the stickyws executable")?;
    let dir = me
        .parent()
        .context("the stickyws executable has no folder")?;
    let load = dir.join(LOAD_BIN);
    let err = std::process::Command::new(&load).args(args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::bail!(
            "{} is missing; build it with `cargo build -p stickyws-load` (add --release for a \
             release build)",
            load.display()
        );
    }
    Err(err).with_context(|| format!("starting {}", load.display()))
}
