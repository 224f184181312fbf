//! `cargo xtask fuzz`: runs each cargo-fuzz target in `fuzz/` for a while
//! and reports executions, corpus sizes and crashes.
//!
//! - cargo-fuzz is installed if missing.
//! - libFuzzer's instrumentation and the sanitizers need nightly flags
//!   (`-Zsanitizer`, …). Rather than require a nightly toolchain, the
//!   commands run with `RUSTC_BOOTSTRAP=1`, which lets a stable compiler
//!   accept them; on nightly it changes nothing.
//! - Each target keeps its corpus in `fuzz/corpus/<target>` (ignored by
//!   git), so later runs start from what earlier ones found; crashes land in
//!   `fuzz/artifacts/<target>`.
//! - A crash fails the task after every target ran. Reproduce it with
//!   `cargo fuzz run <target> <artifact>`, then keep it as a test in
//!   `core/tests/fuzz_regressions.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "decode_request",
    "decode_reply",
    "server_conn",
    "proxy_events",
];

/// What to run.
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// Targets to run; all of them when empty.
    pub targets: Vec<String>,
}

/// One target's run.
struct Outcome {
    target: String,
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

/// Runs the targets one after the other, then reports.
pub fn run(options: &Options) -> Result<()> {
    let targets: Vec<String> = if options.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        options.targets.clone()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    ensure_cargo_fuzz()?;
    fuzz_cmd(&["build"]).run()?;

    let mut outcomes = Vec::new();
    for target in &targets {
        let artifacts = Path::new("fuzz/artifacts").join(target);
        let before = files(&artifacts);
        let corpus = Path::new("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus)
            .with_context(|| format!("could not create {}", corpus.display()))?;
        let output = fuzz_cmd(&["run", target.as_str()])
            .args([
                "--",
                &format!("-max_total_time={}", options.seconds),
                "-print_final_stats=1",
                // A single input running this long is a hang.
                "-timeout=20",
            ])
            .output()?;
        let log = String::from_utf8_lossy(&output.stderr);
        let crashes: Vec<PathBuf> = files(&artifacts).difference(&before).cloned().collect();
        if !output.status.success() || !crashes.is_empty() {
            // The end of libFuzzer's log holds the panic and the input.
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- {target}: the end of libFuzzer's output ----");
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        let mut crashes = crashes;
        if !output.status.success() && crashes.is_empty() {
            // A failure that left no artifact (a build or setup error) still
            // counts.
            crashes.push(PathBuf::from(format!("(exit status {})", output.status)));
        }
        outcomes.push(Outcome {
            target: target.clone(),
            runs: stat(&log, "number_of_executed_units"),
            exec_per_sec: stat(&log, "average_exec_per_sec"),
            corpus: files(&corpus).len(),
            crashes,
        });
    }

    eprintln!("\nxtask fuzz: {} s per target", options.seconds);
    eprintln!(
        "{:<16} {:>12} {:>10} {:>8}  result",
        "target", "runs", "exec/s", "corpus"
    );
    let show = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    for o in &outcomes {
        let result = if o.crashes.is_empty() {
            "ok".to_string()
        } else {
            let names: Vec<String> = o.crashes.iter().map(|p| p.display().to_string()).collect();
            format!("CRASH {}", names.join(" "))
        };
        eprintln!(
            "{:<16} {:>12} {:>10} {:>8}  {result}",
            o.target,
            show(o.runs),
            show(o.exec_per_sec),
            o.corpus
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.crashes.is_empty())
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {}; reproduce with `cargo fuzz run <target> <artifact>` \
             (with RUSTC_BOOTSTRAP=1 on a stable toolchain)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `cargo fuzz ARGS`, allowed nightly flags on any toolchain.
fn fuzz_cmd(args: &[&str]) -> Cmd {
    Cmd::cargo()
        .arg("fuzz")
        .args(args)
        .env("RUSTC_BOOTSTRAP", "1")
}

fn ensure_cargo_fuzz() -> Result<()> {
    let probe = Cmd::cargo().args(["fuzz", "--version"]).output();
    if probe.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    Cmd::cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .run()
}

/// The files in `dir` (none if it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A `stat::NAME: VALUE` line of libFuzzer's final statistics.
fn stat(log: &str, name: &str) -> Option<u64> {
    let prefix = format!("stat::{name}:");
    log.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .find_map(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats() {
        let log = "#1024\tpulse\nDone 5 runs in 1 second(s)\nstat::number_of_executed_units: 338450\nstat::average_exec_per_sec:     16116\n";
        assert_eq!(stat(log, "number_of_executed_units"), Some(338_450));
        assert_eq!(stat(log, "average_exec_per_sec"), Some(16_116));
        assert_eq!(stat(log, "peak_rss_mb"), None);
    }

    #[test]
    fn targets_match_the_fuzz_manifest() {
        let manifest = include_str!("../../fuzz/Cargo.toml");
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} is not in fuzz/Cargo.toml"
            );
        }
        assert_eq!(
            manifest.matches("[[bin]]").count(),
            TARGETS.len(),
            "fuzz/Cargo.toml has targets xtask does not know"
        );
    }
}
