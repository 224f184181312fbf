//! The codec micro-benchmarks: criterion's figures, read back for the
//! report.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use super::report::CodecFigure;
use crate::cmd::Cmd;

/// `cargo bench -p kv-core --bench codec -- --quick`, then criterion's
/// JSON estimates turned into MB/s and commands/s per benchmark.
pub(super) fn codec_benchmarks(out: &Path) -> Result<Vec<CodecFigure>> {
    let home = std::env::current_dir()?.join(out).join("criterion");
    // Only this run's estimates may end up in the report.
    if home.exists() {
        fs::remove_dir_all(&home)
            .with_context(|| format!("could not remove {}", home.display()))?;
    }
    Cmd::cargo()
        .args([
            "bench", "-p", "kv-core", "--bench", "codec", "--", "--quick",
        ])
        .env("CRITERION_HOME", &home)
        .run()?;
    let mut found = Vec::new();
    find_files(&home, "benchmark.json", &mut found)?;
    let mut figures: BTreeMap<(String, String), CodecFigure> = BTreeMap::new();
    for path in found {
        // Each benchmark's latest results sit in `…/new/`.
        if path.parent().and_then(Path::file_name) != Some("new".as_ref()) {
            continue;
        }
        let (id, figure) = codec_figure(&path)?;
        let entry = figures.entry(id.clone()).or_insert(CodecFigure {
            group: id.0,
            name: id.1,
            ns_per_batch: figure.ns_per_batch,
            mb_per_s: None,
            commands_per_s: None,
        });
        entry.mb_per_s = entry.mb_per_s.or(figure.mb_per_s);
        entry.commands_per_s = entry.commands_per_s.or(figure.commands_per_s);
    }
    ensure!(
        !figures.is_empty(),
        "criterion wrote no results under {}",
        home.display()
    );
    Ok(figures.into_values().collect())
}

/// Reads one criterion benchmark's `benchmark.json` and its `estimates.json`.
fn codec_figure(benchmark_json: &Path) -> Result<((String, String), CodecFigure)> {
    let read = |path: &Path| -> Result<serde_json::Value> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let bench = read(benchmark_json)?;
    let estimates = read(&benchmark_json.with_file_name("estimates.json"))?;
    let ns = estimates["median"]["point_estimate"]
        .as_f64()
        .context("estimates.json has no median")?;
    let id = (
        bench["group_id"].as_str().unwrap_or("?").to_owned(),
        bench["function_id"].as_str().unwrap_or("?").to_owned(),
    );
    let per_second = |n: &serde_json::Value| n.as_f64().map(|n| n / (ns * 1e-9));
    let throughput = &bench["throughput"];
    let figure = CodecFigure {
        group: id.0.clone(),
        name: id.1.clone(),
        ns_per_batch: ns,
        mb_per_s: per_second(&throughput["Bytes"]).map(|b| b / 1e6),
        commands_per_s: per_second(&throughput["Elements"]),
    };
    Ok((id, figure))
}

/// Every file called `name` under `dir`, recursively.
fn find_files(dir: &Path, name: &str, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_files(&path, name, found)?;
        } else if path.file_name() == Some(name.as_ref()) {
            found.push(path);
        }
    }
    Ok(())
}
