//! The progress bar of a run on a terminal: an ETA from the recent window rate, and log lines
//! written above the bar.
//!
//! Owns: [`bar`] (the bar of one run, or none when stderr is not a terminal: a log line per
//! chunk then), the ETA (windows still to load divided by the rate of the last
//! [`RATE_WINDOW`], so a backfill whose first chunks were fast or slow is not stuck on their
//! rate), and [`suspend`], which `telemetry`'s writer calls around every log line so the bar is
//! cleared first and redrawn after, never leaving a stale frame.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use super::Progress;

/// The rate behind the ETA is measured over this much of the recent past.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Every bar is drawn through this, so [`suspend`] can clear them all.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Runs `f` (writing a log line) with every progress bar cleared, then redraws them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    BARS.suspend(f)
}

/// The bar of a run of `len` windows of `job`, when `progress` allows one and stderr is a
/// terminal.
pub fn bar(progress: Progress, len: u64, job: &str) -> Option<ProgressBar> {
    if progress != Progress::Auto || !std::io::stderr().is_terminal() || len == 0 {
        return None;
    }
    let rate = RecentRate::default();
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:40}] {pos}/{len} windows {elapsed_precise} eta {eta}")
        .expect("valid template")
        .with_key("eta", move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let eta = rate.observe(state.elapsed(), state.pos(), state.len().unwrap_or(0));
            let _ = write!(w, "{}", eta.map_or("-".to_string(), short));
        })
        .progress_chars("=> ");
    let bar = BARS.add(ProgressBar::new(len).with_style(style).with_prefix(job.to_string()));
    Some(bar)
}

/// (elapsed, position) samples of one bar, oldest first.
#[derive(Clone, Default)]
struct RecentRate(Arc<Mutex<VecDeque<(Duration, u64)>>>);

impl RecentRate {
    /// Records the bar's position at `elapsed` and returns the time the `len - pos` windows
    /// left take at the rate of the last [`RATE_WINDOW`] (None before any window finished).
    fn observe(&self, elapsed: Duration, pos: u64, len: u64) -> Option<Duration> {
        let mut samples = self.0.lock().expect("rate lock");
        if samples.back().is_none_or(|&(_, p)| p != pos) {
            samples.push_back((elapsed, pos));
        }
        // Keep one sample at least RATE_WINDOW old as the anchor of the rate, none older.
        while samples.len() > 2 && elapsed.saturating_sub(samples[1].0) >= RATE_WINDOW {
            samples.pop_front();
        }
        let &(t0, p0) = samples.front()?;
        let (dt, done) = (elapsed.saturating_sub(t0).as_secs_f64(), pos.saturating_sub(p0));
        if done == 0 || dt <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(len.saturating_sub(pos) as f64 * dt / done as f64))
    }
}

/// `45s`, `3m07s`, `2h05m`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_eta_follows_the_recent_rate_not_the_first_chunks() {
        let rate = RecentRate::default();
        assert_eq!(rate.observe(secs(0), 0, 365), None, "nothing done yet");
        // Four quick windows in the first second, then one window every 6 s.
        assert_eq!(rate.observe(secs(1), 4, 365), Some(Duration::from_secs_f64(361.0 / 4.0)));
        let mut last = None;
        for (i, t) in (7..=127).step_by(6).enumerate() {
            last = rate.observe(secs(t), 5 + i as u64, 365);
        }
        // At 127 s, 25 done: the last 30 s saw 5 windows, so 340 left take 340 * 6 s.
        assert_eq!(last, Some(secs(340 * 6)));
        // The rate picks up: 10 windows in the next 6 s.
        assert!(rate.observe(secs(133), 35, 365).unwrap() < secs(340 * 6));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short(secs(45)), "45s");
        assert_eq!(short(secs(187)), "3m07s");
        assert_eq!(short(secs(7500)), "2h05m");
    }
}
