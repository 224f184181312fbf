//! The console's live charts without the DOM: the proxy's figures once a
//! second ([`ProxySnapshot`]), turned into points (the difference between
//! two snapshots) and into SVG paths. Pure and testable on any target.

use kv_core::bridge::ProxySnapshot;
use std::collections::VecDeque;

/// Points kept: five minutes at one a second.
pub const WINDOW: usize = 300;

/// The width and height of every chart's SVG `viewBox`; the page stretches
/// it to its box.
pub const VIEW: (f64, f64) = (300.0, 60.0);

/// What the charts show for one interval between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Requests per second.
    pub rps: f64,
    /// Share of reads answered from the cache, in percent (`None`: no reads).
    pub hit_ratio: Option<f64>,
    /// Median latency at the proxy, in microseconds (a bucket's bound).
    pub p50_us: Option<u64>,
    /// 99th percentile latency at the proxy, in microseconds.
    pub p99_us: Option<u64>,
    /// Entries in the cache at the interval's end.
    pub entries: u64,
    /// Whether the upstream connection was up at the interval's end.
    pub upstream_up: bool,
    /// The upstream state's name at the interval's end.
    pub upstream: String,
}

/// The charts' state: the last snapshot and the points so far.
#[derive(Debug, Default)]
pub struct Charts {
    last: Option<ProxySnapshot>,
    points: VecDeque<Point>,
}

impl Charts {
    /// Takes a snapshot; from the second on, each adds a point.
    pub fn handle_snapshot(&mut self, snap: ProxySnapshot) {
        if let Some(prev) = self.last.as_ref() {
            let secs = (snap.at_ms - prev.at_ms) / 1000.0;
            // Counters restart with the proxy (a new connection may reach a
            // new one): a snapshot that goes back starts afresh.
            if secs > 0.0 && snap.requests >= prev.requests {
                let reads = (snap.hits + snap.misses).saturating_sub(prev.hits + prev.misses);
                let hits = snap.hits.saturating_sub(prev.hits);
                let latency = snap.latency.since(&prev.latency);
                self.points.push_back(Point {
                    rps: (snap.requests - prev.requests) as f64 / secs,
                    hit_ratio: (reads > 0).then(|| 100.0 * hits as f64 / reads as f64),
                    p50_us: latency.quantile_bound_us(0.5),
                    p99_us: latency.quantile_bound_us(0.99),
                    entries: snap.entries,
                    upstream_up: snap.upstream == "up",
                    upstream: snap.upstream.clone(),
                });
                while self.points.len() > WINDOW {
                    self.points.pop_front();
                }
            }
        }
        self.last = Some(snap);
    }

    /// The points, oldest first.
    pub fn points(&self) -> &VecDeque<Point> {
        &self.points
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.points.back()
    }
}

/// An SVG path through `values` (oldest first; `None` leaves a gap), the
/// newest at the right edge and a full window spanning the width, scaled so
/// that `max` (at least the largest value) reaches the top.
pub fn path(values: &[Option<f64>], max: f64) -> String {
    let (w, h) = VIEW;
    let top = values.iter().flatten().fold(max, |m, &v| m.max(v));
    let step = w / (WINDOW - 1) as f64;
    let offset = (WINDOW - values.len().min(WINDOW)) as f64 * step;
    let mut d = String::new();
    // Points in the current stretch without a gap; a lone point is drawn
    // as a dot (a zero-length line, which a round cap shows).
    let mut run = 0;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            if run == 1 {
                d.push_str(" h0");
            }
            run = 0;
            continue;
        };
        let x = offset + i as f64 * step;
        let y = if top > 0.0 { h - v / top * h } else { h };
        d.push_str(&format!(
            "{}{x:.1},{y:.1}",
            if run > 0 { " L" } else { " M" }
        ));
        run += 1;
    }
    if run == 1 {
        d.push_str(" h0");
    }
    d.trim_start().to_owned()
}

/// A figure for a chart's caption: `1.2k`, `35`, `0.5`.
pub fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A latency bound for a caption: `≤ 50 µs`, `≤ 2.5 ms`, `> 5 s`.
pub fn latency(us: Option<u64>) -> String {
    match us {
        None => "–".to_owned(),
        Some(u64::MAX) => "> 5 s".to_owned(),
        Some(us) if us >= 1_000_000 => format!("≤ {} s", us as f64 / 1e6),
        Some(us) if us >= 1000 => format!("≤ {} ms", us as f64 / 1e3),
        Some(us) => format!("≤ {us} µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::stats::Histogram;
    use std::time::Duration;

    fn snap(at_ms: f64, requests: u64, hits: u64, misses: u64, fast: u64) -> ProxySnapshot {
        let mut latency = Histogram::default();
        for _ in 0..fast {
            latency.record(Duration::from_micros(20));
        }
        ProxySnapshot {
            at_ms,
            requests,
            hits,
            misses,
            entries: hits,
            bytes: 0,
            upstream: "up".into(),
            latency,
        }
    }

    #[test]
    fn points_are_rates_between_snapshots() {
        let mut c = Charts::default();
        c.handle_snapshot(snap(1000.0, 10, 0, 0, 10));
        assert!(c.latest().is_none(), "one snapshot is no interval");
        c.handle_snapshot(snap(3000.0, 110, 75, 25, 110));
        let p = c.latest().unwrap();
        assert_eq!(p.rps, 50.0);
        assert_eq!(p.hit_ratio, Some(75.0));
        assert_eq!(p.p50_us, Some(25));
        assert!(p.upstream_up);
        // A restarted proxy's counters go back: no point, a fresh start.
        c.handle_snapshot(snap(4000.0, 5, 0, 0, 5));
        assert_eq!(c.points().len(), 1);
        c.handle_snapshot(snap(5000.0, 6, 0, 0, 6));
        assert_eq!(c.points().len(), 2);
        assert_eq!(c.latest().unwrap().hit_ratio, None);
    }

    #[test]
    fn the_window_keeps_five_minutes() {
        let mut c = Charts::default();
        for i in 0..=(WINDOW as u64 + 10) {
            c.handle_snapshot(snap(i as f64 * 1000.0, i, 0, 0, 0));
        }
        assert_eq!(c.points().len(), WINDOW);
    }

    #[test]
    fn paths_end_at_the_right_edge_and_break_at_gaps() {
        assert_eq!(path(&[], 1.0), "");
        let d = path(&[Some(0.0), Some(10.0), None, Some(5.0)], 0.0);
        let (w, h) = VIEW;
        let step = w / (WINDOW - 1) as f64;
        let x = |i: usize| (WINDOW - 4 + i) as f64 * step;
        assert_eq!(
            d,
            format!(
                "M{:.1},{h:.1} L{:.1},0.0 M{:.1},{:.1} h0",
                x(0),
                x(1),
                x(3),
                h / 2.0
            )
        );
    }

    #[test]
    fn captions_are_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(3.0), "3");
        assert_eq!(short(4.25), "4.2");
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(45_678.0), "46k");
        assert_eq!(latency(Some(50)), "≤ 50 µs");
        assert_eq!(latency(Some(2500)), "≤ 2.5 ms");
        assert_eq!(latency(Some(u64::MAX)), "> 5 s");
        assert_eq!(latency(None), "–");
    }
}
