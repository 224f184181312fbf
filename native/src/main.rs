//! The `kv` binary: parses the command line, sets up logging, and hands over
//! to `kv_native`.

use anyhow::Context;
use clap::Parser;
use kv_native::args::{KvArgs, KvCommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = KvArgs::parse();
    init_logging();
    let result = match &args.command {
        KvCommand::Cli(cli) => return ExitCode::from(kv_native::cli::run(cli)),
        KvCommand::Server(a) => kv_native::app::run_server(a).context("kv server"),
        KvCommand::Proxy(a) => kv_native::app::run_proxy(a).context("kv proxy"),
        KvCommand::Up(a) => kv_native::app::run_up(a).context("kv up"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries the announcement lines), filtered by
/// `RUST_LOG`, `info` by default.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
