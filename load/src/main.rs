//! The `stickyws-load` command: parses the scenario and its flags and runs it. `stickyws load …`
//! forwards here with its arguments unchanged.

use clap::Parser;
use stickyws_load::LoadArgs;

#[derive(Debug, Parser)]
#[command(
    name = "stickyws-load",
    bin_name = "stickyws load",
    version,
    about = "Drive traffic against a running deployment and report (or check) what it does"
)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stickyws::telemetry::init(std::io::stderr);
    tokio::runtime::Runtime::new()?.block_on(stickyws_load::run(cli.args))
}
