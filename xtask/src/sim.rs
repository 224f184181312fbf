//! `cargo xtask sim`: many seeds of the deterministic simulation
//! (`core/tests/sim.rs`), in release, where it runs about ten times faster
//! than the debug build `cargo test` uses for its fixed seeds.
//!
//! The simulation's `many` test does the work; this passes it the seed
//! range as `SIM_*` variables. Its output ends with the steps per second,
//! or with a failure report: the seed, the step, a shrunk trace and the
//! command that replays it.

use anyhow::Result;

use crate::cmd::Cmd;

/// What to run.
pub struct Options {
    /// How many seeds.
    pub seeds: u64,
    /// Steps per seed (the simulation's default when `None`).
    pub steps: Option<u64>,
    /// The first seed.
    pub start: u64,
}

/// Runs the seeds; fails if any seed breaks an invariant.
pub fn run(options: &Options) -> Result<()> {
    let mut cmd = Cmd::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "kv-core",
            "--test",
            "sim",
            "--",
            "many",
            "--exact",
            "--nocapture",
        ])
        .env("SIM_SEEDS", options.seeds.to_string())
        .env("SIM_START", options.start.to_string());
    if let Some(steps) = options.steps {
        cmd = cmd.env("SIM_STEPS", steps.to_string());
    }
    cmd.run()
}
