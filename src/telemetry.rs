//! Diagnostics for operators, through `tracing` (the records log is a separate thing, for people
//! following the demo), and the one-line form a fatal error is printed in. The subscriber takes
//! its writer so tests can silence it; colour is the caller's call, since only it knows whether
//! the writer ends at a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber: `RUST_LOG` if set, otherwise info for this crate; ANSI
/// colours only when `ansi` says so.
pub fn init<W>(writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("stickyws=info,warn"));
    // A second init (tests, or a library user who set their own) is not an error worth stopping for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// [`init`] on stderr, coloured only when stderr is a terminal and `NO_COLOR` is unset: a log
/// file (the cluster's per-process logs, a container's log, `2> file`) stays plain text.
pub fn init_stderr() {
    init(std::io::stderr, colour_stderr());
}

fn colour_stderr() -> bool {
    // https://no-color.org: any non-empty value turns colour off.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// An error and its causes on one line (`outer: inner: root`), newlines inside a message
/// folded into spaces, so a fatal error is one line in a terminal or a log.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for (i, cause) in err.chain().enumerate() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        // A context that repeats its cause's text (`format!("{err}")` wrapped again) says it once.
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if i > 0 && !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_is_printed_on_one_line() {
        let err = anyhow::anyhow!("Address already in use\n(os error 98)")
            .context("binding 127.0.0.1:8000")
            .context("starting app-1");
        assert_eq!(
            one_line(&err),
            "starting app-1: binding 127.0.0.1:8000: Address already in use (os error 98)"
        );
    }

    #[test]
    fn a_cause_repeated_by_its_context_is_said_once() {
        let err = anyhow::anyhow!("port 8000 is in use").context("port 8000 is in use");
        assert_eq!(one_line(&err), "port 8000 is in use");
    }
}
