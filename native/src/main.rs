//! The `kv` binary: parses the command line, sets up logging, and hands over
//! to `kv_native`.

use kv_native::args::{ArgsError, KvCommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// jemalloc: its count of allocated bytes is what `--maxmemory` bounds
/// (read cheaply, and exactly, from its statistics), and it returns freed
/// pages to the OS on its own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = match kv_native::args::parse_from(std::env::args_os()) {
        Ok(args) => args,
        Err(ArgsError::Clap(e)) => e.exit(),
        Err(ArgsError::Config(e)) => {
            eprintln!("error: {e}");
            // clap's code for a usage error, which a bad file is too.
            return ExitCode::from(2);
        }
    };
    init_logging();
    let result = match &args.command {
        KvCommand::Cli(cli) => return ExitCode::from(kv_native::cli::run(cli)),
        KvCommand::Server(a) => kv_native::app::run_server(a),
        KvCommand::Proxy(a) => kv_native::app::run_proxy(a),
        KvCommand::Up(a) => kv_native::app::run_up(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // kv's errors name their cause in their own message, so only that
        // is printed: walking `source()` too would say the cause twice.
        Err(e) => {
            eprintln!("error: {e}");
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
