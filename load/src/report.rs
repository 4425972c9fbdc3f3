//! What a run found, after the run: latency percentiles from every raw sample, errors counted by
//! kind, and one [`Report`] that prints as a table for people and as JSON lines for machines.
//! Collecting happens elsewhere (the scenarios and [`crate::deliveries`]); nothing here measures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value, json};

/// Latency samples in microseconds, summarized once the run is over.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Sorted ascending by [`Latencies::finish`].
    micros: Vec<u32>,
}

impl Latencies {
    pub fn from_micros(mut micros: Vec<u32>) -> Self {
        micros.sort_unstable();
        Self { micros }
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The sorted samples (for the CDF plot).
    pub fn sorted(&self) -> &[u32] {
        &self.micros
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest-rank; None without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let rank = (q * self.micros.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.micros.len()) - 1;
        Some(f64::from(self.micros[index]) / 1000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let sum: u64 = self.micros.iter().map(|&m| u64::from(m)).sum();
        Some(sum as f64 / self.micros.len() as f64 / 1000.0)
    }

    /// `p50 1.20 ms  p90 …  p99 …  max …` for the table.
    pub fn line(&self) -> String {
        if self.micros.is_empty() {
            return "no samples".to_owned();
        }
        let q = |q| ms(self.quantile_ms(q));
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            self.micros.len()
        )
    }

    /// `{"samples", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"}` for JSON lines.
    pub fn json(&self) -> Value {
        json!({
            "samples": self.micros.len(),
            "p50_ms": self.quantile_ms(0.5),
            "p90_ms": self.quantile_ms(0.9),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": self.quantile_ms(1.0),
            "mean_ms": self.mean_ms(),
        })
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "-".to_owned(),
    }
}

/// Failures counted by kind (`timeout`, `http_503`, `refused`, …), in name order.
#[derive(Debug, Clone, Default)]
pub struct Errors {
    kinds: BTreeMap<String, u64>,
}

impl Errors {
    pub fn add(&mut self, kind: &str) {
        *self.kinds.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Errors) {
        for (kind, n) in &other.kinds {
            *self.kinds.entry(kind.clone()).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.kinds.values().sum()
    }

    pub fn line(&self) -> String {
        if self.kinds.is_empty() {
            return "none".to_owned();
        }
        self.kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn json(&self) -> Value {
        Value::Object(
            self.kinds
                .iter()
                .map(|(k, n)| (k.clone(), json!(n)))
                .collect(),
        )
    }
}

/// One finished run: rows for the table and the same figures as JSON.
#[derive(Debug)]
pub struct Report {
    /// Heading line: scenario, target, label.
    title: String,
    rows: Vec<(String, String)>,
    /// The `summary` JSON line.
    summary: Map<String, Value>,
    /// Further JSON lines (`replica`, `second`, …), each with its own `type`.
    lines: Vec<Value>,
}

impl Report {
    pub fn new(scenario: &str, url: &str, label: Option<&str>) -> Self {
        let mut summary = Map::new();
        summary.insert("type".to_owned(), json!("summary"));
        summary.insert("scenario".to_owned(), json!(scenario));
        summary.insert("url".to_owned(), json!(url));
        summary.insert("label".to_owned(), json!(label));
        let title = match label {
            Some(label) => format!("stickyws load {scenario} → {url} [{label}]"),
            None => format!("stickyws load {scenario} → {url}"),
        };
        Self {
            title,
            rows: Vec::new(),
            summary,
            lines: Vec::new(),
        }
    }

    /// A table row.
    pub fn row(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    /// A figure of the summary JSON line.
    pub fn figure(&mut self, key: &str, value: impl Into<Value>) {
        self.summary.insert(key.to_owned(), value.into());
    }

    /// A JSON line of its own; `kind` becomes its `type`.
    pub fn line(&mut self, kind: &str, mut value: Value) {
        if let Value::Object(map) = &mut value {
            map.insert("type".to_owned(), json!(kind));
            if let Some(label) = self.summary.get("label") {
                map.insert("label".to_owned(), label.clone());
            }
            if let Some(scenario) = self.summary.get("scenario") {
                map.insert("scenario".to_owned(), scenario.clone());
            }
        }
        self.lines.push(value);
    }

    /// The table, for the terminal.
    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (name, value) in &self.rows {
            let _ = writeln!(out, "  {name:<width$}  {value}");
        }
        out
    }

    /// Appends the summary line and every other line to `path` (several runs can share a file).
    pub fn append_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        text.push_str(&Value::Object(self.summary.clone()).to_string());
        text.push('\n');
        for line in &self.lines {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// A rate as `1234/s`.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// A ratio as a percentage with one decimal.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

/// The kind of an I/O failure, as the report counts it.
pub fn io_kind(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // EMFILE / ENFILE have no ErrorKind of their own.
    if matches!(err.raw_os_error(), Some(24 | 23)) {
        return "too_many_open_files".to_owned();
    }
    match err.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset => "reset",
        ErrorKind::ConnectionAborted => "aborted",
        ErrorKind::AddrNotAvailable => "addr_unavailable",
        ErrorKind::AddrInUse => "addr_in_use",
        ErrorKind::TimedOut => "timeout",
        ErrorKind::UnexpectedEof => "closed",
        ErrorKind::BrokenPipe => "broken_pipe",
        _ => "io",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_over_every_sample() {
        let l = Latencies::from_micros((1..=100).rev().map(|i| i * 1000).collect());
        assert_eq!(l.quantile_ms(0.5), Some(50.0));
        assert_eq!(l.quantile_ms(0.99), Some(99.0));
        assert_eq!(l.quantile_ms(1.0), Some(100.0));
        assert_eq!(l.quantile_ms(0.0), Some(1.0));
        assert_eq!(Latencies::default().quantile_ms(0.5), None);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut e = Errors::default();
        e.add("timeout");
        e.add("http_503");
        e.add("timeout");
        assert_eq!(e.total(), 3);
        assert_eq!(e.line(), "http_503 1, timeout 2");
    }

    #[test]
    fn json_lines_carry_type_label_and_scenario() {
        let mut r = Report::new("targeted", "http://127.0.0.1:1", Some("x"));
        r.figure("lost", 0);
        r.line("second", json!({"t": 1}));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        r.append_json(&path).unwrap();
        r.append_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["type"], "summary");
        assert_eq!(lines[0]["lost"], 0);
        assert_eq!(lines[1]["type"], "second");
        assert_eq!(lines[1]["label"], "x");
        assert_eq!(lines[1]["scenario"], "targeted");
    }
}
