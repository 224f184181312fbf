//! What the report says about the machine the benchmark ran on: the
//! results mean little without it.

use std::fs;

use crate::cmd::Cmd;

/// The machine, as `label: value` lines for the report.
pub(super) fn machine() -> Vec<(String, String)> {
    let proc_field = |file: &str, field: &str| {
        fs::read_to_string(file).ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let run = |program: &str, args: &[&str]| {
        Cmd::new(program)
            .args(args)
            .read()
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let ram = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    vec![
        (
            "CPU".into(),
            proc_field("/proc/cpuinfo", "model name").unwrap_or("unknown".into()),
        ),
        ("nproc".into(), run("nproc", &[])),
        ("RAM".into(), ram),
        ("kernel".into(), run("uname", &["-sr"])),
        ("redis-server".into(), run("redis-server", &["--version"])),
        (
            "redis-benchmark".into(),
            run("redis-benchmark", &["--version"]),
        ),
        ("rustc".into(), run("rustc", &["--version"])),
    ]
}

/// The 1-minute load average: work of other programs on the machine shows
/// up here, and in the noise of the results.
pub(super) fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
