//! Progress of long work in the terminal: a bar (indicatif) when stderr is
//! a terminal, a plain line every few seconds when it is not (a pipe, a
//! log file, CI), so logs stay readable and nothing redraws into them.
//! `PGFANOUT_PROGRESS=lines` asks for the lines on a terminal too.

use std::io::IsTerminal;
use std::ops::Not;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress of one job counted in `unit`s (rows), against an optional
/// estimated total.
pub struct Progress {
    what: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
    /// The count at the first update (a resumed job's earlier work): the
    /// rate counts from there.
    first: Option<u64>,
    done: u64,
    total: Option<u64>,
}

/// Whether progress is drawn as bars: stderr is a terminal and
/// `PGFANOUT_PROGRESS` is not `lines`.
pub fn bars_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var("PGFANOUT_PROGRESS").is_ok_and(|v| v == "lines").not()
}

/// Set when the log subscriber draws progress bars of spans (a terminal):
/// the daemon's snapshot then shows one (`tracing-indicatif`).
pub static BARS_IN_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Progress {
    pub fn new(what: impl Into<String>, unit: &'static str) -> Progress {
        let what = what.into();
        let bar = bars_wanted().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_message(what.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let mut p = Progress { what, unit, bar, started: Instant::now(), last_line: None, first: None, done: 0, total: None };
        p.restyle();
        p
    }

    fn restyle(&mut self) {
        let Some(bar) = &self.bar else { return };
        let template = match self.total {
            Some(_) => "{msg} [{bar:30}] {human_pos}/~{human_len} UNIT ({percent}%) · {per_sec} · ETA {eta}",
            None => "{msg} {spinner} {human_pos} UNIT · {per_sec}",
        };
        if let Ok(style) = ProgressStyle::with_template(&template.replace("UNIT", self.unit)) {
            bar.set_style(style.progress_chars("=> "));
        }
    }

    /// `done` so far, and the total when known (an estimate).
    pub fn set(&mut self, done: u64, total: Option<u64>) {
        self.first.get_or_insert(done);
        self.done = done;
        if let Some(t) = total.filter(|&t| t > 0) {
            let had = self.total.is_some();
            self.total = Some(t.max(done));
            if !had {
                self.restyle();
            }
        }
        match &self.bar {
            Some(bar) => {
                if let Some(t) = self.total {
                    bar.set_length(t.max(done));
                }
                bar.set_position(done);
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
                    self.last_line = Some(Instant::now());
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// The plain line: `what: 12000 of ~60000 rows (20%), 1000 rows/s, ETA 48s`.
    pub fn line(&self) -> String {
        self.line_after(self.started.elapsed())
    }

    fn line_after(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = (secs > 0.5).then(|| self.done.saturating_sub(self.first.unwrap_or(0)) as f64 / secs);
        let mut s = format!("{}: {} ", self.what, self.done);
        if let Some(t) = self.total {
            s += &format!("of ~{t} {} ({:.0}%)", self.unit, 100.0 * self.done as f64 / t.max(1) as f64);
        } else {
            s += self.unit;
        }
        if let Some(r) = rate {
            s += &format!(", {r:.0} {}/s", self.unit);
            if let (Some(t), true) = (self.total, r > 0.0) {
                s += &format!(", ETA {}s", (t.saturating_sub(self.done) as f64 / r).round());
            }
        }
        s
    }

    /// The job ended with `outcome` (e.g. "done"): the bar is cleared and
    /// one line says how it ended.
    pub fn finish(&mut self, outcome: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{}: {outcome}, {} {} in {:.1}s", self.what, self.done, self.unit, self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_says_count_total_rate_and_eta() {
        let mut p = Progress {
            what: "backfill 3 public.t".into(),
            unit: "rows",
            bar: None,
            started: Instant::now(),
            last_line: None,
            first: None,
            done: 0,
            total: None,
        };
        p.first = Some(0);
        p.done = 1000;
        p.total = Some(5000);
        let ten = Duration::from_secs(10);
        assert_eq!(p.line_after(ten), "backfill 3 public.t: 1000 of ~5000 rows (20%), 100 rows/s, ETA 40s");
        p.total = None;
        assert_eq!(p.line_after(ten), "backfill 3 public.t: 1000 rows, 100 rows/s");
    }
}
