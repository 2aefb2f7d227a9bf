//! Samples, medians and the markdown tables `sf-compare` prints.

use std::fmt::Write as _;

/// The samples of one contender in one scenario, in one unit.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// The median (the mean of the middle two for an even count); NaN if empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight_bench::report::Samples;
    /// assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), 2.0);
    /// assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
    /// ```
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The smallest sample; NaN if empty.
    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::min)
    }

    /// The largest sample; NaN if empty.
    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// One scenario's results: a row per contender.
#[derive(Debug)]
pub struct Table {
    /// What was measured, e.g. `distinct keys, 1 thread`.
    pub title: String,
    /// The unit of every sample, e.g. `ns/op`.
    pub unit: &'static str,
    /// Contender name and its samples, in the order they ran.
    pub rows: Vec<(String, Samples)>,
    /// Subtracted from every figure before it is shown and compared (the
    /// herds' work time), so ratios compare the overhead.
    pub minus: f64,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>, unit: &'static str, names: &[&str]) -> Self {
        Self {
            title: title.into(),
            unit,
            rows: names
                .iter()
                .map(|n| ((*n).to_string(), Samples::default()))
                .collect(),
            minus: 0.0,
        }
    }

    /// Adds a sample to contender `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not one of the table's contenders (a bug in the runner).
    pub fn push(&mut self, name: &str, sample: f64) {
        let row = self
            .rows
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no contender {name} in table {}", self.title));
        row.1.0.push(sample);
    }

    /// The median of contender `name`, minus [`Table::minus`]; NaN if absent.
    pub fn median(&self, name: &str) -> f64 {
        self.rows
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, s)| s.median() - self.minus)
    }

    /// The table in markdown; the ratio column is against `reference`.
    pub fn markdown(&self, reference: &str) -> String {
        let mut out = String::new();
        let minus = if self.minus > 0.0 {
            format!(", minus {} of work", fmt_value(self.minus, self.unit))
        } else {
            String::new()
        };
        let _ = writeln!(out, "### {}\n", self.title);
        let _ = writeln!(
            out,
            "| contender | median ({}{minus}) | min | max | samples | x {reference} |",
            self.unit
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let base = self.median(reference);
        for (name, s) in &self.rows {
            let m = s.median() - self.minus;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {:.2} |",
                fmt_value(m, self.unit),
                fmt_value(s.min() - self.minus, self.unit),
                fmt_value(s.max() - self.minus, self.unit),
                s.0.len(),
                m / base
            );
        }
        out
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ms/round" | "ms" => format!("{v:.3}"),
        _ => format!("{v:.1}"),
    }
}

/// One target, checked against measured medians.
#[derive(Debug)]
pub struct Target {
    /// The target as it is worded.
    pub what: String,
    /// Measured ratio.
    pub ratio: f64,
    /// Largest ratio that meets the target.
    pub limit: f64,
    /// The two figures the ratio divides, for the reader.
    pub detail: String,
}

impl Target {
    /// A target comparing `ours` to `other` (ratio `ours / other <= limit`).
    pub fn ratio(what: &str, ours: f64, other: f64, limit: f64, unit: &str) -> Self {
        Self {
            what: what.to_string(),
            ratio: ours / other,
            limit,
            detail: format!("{ours:.3} / {other:.3} {unit}"),
        }
    }

    /// Whether the measured ratio meets the target.
    pub fn met(&self) -> bool {
        self.ratio <= self.limit
    }
}

/// The targets as a markdown table.
pub fn targets_markdown(title: &str, targets: &[Target]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(out, "| target | measured | ratio | limit | met |");
    let _ = writeln!(out, "|---|---|---:|---:|---|");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} |",
            t.what,
            t.detail,
            t.ratio,
            t.limit,
            if t.met() { "yes" } else { "**no**" }
        );
    }
    out
}
