//! The progress bar `swarmkv bench` draws on stderr while it connects, preloads and runs,
//! only when stderr is a terminal: a run file (`> r1-put-c64.txt 2>&1`) or a pipe gets the
//! results and nothing else.
//!
//! The clients do not touch the bar on their hot path: they bump an atomic counter, and a
//! ticker task copies it into the bar five times a second.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the bar is redrawn from the counter.
const TICK: Duration = Duration::from_millis(200);

/// One phase's progress: a counter the workers bump, and the bar that shows it (if any).
pub struct Phase {
    done: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
    ticker: Option<JoinHandle<()>>,
}

impl Phase {
    /// Starts a phase named `name` of `len` steps; draws a bar only if stderr is a terminal.
    pub fn start(name: &str, len: u64) -> Phase {
        let done = Arc::new(AtomicU64::new(0));
        if !std::io::stderr().is_terminal() {
            return Phase {
                done,
                bar: None,
                ticker: None,
            };
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TICK);
                loop {
                    every.tick().await;
                    bar.set_position(done.load(Ordering::Relaxed));
                }
            })
        };
        Phase {
            done,
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    /// The counter the workers add their finished steps to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
