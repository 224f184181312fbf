//! The charts: requests per second in memory (`chart.svg`), and durable
//! writes per fsync policy (`durable-chart.svg`), as plain SVG text so that
//! no plotting library is needed.

use std::fmt::Write as _;

use super::{find, label, thousands, Report};
use crate::bench::{Case, Target, Workload, GET_SET, PIPELINES, TARGETS};

/// The start of a chart of `w` by `h` pixels: white background, a title
/// and a subtitle (already escaped) centred at the top.
fn svg_header(w: f64, h: f64, title: &str, subtitle: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif">"##
    );
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="30" text-anchor="middle" font-size="18" font-weight="bold">{title}</text>"##,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="50" text-anchor="middle" font-size="12" fill="#555">{subtitle}</text>"##,
        w / 2.0
    );
    s
}

/// One bar, `[x, y, width, height]`, with `title` as its tooltip and its
/// value written above it.
fn bar(s: &mut String, [x, y, width, height]: [f64; 4], colour: &str, title: &str, value: f64) {
    let _ = writeln!(
        s,
        r##"<rect x="{x:.1}" y="{y:.1}" width="{width}" height="{height:.1}" fill="{colour}"><title>{title}</title></rect>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
        x + width / 2.0,
        y - 4.0,
        short(value)
    );
}

/// The name under a group of bars, centred on `x`.
fn group_label(s: &mut String, x: f64, y: f64, text: &str) {
    let _ = writeln!(
        s,
        r##"<text x="{x:.1}" y="{y}" text-anchor="middle" font-size="14">{text}</text>"##
    );
}

/// Colours of the bars, one per target, in [`TARGETS`] order.
const COLOURS: [&str; 4] = ["#d62728", "#1f5fa8", "#6fa8dc", "#9e9e9e"];

/// A grouped bar chart of req/s: one panel per pipeline depth (their
/// scales differ tenfold), in each a group per command, in each a bar per
/// target, with its value written on top.
pub(super) fn svg(r: &Report) -> String {
    const W: f64 = 960.0;
    const H: f64 = 470.0;
    const TOP: f64 = 110.0;
    const BOTTOM: f64 = 400.0;
    const BAR: f64 = 34.0;
    const GAP: f64 = 8.0;
    let mut s = svg_header(
        W,
        H,
        "Requests per second, kv vs Redis (higher is better)",
        &format!(
            "redis-benchmark -c 50 -d 64 -r 100000, median of {} round(s); {}",
            r.options.rounds,
            escape(&r.date)
        ),
    );
    // Legend.
    let legend = [
        "redis",
        "kv server",
        "kv proxy (GET: cache hit, SET: forwarded)",
        "null server (ceiling)",
    ];
    let mut x = 60.0;
    for (name, colour) in legend.iter().zip(COLOURS) {
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="64" width="14" height="14" fill="{colour}"/><text x="{}" y="76" font-size="13">{name}</text>"##,
            x + 20.0
        );
        x += 44.0 + 6.6 * name.len() as f64;
    }

    let panel_w = (W - 80.0) / PIPELINES.len() as f64;
    for (pi, &pipeline) in PIPELINES.iter().enumerate() {
        let left = 70.0 + pi as f64 * panel_w;
        let right = left + panel_w - 50.0;
        let values: Vec<f64> = r
            .cases
            .iter()
            // The chart shows GET and SET only.
            .filter(|c| c.pipeline == pipeline && GET_SET.contains(&c.workload))
            .map(Case::rps)
            .collect();
        let max = values.iter().copied().fold(0.0, f64::max);
        let y = panel_axes(
            &mut s,
            Panel {
                left,
                right,
                top: TOP,
                bottom: BOTTOM,
            },
            pipeline,
            max,
        );
        // Groups.
        let group_w = TARGETS.len() as f64 * (BAR + GAP) - GAP;
        let workloads = GET_SET;
        let slot = (right - left) / workloads.len() as f64;
        for (wi, &workload) in workloads.iter().enumerate() {
            let gx = left + slot * wi as f64 + (slot - group_w) / 2.0;
            for (ti, &target) in TARGETS.iter().enumerate() {
                let Some(case) = find(&r.cases, target, workload, pipeline) else {
                    continue;
                };
                let v = case.rps();
                let bx = gx + ti as f64 * (BAR + GAP);
                let title = format!(
                    "{} {} P{pipeline}: {} req/s",
                    label(target, workload),
                    workload.test(),
                    thousands(v)
                );
                bar(
                    &mut s,
                    [bx, y(v), BAR, BOTTOM - y(v)],
                    COLOURS[ti],
                    &title,
                    v,
                );
            }
            group_label(&mut s, gx + group_w / 2.0, BOTTOM + 20.0, workload.test());
        }
    }
    let machine: Vec<String> = r
        .machine
        .iter()
        .filter(|(k, _)| k == "CPU" || k == "nproc")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#555">{}; load generator and servers share the machine</text>"##,
        W / 2.0,
        H - 22.0,
        escape(&machine.join(", "))
    );
    s.push_str("</svg>\n");
    s
}

