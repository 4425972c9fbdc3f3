//! The `stickyws-load` command: parses the scenario and its flags and runs it. `stickyws load …`
//! forwards here with its arguments unchanged. A failed run (or a broken promise of `tour`)
//! ends with one `error: …` line and exit code 1.

use std::process::ExitCode;

use stickyws_load::{command, from_matches};

fn main() -> ExitCode {
    let matches = command().get_matches();
    let args = from_matches(&matches).unwrap_or_else(|err| err.exit());
    stickyws::telemetry::init_stderr();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(stickyws_load::run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", stickyws::telemetry::one_line(&err));
            ExitCode::FAILURE
        }
    }
}
