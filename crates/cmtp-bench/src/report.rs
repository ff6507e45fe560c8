//! Results: named numbers per run, latency percentiles, the median of
//! repeated runs, the printed table and the JSON file.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::procfs::Machine;

/// One number of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

/// The numbers of one run, in the order they are printed.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Run {
    pub(crate) metrics: Vec<Metric>,
    /// Things worth saying that are not numbers (first errors, ...).
    pub(crate) notes: Vec<String>,
}

impl Run {
    pub(crate) fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
            unit,
        });
    }

    /// Adds p50, p99 and max of `samples` as `<prefix>_p50_ms` etc.
    pub(crate) fn add_latency(&mut self, prefix: &str, samples: &mut [Duration]) {
        let l = Latency::of(samples);
        self.add(&format!("{prefix}_p50"), l.p50, "ms");
        self.add(&format!("{prefix}_p99"), l.p99, "ms");
        self.add(&format!("{prefix}_max"), l.max, "ms");
    }

    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    pub(crate) fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Latency {
            p50: ms(samples[rank(samples.len(), 0.50)]),
            p99: ms(samples[rank(samples.len(), 0.99)]),
            max: ms(samples[samples.len() - 1]),
        }
    }
}

/// Index of the nearest-rank `q` percentile among `n` sorted samples.
fn rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Formats a number for the table: no more digits than it deserves.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Every run of one scenario, with its parameters.
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) params: Value,
    pub(crate) runs: Vec<Run>,
}

impl Report {
    /// Per metric: (name, unit, median, min, max) over the runs.
    fn summary(&self) -> Vec<(String, &'static str, f64, f64, f64)> {
        let Some(first) = self.runs.first() else {
            return Vec::new();
        };
        first
            .metrics
            .iter()
            .map(|m| {
                let mut values: Vec<f64> =
                    self.runs.iter().filter_map(|r| r.get(&m.name)).collect();
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (m.name.clone(), m.unit, median(&mut values), min, max)
            })
            .collect()
    }

    /// The table: one column per run, then the median and the spread.
    pub(crate) fn print(&self) {
        println!();
        println!("cmtp-bench {}  {}", self.scenario, self.params);
        let runs = self.runs.len();
        let mut header = format!("{:<28} {:>6}", "metric", "unit");
        if runs > 1 {
            for i in 0..runs {
                header.push_str(&format!(" {:>10}", format!("run {}", i + 1)));
            }
            header.push_str(&format!(" {:>10} {:>10}", "median", "spread"));
        } else {
            header.push_str(&format!(" {:>10}", "value"));
        }
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for (name, unit, med, min, max) in self.summary() {
            let mut line = format!("{name:<28} {unit:>6}");
            if runs > 1 {
                for r in &self.runs {
                    line.push_str(&format!(" {:>10}", r.get(&name).map_or("-".into(), fmt)));
                }
                let spread = if med != 0.0 {
                    format!("±{:.0}%", (max - min) / 2.0 / med.abs() * 100.0)
                } else {
                    "-".into()
                };
                line.push_str(&format!(" {:>10} {:>10}", fmt(med), spread));
            } else {
                line.push_str(&format!(" {:>10}", fmt(med)));
            }
            println!("{line}");
        }
        for (i, r) in self.runs.iter().enumerate() {
            for n in &r.notes {
                println!("note (run {}): {n}", i + 1);
            }
        }
    }

    /// The JSON form: parameters, the machine, every run, and per metric
    /// the median, min and max.
    pub(crate) fn to_json(&self, machine: &Machine) -> Value {
        let mut median = Map::new();
        let mut min = Map::new();
        let mut max = Map::new();
        let mut units = Map::new();
        for (name, unit, med, lo, hi) in self.summary() {
            median.insert(name.clone(), json!(med));
            min.insert(name.clone(), json!(lo));
            max.insert(name.clone(), json!(hi));
            units.insert(name, json!(unit));
        }
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for metric in &r.metrics {
                    m.insert(metric.name.clone(), json!(metric.value));
                }
                json!({ "metrics": m, "notes": r.notes })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "machine": machine,
            "units": units,
            "runs": runs,
            "median": median,
            "min": min,
            "max": max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut s);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        let mut one = vec![Duration::from_millis(3)];
        assert_eq!(Latency::of(&mut one).p99, 3.0);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
