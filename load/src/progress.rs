//! The progress bar on the terminal while a run goes on (hidden when stderr is not one): a
//! ticker copies a counter the run keeps into the bar ten times a second.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::{CancellationToken, DropGuard};

/// A bar being drawn; dropping it (or [`Progress::finish`]) clears it.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    _ticker: DropGuard,
}

impl Progress {
    /// A bar for `what` out of `total`, following `count()`; `detail()` is shown beside it.
    pub fn start<C, D>(what: &str, total: u64, count: C, detail: D) -> Progress
    where
        C: Fn() -> u64 + Send + Sync + 'static,
        D: Fn() -> String + Send + Sync + 'static,
    {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = format!(
            "{what:>10} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} ({{per_sec}}) {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        let stop = CancellationToken::new();
        let ticker_bar = bar.clone();
        let ticker_stop = stop.clone();
        let count = Arc::new(count);
        tokio::spawn(async move {
            loop {
                ticker_bar.set_position(count());
                ticker_bar.set_message(detail());
                tokio::select! {
                    () = ticker_stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Progress {
            bar,
            _ticker: stop.drop_guard(),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
