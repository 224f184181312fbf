//! Per-command statistics: calls, failures, refusals and a latency
//! histogram for each command, as `INFO commandstats` and the drivers'
//! metrics report them.
//!
//! Latencies come in as durations the caller measured with its own clock:
//! this module keeps counts, it never reads a clock. The histogram has
//! fixed bucket bounds ([`LATENCY_BOUNDS_US`]) so that histograms of
//! different moments, nodes or commands add and subtract bucket by bucket:
//! the console subtracts two snapshots to chart the latency of the last
//! second, and Prometheus does the same over its scrapes.

use crate::command::table::Spec;
use crate::db::Hasher;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds; one more bucket
/// takes everything slower. From a cache hit's microsecond to the proxy's
/// request timeout, roughly three per decade, as Prometheus's defaults.
pub const LATENCY_BOUNDS_US: [u64; 20] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 5_000_000,
];

/// A latency histogram with the buckets of [`LATENCY_BOUNDS_US`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is beyond
    /// every bound.
    pub buckets: Vec<u64>,
    /// Sum of the observed latencies, in nanoseconds.
    pub sum_nanos: u64,
}

impl Histogram {
    /// Counts one observation.
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // `partition_point` over 20 bounds: five comparisons.
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b.saturating_mul(1000) < nanos);
        self.buckets[i] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Histogram) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// The observations made since `earlier` (a snapshot of the same
    /// histogram), bucket by bucket.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Histogram {
            buckets,
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    /// The upper bound, in microseconds, of the bucket holding quantile `q`
    /// (0..=1) of the observations: `None` without observations, and
    /// `u64::MAX` when it lies beyond the last bound. A bucket's bound, not
    /// an interpolation: the answer is never lower than the truth.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the observation at quantile q, counted from 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// What one command has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandStat {
    /// Times it ran (refusals not included, as Redis counts `calls`).
    pub calls: u64,
    /// Runs that answered an error: Redis's `failed_calls`.
    pub failed: u64,
    /// Times it was refused before it ran (arity, authentication, a
    /// transaction's queuing errors): Redis's `rejected_calls`.
    pub rejected: u64,
    /// How long its runs took.
    pub latency: Histogram,
}

/// The statistics of every command that has been called, by name.
#[derive(Debug, Clone)]
pub struct CommandStats {
    /// Keyed by the address of the command's spec: specs are statics, and
    /// a pointer hashes in a few instructions on the path of every request.
    by_spec: HashMap<usize, (&'static str, CommandStat), Hasher>,
    /// Every command's latency together, for the console's chart.
    all: Histogram,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            by_spec: HashMap::with_hasher(Hasher::with_seed(0)),
            all: Histogram::default(),
        }
    }
}

impl CommandStats {
    fn entry(&mut self, spec: &'static Spec) -> &mut CommandStat {
        &mut self
            .by_spec
            .entry(spec as *const Spec as usize)
            .or_insert_with(|| (spec.name, CommandStat::default()))
            .1
    }

    /// Counts a run of `spec` that took `latency` and answered an error if
    /// `failed`.
    #[inline]
    pub fn record(&mut self, spec: &'static Spec, failed: bool, latency: Duration) {
        let stat = self.entry(spec);
        stat.calls += 1;
        stat.failed += u64::from(failed);
        stat.latency.record(latency);
        self.all.record(latency);
    }

    /// Counts a refusal of `spec` before it ran.
    pub fn rejected(&mut self, spec: &'static Spec) {
        self.entry(spec).rejected += 1;
    }

    /// Every command's latency together.
    pub fn all_latency(&self) -> &Histogram {
        &self.all
    }

    /// Each command that has been called or refused, with its statistics,
    /// sorted by name (`config|get` for a subcommand, as Redis names it).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &CommandStat)> {
        let mut v: Vec<_> = self.by_spec.values().map(|(n, s)| (*n, s)).collect();
        v.sort_unstable_by_key(|(n, _)| *n);
        v.into_iter()
    }

    /// The `# Commandstats` section of `INFO`, as Redis writes it.
    pub fn info(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# Commandstats\n");
        for (name, s) in self.iter() {
            let usec = s.latency.sum_nanos / 1000;
            let per_call = if s.calls == 0 {
                0.0
            } else {
                s.latency.sum_nanos as f64 / 1000.0 / s.calls as f64
            };
            let _ = writeln!(
                out,
                "cmdstat_{name}:calls={},usec={usec},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}",
                s.calls, s.rejected, s.failed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::table::Table;

    fn spec(name: &str) -> &'static Spec {
        Table::get().lookup(name.as_bytes()).unwrap().1
    }

    #[test]
    fn latencies_fall_in_the_bucket_whose_bound_they_reach() {
        let mut h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::from_nanos(1000)); // exactly 1 µs: the first bucket
        h.record(Duration::from_nanos(1001));
        h.record(Duration::from_secs(60)); // beyond every bound
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS_US.len()], 1);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_nanos, 2001 + 60_000_000_000);
    }

    #[test]
    fn quantiles_are_bucket_bounds_and_snapshots_subtract() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_bound_us(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(3));
        }
        h.record(Duration::from_micros(400));
        h.record(Duration::from_millis(2));
        assert_eq!(h.quantile_bound_us(0.5), Some(5));
        assert_eq!(h.quantile_bound_us(0.99), Some(500));
        assert_eq!(h.quantile_bound_us(1.0), Some(2500));
        let before = h.clone();
        h.record(Duration::from_millis(30));
        let delta = h.since(&before);
        assert_eq!(delta.count(), 1);
        assert_eq!(delta.quantile_bound_us(0.5), Some(50_000));
        let mut sum = before.clone();
        sum.merge(&delta);
        assert_eq!(sum, h);
    }

    #[test]
    fn commands_are_counted_by_name_as_redis_reports_them() {
        let mut stats = CommandStats::default();
        stats.record(spec("get"), false, Duration::from_micros(2));
        stats.record(spec("get"), true, Duration::from_micros(4));
        // An alias counts as the command it names.
        stats.record(spec("put"), false, Duration::from_micros(1));
        stats.rejected(spec("set"));
        let mut info = String::new();
        stats.info(&mut info);
        assert_eq!(
            info,
            "# Commandstats\n\
             cmdstat_get:calls=2,usec=6,usec_per_call=3.00,rejected_calls=0,failed_calls=1\n\
             cmdstat_set:calls=1,usec=1,usec_per_call=1.00,rejected_calls=1,failed_calls=0\n"
        );
        assert_eq!(stats.all_latency().count(), 3);
    }
}
