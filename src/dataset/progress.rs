//! A sweep's progress on the terminal: on a TTY, a bar over the shard's runs and one over
//! each recording's intervals; otherwise one log line per run, on stderr.

use super::grid::Run;
use super::sweep::{outcome_line, Event, Observer};
use crate::record::Progress;
use crate::trace::IntervalRow;
use crate::units::MIB;
use indicatif::{MultiProgress, ProgressBar, ProgressFinish, ProgressStyle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Shows a sweep on stderr.
pub struct ConsoleObserver {
    /// The bars, on a TTY.
    bars: Option<(MultiProgress, ProgressBar)>,
    total: AtomicUsize,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl ConsoleObserver {
    /// Bars when `tty`, log lines otherwise.
    pub fn new(tty: bool) -> ConsoleObserver {
        let bars = tty.then(|| {
            let multi = MultiProgress::new();
            let runs = multi.add(ProgressBar::new(0));
            runs.set_style(style("runs {pos}/{len} [{elapsed_precise}] {wide_bar} {msg}"));
            runs.enable_steady_tick(Duration::from_millis(200));
            (multi, runs)
        });
        ConsoleObserver { bars, total: AtomicUsize::new(0) }
    }

    fn log(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        if let Some((_, runs)) = &self.bars {
            runs.finish_and_clear();
        }
    }
}

impl Observer for ConsoleObserver {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Start { grid_runs, shard_runs } => {
                self.total.store(shard_runs, Ordering::SeqCst);
                if let Some((_, runs)) = &self.bars {
                    runs.set_length(shard_runs as u64);
                }
                self.log(&format!("sweep: {shard_runs} of the grid's {grid_runs} runs in this shard"));
            }
            Event::Begin { run, .. } => {
                if let Some((_, runs)) = &self.bars {
                    runs.set_message(run.name.clone());
                }
            }
            Event::End { outcome, done } => {
                if let Some((_, runs)) = &self.bars {
                    runs.set_position(done as u64);
                }
                self.log(&outcome_line(outcome, done, self.total.load(Ordering::SeqCst)));
            }
            Event::IndexFailed { error } => self.log(&format!("index: {error}")),
        }
    }

    fn run_progress(&self, run: &Run, expected: Option<Duration>) -> Option<Progress> {
        let (multi, _) = self.bars.as_ref()?;
        let bar = match expected {
            Some(d) => ProgressBar::new(d.as_millis() as u64),
            None => ProgressBar::no_length(),
        }
        .with_finish(ProgressFinish::AndClear);
        let bar = multi.add(bar);
        bar.set_style(style("  {prefix} [{elapsed_precise}] {wide_bar} {msg}"));
        bar.set_prefix(run.name.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(Box::new(move |row: &IntervalRow| {
            bar.set_position((row.t_end_s * 1e3) as u64);
            bar.set_message(format!(
                "{} intervals, {:.1} MiB/s",
                row.interval + 1,
                row.dirty_rate_bytes_per_s / MIB as f64
            ));
        }))
    }
}
