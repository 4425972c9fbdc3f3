//! Diagnostics for operators, through `tracing` (the records log is a separate thing, for people
//! following the demo). The subscriber takes its writer so tests can silence it.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber: `RUST_LOG` if set, otherwise info for this crate.
pub fn init<W>(writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("stickyws=info,warn"));
    // A second init (tests, or a library user who set their own) is not an error worth stopping for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .try_init();
}