/// Where one chart panel sits.
#[derive(Clone, Copy)]
struct Panel {
    /// The x of the value axis, where the grid lines start.
    left: f64,
    /// Where the grid lines end.
    right: f64,
    /// The y of the largest value on the axis.
    top: f64,
    /// The y of the baseline, value 0.
    bottom: f64,
}

/// Draws a panel's grid, value labels, baseline and title, scaled so that
/// `max` fits; returns the value-to-y mapping for its bars.
fn panel_axes(s: &mut String, p: Panel, pipeline: u32, max: f64) -> impl Fn(f64) -> f64 {
    let Panel {
        left,
        right,
        top,
        bottom,
    } = p;
    let step = nice_step(max, 5);
    let top_value = (max / step).ceil().max(1.0) * step;
    let y = move |v: f64| bottom - (bottom - top) * v / top_value;
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#e0e0e0"/><text x="{1}" y="{2:.1}" text-anchor="end" font-size="11" fill="#555">{3}</text>"##,
            y(tick),
            left - 6.0,
            y(tick) + 4.0,
            short(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">pipeline {pipeline} (-P {pipeline})</text>"##,
        (left + right) / 2.0,
        top - 14.0
    );
    y
}

/// A small grouped bar chart of durable SETs per second: one panel per
/// pipeline depth, in each a group per fsync policy, in each a bar for
/// Redis and one for kv. `None` when nothing was measured.
pub(super) fn durable_svg(r: &Report) -> Option<String> {
    const W: f64 = 760.0;
    const H: f64 = 400.0;
    const TOP: f64 = 110.0;
    const BOTTOM: f64 = 330.0;
    const BAR: f64 = 34.0;
    const GAP: f64 = 6.0;
    if r.durable.is_empty() {
        return None;
    }
    let targets = [(Target::Redis, COLOURS[0]), (Target::KvServer, COLOURS[1])];
    let mut s = svg_header(
        W,
        H,
        "Durable SETs per second, kv vs Redis (higher is better)",
        &format!(
            "append-only log on {}; redis-benchmark -t set -c 50 -d 64 -r 100000, median of {} round(s); {}",
            escape(&r.durable[0].filesystem),
            r.options.rounds,
            escape(&r.date)
        ),
    );
    let mut x = 60.0;
    for (name, (_, colour)) in ["redis (appendfsync)", "kv server (--fsync)"]
        .iter()
        .zip(targets)
    {
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="64" width="14" height="14" fill="{colour}"/><text x="{}" y="76" font-size="13">{name}</text>"##,
            x + 20.0
        );
        x += 44.0 + 6.6 * name.len() as f64;
    }
    let panel_w = (W - 80.0) / PIPELINES.len() as f64;
    for (pi, &pipeline) in PIPELINES.iter().enumerate() {
        let left = 70.0 + pi as f64 * panel_w;
        let right = left + panel_w - 50.0;
        let max = r
            .durable
            .iter()
            .flat_map(|d| &d.cases)
            .filter(|c| c.pipeline == pipeline)
            .map(Case::rps)
            .fold(0.0, f64::max);
        let y = panel_axes(
            &mut s,
            Panel {
                left,
                right,
                top: TOP,
                bottom: BOTTOM,
            },
            pipeline,
            max,
        );
        let group_w = targets.len() as f64 * (BAR + GAP) - GAP;
        let slot = (right - left) / r.durable.len() as f64;
        for (di, d) in r.durable.iter().enumerate() {
            let gx = left + slot * di as f64 + (slot - group_w) / 2.0;
            for (ti, &(target, colour)) in targets.iter().enumerate() {
                let Some(case) = find(&d.cases, target, Workload::Set, pipeline) else {
                    continue;
                };
                let v = case.rps();
                let bx = gx + ti as f64 * (BAR + GAP);
                let title = format!(
                    "{} SET P{pipeline}, fsync {}: {} req/s",
                    label(target, Workload::Set),
                    d.policy,
                    thousands(v)
                );
                bar(&mut s, [bx, y(v), BAR, BOTTOM - y(v)], colour, &title, v);
            }
            group_label(&mut s, gx + group_w / 2.0, BOTTOM + 20.0, d.policy);
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#555">fsync policy: Redis appendfsync = kv --fsync; load generator and servers share the machine</text>"##,
        W / 2.0,
        H - 22.0
    );
    s.push_str("</svg>\n");
    Some(s)
}

/// A round step for about `ticks` grid lines up to `max`: 1, 2, 2.5 or 5
/// times a power of ten.
fn nice_step(max: f64, ticks: u32) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / f64::from(ticks);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// `152340` as `152k`, `1234567` as `1.23M`.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `s` made safe as SVG text: dates and machine names come from other
/// programs and may hold `&`, `<` or `>`.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(short(152_340.0), "152k");
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(nice_step(1_000_000.0, 5), 200_000.0);
        assert_eq!(nice_step(110_000.0, 5), 25_000.0);
    }
}
