//! Shared pieces of reaper's benchmarks: timing, medians, and the JSON line
//! each benchmark prints for `cargo xtask bench`.
//!
//! Rules: compare A vs B interleaved in one run (absolute times drift on
//! shared machines), report the median and the spread, never assert speed.

pub mod idlers;

use serde::Serialize;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Serialize, Debug, Clone)]
pub struct Figure {
    pub bench: String,
    pub subject: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Median, min and max of samples.
pub fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// Prints a figure as one JSON line on stdout (what xtask collects) and a
/// human line on stderr.
pub fn emit(
    bench: &str,
    subject: &str,
    unit: &str,
    samples: &[f64],
    note: Option<String>,
) -> Figure {
    let (median, min, max) = stats(samples);
    let f = Figure {
        bench: bench.into(),
        subject: subject.into(),
        unit: unit.into(),
        median,
        min,
        max,
        samples: samples.len(),
        note,
    };
    eprintln!("{bench:>12}  {subject:<40} median {median:>12.3} {unit}  (min {min:.3}, max {max:.3}, n={})", samples.len());
    println!("{}", serde_json::to_string(&f).unwrap());
    f
}

/// Times a closure.
pub fn time<F: FnOnce() -> R, R>(f: F) -> (Duration, R) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}
