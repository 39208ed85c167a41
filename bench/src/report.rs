//! Figures collected over several runs, and how they are printed: one text
//! table (median and min–max of each figure, next to its baseline and the
//! ratio) and the same data as JSON for tracking over time.
//!
//! Each run measures pgfanout and its baseline back to back on the same data,
//! so the ratio is computed per run and its median reported: on a shared,
//! noisy machine a paired ratio is steadier than a ratio of medians.

use serde::Serialize;

/// Whether a bigger value is better (throughput) or a smaller one (latency,
/// CPU, memory); decides how the goal is checked.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A goal a figure must meet: on its own value, or on its ratio to the baseline.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The median value must be at most this.
    AtMost(f64),
    /// The median ratio to the baseline must be at least this.
    RatioAtLeast(f64),
    /// The median ratio to the baseline must be at most this.
    RatioAtMost(f64),
}

/// One measured quantity of one workload, with every run's values.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub pgfanout: Vec<f64>,
    /// The baseline's values, run by run (same length as `pgfanout` when present).
    pub baseline: Vec<f64>,
    pub baseline_name: Option<String>,
    pub goal: Option<Goal>,
    /// Set instead of values when the figure could not be measured ("n/a").
    pub note: Option<String>,
}

impl Figure {
    pub fn new(workload: &str, metric: &str, unit: &str, better: Better) -> Figure {
        Figure {
            workload: workload.into(),
            metric: metric.into(),
            unit: unit.into(),
            better,
            pgfanout: Vec::new(),
            baseline: Vec::new(),
            baseline_name: None,
            goal: None,
            note: None,
        }
    }

    pub fn with_baseline(mut self, name: &str) -> Figure {
        self.baseline_name = Some(name.into());
        self
    }

    pub fn with_goal(mut self, goal: Goal) -> Figure {
        self.goal = Some(goal);
        self
    }

    /// Per-run ratios pgfanout / baseline (runs where both exist).
    pub fn ratios(&self) -> Vec<f64> {
        self.pgfanout.iter().zip(&self.baseline).filter(|(_, b)| **b > 0.0).map(|(p, b)| p / b).collect()
    }

    /// True/false when a goal is set and there are values; None otherwise.
    pub fn meets_goal(&self) -> Option<bool> {
        match self.goal? {
            Goal::AtMost(max) => Some(Summary::of(&self.pgfanout)?.median <= max),
            Goal::RatioAtLeast(min) => Some(Summary::of(&self.ratios())?.median >= min),
            Goal::RatioAtMost(max) => Some(Summary::of(&self.ratios())?.median <= max),
        }
    }
}

/// Median and spread of a list of values.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// None for an empty list. The median of an even count is the mean of
    /// the two middle values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Summary { median, min: v[0], max: v[n - 1] })
    }
}

/// Formats a number with 3 significant digits and thousands separators.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = if let Some(d) = s.strip_prefix('-') { ("-", d) } else { ("", s.as_str()) };
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(values: &[f64]) -> String {
    match Summary::of(values) {
        None => "n/a".into(),
        Some(s) if values.len() == 1 => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

fn goal_text(f: &Figure) -> String {
    let Some(goal) = f.goal else { return String::new() };
    let text = match goal {
        Goal::AtMost(v) => format!("≤ {} {}", num(v), f.unit),
        Goal::RatioAtLeast(r) => format!("ratio ≥ {r:.1}"),
        Goal::RatioAtMost(r) => format!("ratio ≤ {r:.1}"),
    };
    match f.meets_goal() {
        Some(true) => format!("{text} ok"),
        Some(false) => format!("{text} MISSED"),
        None => text,
    }
}

/// The table, as Markdown (readable in a terminal and pasteable into the README).
pub fn table(figures: &[Figure], runs: usize) -> String {
    let header = [
        "workload".to_string(),
        "figure".to_string(),
        format!("pgfanout, median (min–max of {runs})"),
        "baseline, median (min–max)".to_string(),
        "ratio".to_string(),
        "goal".to_string(),
    ];
    let mut rows: Vec<[String; 6]> = Vec::new();
    for f in figures {
        let (pgf, base, ratio) = if let Some(note) = &f.note {
            (note.clone(), String::new(), String::new())
        } else {
            let base = match &f.baseline_name {
                Some(name) if !f.baseline.is_empty() => format!("{}: {}", name, cell(&f.baseline)),
                _ => String::new(),
            };
            let ratios = f.ratios();
            let ratio = if ratios.is_empty() { String::new() } else { format!("{}×", cell(&ratios)) };
            (cell(&f.pgfanout), base, ratio)
        };
        rows.push([f.workload.clone(), format!("{} ({})", f.metric, f.unit), pgf, base, ratio, goal_text(f)]);
    }
    let mut widths = header.iter().map(|h| h.chars().count()).collect::<Vec<_>>();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("| {} |\n", parts.join(" | "))
    };
    let mut out = line(&header);
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// Everything as JSON: settings, per-run values, summaries, ratios, goals.
pub fn json(figures: &[Figure], settings: serde_json::Value) -> serde_json::Value {
    let figs: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| {
            serde_json::json!({
                "workload": f.workload,
                "metric": f.metric,
                "unit": f.unit,
                "better": f.better,
                "pgfanout": { "runs": f.pgfanout, "summary": Summary::of(&f.pgfanout) },
                "baseline": f.baseline_name.as_ref().map(|n| serde_json::json!({
                    "name": n, "runs": f.baseline, "summary": Summary::of(&f.baseline) })),
                "ratio": { "runs": f.ratios(), "summary": Summary::of(&f.ratios()) },
                "goal": f.goal,
                "meets_goal": f.meets_goal(),
                "note": f.note,
            })
        })
        .collect();
    serde_json::json!({ "settings": settings, "figures": figs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(-1234.0), "-1,234");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(0.01234), "0.012");
    }

    #[test]
    fn ratio_goal_uses_paired_runs() {
        let mut f = Figure::new("w", "rows/s", "rows/s", Better::Higher).with_baseline("b").with_goal(Goal::RatioAtLeast(1.0));
        f.pgfanout = vec![100.0, 90.0, 120.0];
        f.baseline = vec![100.0, 100.0, 100.0];
        assert_eq!(f.ratios(), vec![1.0, 0.9, 1.2]);
        assert_eq!(f.meets_goal(), Some(true));
        let t = table(&[f], 3);
        assert!(t.contains("1.00 (0.900–1.20)×"), "{t}");
    }
}
