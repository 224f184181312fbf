//! Project automation for the kv workspace, run as `cargo xtask <task>`.
//!
//! - `setup`: installs the tools the project needs, each only if missing.
//! - `build-wasm`: builds the wasm client into `www/pkg`.
//! - `test`: every check and test, in the order CI runs them.
//! - `up`: builds the wasm client and starts `kv up`.
//! - `bench`: kv side by side with Redis (and its proxy with twemproxy, and
//!   in front of a Redis Cluster beside a direct cluster client); writes
//!   `artifacts/bench/` and `BENCHMARKS.md`.
//! - `sim`: many seeds of the deterministic simulation, in release.
//! - `fuzz`: every cargo-fuzz target in `fuzz/` for a while.
//!
//! Every external command is echoed as `$ ...` before it runs, and the first
//! one that fails stops xtask with a non-zero exit status.

mod bench;
mod cmd;
mod fuzz;
mod setup;
mod sim;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::cmd::Cmd;
use crate::setup::{WasmTools, WASM_TARGET};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation for the kv workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The tasks xtask knows.
#[derive(Subcommand)]
enum Task {
    /// Install the tools the project needs (only those missing).
    Setup {
        /// Install only this part instead of all of them.
        #[arg(long, value_enum)]
        only: Option<Part>,
    },
    /// Build the wasm client (if there is one) into www/pkg.
    BuildWasm,
    /// Run every check and test, stopping at the first failure.
    Test {
        /// Do not install missing tools first (for quick local runs).
        #[arg(long)]
        skip_setup: bool,
    },
    /// Build the wasm client and run `kv up`; arguments after `--` go to it.
    Up {
        /// Extra arguments for `kv up`, e.g. `cargo xtask up -- --help`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Benchmark kv server and proxy side by side with Redis, twemproxy
    /// and a null server, and the proxy in front of a Redis Cluster beside
    /// a direct cluster client; writes artifacts/bench/ and BENCHMARKS.md.
    Bench {
        /// Repeat every measurement this many times and report medians
        /// [default: 3, or 1 with --quick].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: Option<u32>,
        /// A short smoke run: about a second per measurement.
        #[arg(long)]
        quick: bool,
        /// Run only this part (repeatable) [default: all]. Such a run
        /// writes artifacts/bench/ only, not BENCHMARKS.md.
        #[arg(long, value_enum)]
        only: Vec<bench::Part>,
    },
    /// Run many seeds of the deterministic simulation (core/tests/sim.rs)
    /// in release and report steps per second, or a shrunk failure.
    Sim {
        /// How many seeds.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Steps per seed [default: the simulation's, 3000].
        #[arg(long)]
        steps: Option<u64>,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// Run each fuzz target in fuzz/ (installing cargo-fuzz if missing) and
    /// report executions and crashes; the corpus stays in fuzz/corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Run only this target (repeatable) [default: all].
        #[arg(long = "target")]
        targets: Vec<String>,
    },
}

/// The parts of `setup`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The rustup components clippy and rustfmt.
    Toolchain,
    /// The wasm32-unknown-unknown target and wasm-bindgen-cli.
    Wasm,
    /// Debian packages: Redis, twemproxy (nutcracker), Chromium and
    /// ChromeDriver, Node.js and npm, Python's venv, g++.
    System,
    /// The Redis client libraries the end-to-end tests drive: redis-py in a
    /// virtual environment, node-redis and ioredis with npm (tests/clients/).
    Clients,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match enter_workspace().and_then(|()| run(cli.task)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Changes to the workspace root, so that every relative path below (and in
/// the commands run) means the same wherever `cargo xtask` was started.
fn enter_workspace() -> Result<()> {
    let root = workspace_root();
    // A relative CARGO_TARGET_DIR means relative to where cargo was started;
    // pin it down before leaving that directory so that the cargo commands
    // below keep building into the same place.
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"] {
        if let Some(dir) = env::var_os(var).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            if dir.is_relative() {
                let absolute = env::current_dir()
                    .context("could not read the current directory")?
                    .join(dir);
                // Still single-threaded here, so changing the environment is sound.
                env::set_var(var, absolute);
            }
        }
    }
    env::set_current_dir(root)
        .with_context(|| format!("could not change to the workspace root {}", root.display()))
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup { only } => setup(only)?,
        Task::BuildWasm => {
            build_wasm(true)?;
        }
        Task::Test { skip_setup } => test(skip_setup)?,
        Task::Up { args } => return up(args),
        Task::Bench {
            rounds,
            quick,
            only,
        } => {
            let default_rounds = if quick { 1 } else { 3 };
            let parts = if only.is_empty() {
                bench::PARTS.to_vec()
            } else {
                only.clone()
            };
            bench::run(&bench::Options {
                rounds: rounds.map_or(default_rounds, |r| r as usize),
                quick,
                parts,
                command_line: bench_command_line(rounds, quick, &only),
            })?;
        }
        Task::Sim {
            seeds,
            steps,
            start,
        } => sim::run(&sim::Options {
            seeds,
            steps,
            start,
        })?,
        Task::Fuzz { time, targets } => fuzz::run(&fuzz::Options {
            seconds: time,
            targets,
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask setup [--only PART]`.
fn setup(only: Option<Part>) -> Result<()> {
    let wanted = |part| only.is_none_or(|only| only == part);
    if wanted(Part::Toolchain) {
        setup::components()?;
    }
    if wanted(Part::Wasm) {
        setup::wasm_target()?;
        setup::wasm_bindgen_cli(true)?;
    }
    if wanted(Part::System) {
        setup::system_packages()?;
    }
    // After the system packages, which bring python3-venv and npm.
    if wanted(Part::Clients) {
        setup::client_libs()?;
    }
    eprintln!("xtask setup: done");
    Ok(())
}

/// `cargo xtask build-wasm`: builds kv-wasm-client and generates its
/// JavaScript bindings into `www/pkg`, where the static page loads them.
///
/// With `install`, missing wasm tools are installed first; without, they
/// must already be there. Returns the wasm tools used, or `None` when there
/// is no wasm client yet.
fn build_wasm(install: bool) -> Result<Option<WasmTools>> {
    if !Path::new("wasm-client/Cargo.toml").exists() {
        eprintln!("xtask: skip: build-wasm: there is no wasm-client/Cargo.toml yet");
        return Ok(None);
    }
    if install {
        setup::wasm_target()?;
    }
    let tools = setup::wasm_bindgen_cli(install)?;
    Cmd::cargo()
        .args(["build", "-p", "kv-wasm-client", "--release", "--target"])
        .arg(WASM_TARGET)
        .run()?;
    // A freshly added wasm client gets into Cargo.lock only with the build
    // above, so wasm-bindgen's version may only be known now.
    let tools = match tools {
        Some(tools) => tools,
        None => setup::wasm_bindgen_cli(install)?
            .context("Cargo.lock has no wasm-bindgen: kv-wasm-client must depend on it")?,
    };
    let wasm = target_dir()
        .join(WASM_TARGET)
        .join("release")
        .join("kv_wasm_client.wasm");
    Cmd::new(&tools.wasm_bindgen)
        .args(["--target", "web", "--no-typescript", "--out-dir", "www/pkg"])
        .arg(wasm)
        .run()?;
    Ok(Some(tools))
}

/// `cargo xtask test`: the one command that runs every check and test.
fn test(skip_setup: bool) -> Result<()> {
    if skip_setup {
        eprintln!("xtask: skip: setup (--skip-setup)");
    } else {
        step("setup", || setup(None))?;
    }
    step("format", || {
        Cmd::cargo().args(["fmt", "--all", "--", "--check"]).run()
    })?;
    step("clippy", || {
        Cmd::cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .run()
    })?;
    // The fuzz targets live outside the workspace (cargo-fuzz builds them
    // with a sanitizer); checking them here keeps `cargo xtask fuzz` from
    // breaking unnoticed when the core's API moves.
    step("fuzz targets", || {
        Cmd::cargo()
            .args([
                "clippy",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--bins",
                "--",
                "-D",
                "warnings",
            ])
            .run()
    })?;
    // kv-core must stay portable to the browser, whether or not the wasm
    // client exists yet.
    step("kv-core for wasm", || {
        Cmd::cargo()
            .args(["build", "-p", "kv-core", "--target", WASM_TARGET])
            .run()
    })?;
    // Setup has just installed the wasm tools, or was skipped on purpose.
    let wasm_tools = step("build-wasm", || build_wasm(false))?;

    let native = Path::new("native/Cargo.toml").exists();
    if native {
        step("kv-native release build", || {
            Cmd::cargo()
                .args(["build", "--release", "-p", "kv-native"])
                .run()
        })?;
    } else {
        eprintln!("xtask: skip: kv-native release build: there is no native/Cargo.toml yet");
    }

    // The end-to-end tests build the release binary themselves before
    // they run it (a no-op after the step above), so they always test the
    // current source; see tests/src/bin.rs.
    step("cargo test", || {
        Cmd::cargo().args(["test", "--workspace"]).run()
    })?;

    match wasm_tools.as_ref().map(|tools| tools.test_runner.as_ref()) {
        Some(Some(runner)) => step("wasm tests", || {
            Cmd::cargo()
                .args(["test", "-p", "kv-wasm-client", "--target", WASM_TARGET])
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner)
                .run()
        })?,
        Some(None) => eprintln!(
            "xtask: skip: wasm tests: no wasm-bindgen-test-runner beside {}",
            wasm_tools
                .as_ref()
                .map_or(PathBuf::new(), |t| t.wasm_bindgen.clone())
                .display()
        ),
        None => eprintln!("xtask: skip: wasm tests: there is no wasm-client/Cargo.toml yet"),
    }

    eprintln!("xtask test: all steps passed");
    Ok(())
}

/// The `cargo xtask bench` command line that reproduces a run, for its
/// report.
fn bench_command_line(rounds: Option<u32>, quick: bool, only: &[bench::Part]) -> String {
    let mut line = String::from("cargo xtask bench");
    if let Some(rounds) = rounds {
        line.push_str(&format!(" --rounds {rounds}"));
    }
    if quick {
        line.push_str(" --quick");
    }
    for part in only {
        if let Some(name) = part.to_possible_value() {
            line.push_str(&format!(" --only {}", name.get_name()));
        }
    }
    line
}

/// Runs one step of `cargo xtask test` under a heading, naming it on failure.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("\n==> xtask test: {name}");
    f().with_context(|| format!("xtask test: step `{name}` failed"))
}

/// `cargo xtask up -- ARGS`: builds what the server serves, then runs it in
/// the foreground and exits with its status.
fn up(args: Vec<OsString>) -> Result<ExitCode> {
    setup(Some(Part::Wasm))?;
    build_wasm(false)?;
    let status = Cmd::cargo()
        .args(["run", "--release", "-p", "kv-native", "--", "up"])
        .args(args)
        .status()?;
    Ok(exit_code(status))
}

/// The exit code a shell would report for `status`: its code, or 128 plus
/// the signal number for a process killed by a signal.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    // Exit statuses are 0..=255 on Unix; anything else cannot occur.
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The workspace root: xtask's own directory sits right inside it.
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Cargo's target directory, where `build-wasm` finds the wasm it built:
/// `$CARGO_TARGET_DIR` (or its config twin `$CARGO_BUILD_TARGET_DIR`, both
/// made absolute at start-up), else `target` in the workspace root.
fn target_dir() -> PathBuf {
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .into_iter()
        .find_map(|var| env::var_os(var).filter(|v| !v.is_empty()))
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn up_takes_arguments_after_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "up", "--", "--help", "x"]).unwrap();
        match cli.task {
            Task::Up { args } => assert_eq!(args, ["--help", "x"]),
            _ => panic!("parsed as another task"),
        }
    }

    #[test]
    fn bench_options_parse() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--rounds", "2", "--quick"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Bench {
                rounds: Some(2),
                quick: true,
                ref only,
            } if only.is_empty()
        ));
        assert!(Cli::try_parse_from(["xtask", "bench", "--rounds", "0"]).is_err());
        assert_eq!(
            bench_command_line(Some(2), true, &[]),
            "cargo xtask bench --rounds 2 --quick"
        );
        let cli = Cli::try_parse_from([
            "xtask",
            "bench",
            "--only",
            "commands",
            "--only",
            "memory-ttl",
        ])
        .unwrap();
        match cli.task {
            Task::Bench { only, .. } => {
                assert_eq!(only, [bench::Part::Commands, bench::Part::MemoryTtl]);
                assert_eq!(
                    bench_command_line(None, false, &only),
                    "cargo xtask bench --only commands --only memory-ttl"
                );
            }
            _ => panic!("parsed as another task"),
        }
        let cli = Cli::try_parse_from(["xtask", "bench", "--only", "proxies"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Bench { ref only, .. } if only == &[bench::Part::Proxies]
        ));
        let cli = Cli::try_parse_from(["xtask", "bench", "--only", "cluster"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Bench { ref only, .. } if only == &[bench::Part::Cluster]
        ));
        assert!(Cli::try_parse_from(["xtask", "bench", "--only", "nothing"]).is_err());
    }

    #[test]
    fn sim_and_fuzz_options_parse() {
        let cli = Cli::try_parse_from(["xtask", "sim", "--seeds", "5", "--steps", "10"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Sim {
                seeds: 5,
                steps: Some(10),
                start: 0
            }
        ));
        let cli = Cli::try_parse_from(["xtask", "fuzz", "--time", "3", "--target", "x"]).unwrap();
        match cli.task {
            Task::Fuzz { time, targets } => {
                assert_eq!(time, 3);
                assert_eq!(targets, ["x"]);
            }
            _ => panic!("parsed as another task"),
        }
    }

    #[test]
    fn setup_only_parses_its_parts() {
        let cli = Cli::try_parse_from(["xtask", "setup", "--only", "system"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Setup {
                only: Some(Part::System)
            }
        ));
        let cli = Cli::try_parse_from(["xtask", "setup", "--only", "clients"]).unwrap();
        assert!(matches!(
            cli.task,
            Task::Setup {
                only: Some(Part::Clients)
            }
        ));
    }
}
