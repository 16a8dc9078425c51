//! A mergeable sketch of latencies, so that percentiles can be taken over every
//! shard of a cluster (issue 21) without shipping each shard's values.
//!
//! The buckets are DDSketch's (Masson et al., 2019): a positive value `v` falls in
//! bucket `ceil(log_γ v)` with `γ = (1 + α) / (1 − α)`, and a bucket stands for
//! `2γ^i / (γ + 1)`, which is within a relative error `α` ([`RELATIVE_ACCURACY`],
//! 1 %) of every value in it. Sketches merge exactly (bucket counts add), so a
//! percentile of merged sketches is as accurate as one of a single sketch. The
//! trade-off: percentiles are no longer exact (the single-indexer path keeps every
//! value and stays exact), but the size of a sketch grows with the logarithm of the
//! range of values (about 1,200 buckets from 1 µs to 3 hours), not with how many
//! there are. Count, sum (hence the average), min and max are carried exactly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest relative error of a percentile read from a sketch.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Values smaller than this in magnitude (and non-finite ones) count as zero.
const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn index_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

fn value_of(index: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

/// Bucket counts of a set of values, with their exact count, sum, min and max.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Values within [`MIN_MAGNITUDE`] of zero.
    #[serde(default)]
    pub zero: u64,
    /// Bucket index → count, positive values.
    #[serde(default)]
    pub pos: BTreeMap<i32, u64>,
    /// Bucket index of the magnitude → count, negative values.
    #[serde(default)]
    pub neg: BTreeMap<i32, u64>,
}

impl Sketch {
    pub fn of(values: &[f64]) -> Sketch {
        let mut s = Sketch::default();
        for &v in values {
            s.add(v);
        }
        s
    }

    pub fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        if !v.is_finite() || v.abs() < MIN_MAGNITUDE {
            self.zero += 1;
        } else if v > 0.0 {
            *self.pos.entry(index_of(v)).or_default() += 1;
        } else {
            *self.neg.entry(index_of(-v)).or_default() += 1;
        }
    }

    /// Adds `other`'s values to these: exact, bucket by bucket.
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
        self.zero += other.zero;
        for (i, n) in &other.pos {
            *self.pos.entry(*i).or_default() += n;
        }
        for (i, n) in &other.neg {
            *self.neg.entry(*i).or_default() += n;
        }
    }

    /// The nearest-rank percentile `p` (as [`crate::analytics`] takes it), within
    /// [`RELATIVE_ACCURACY`] of the exact one; 0 for no values.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = (((p / 100.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        // Most negative first: the largest magnitudes of the negative values.
        let buckets = self
            .neg
            .iter()
            .rev()
            .map(|(i, n)| (-value_of(*i), *n))
            .chain(std::iter::once((0.0, self.zero)))
            .chain(self.pos.iter().map(|(i, n)| (value_of(*i), *n)));
        for (v, n) in buckets {
            seen += n;
            if seen >= rank {
                return v.clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::summarize;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= RELATIVE_ACCURACY * 1.000_001 * b.abs() + 1e-8
    }

    proptest::proptest! {
        /// Split anyhow over shards and merged, the sketch's percentiles are within
        /// the relative accuracy of the exact ones of all values together, and its
        /// count, min and max are exact.
        #[test]
        fn merged_sketches_match_exact_percentiles(
            values in proptest::collection::vec(-1e6f64..1e7, 1..400),
            cut in 0usize..400,
        ) {
            let cut = cut.min(values.len());
            let mut merged = Sketch::of(&values[..cut]);
            merged.merge(&Sketch::of(&values[cut..]));
            let exact = summarize("k".into(), values.clone());
            proptest::prop_assert_eq!(merged.count, exact.count);
            proptest::prop_assert_eq!(merged.max, exact.max);
            proptest::prop_assert!((merged.avg() - exact.avg).abs() <= 1e-6 * (1.0 + exact.avg.abs()));
            for (p, want) in [(50.0, exact.p50), (90.0, exact.p90), (99.0, exact.p99)] {
                let got = merged.percentile(p);
                proptest::prop_assert!(close(got, want), "p{} {} vs exact {}", p, got, want);
            }
        }
    }

    #[test]
    fn empty_and_zero_values() {
        assert_eq!(Sketch::default().percentile(50.0), 0.0);
        let s = Sketch::of(&[0.0, 0.0, 5.0]);
        assert_eq!((s.percentile(50.0), s.zero), (0.0, 2));
        assert!(close(s.percentile(99.0), 5.0));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Sketch>(&json).unwrap(), s);
    }
}
