//! The `stickyws-load` command: parses the scenario and its flags and runs it. `stickyws load …`
//! forwards here with its arguments unchanged. A failed run (or a broken promise of `tour`)
//! ends with one `error: …` line and exit code 1.

use std::process::ExitCode;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    stickyws::telemetry::init_stderr();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(stickyws_load::run(cli.args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", stickyws::telemetry::one_line(&err));
            ExitCode::FAILURE
        }
    }
}
