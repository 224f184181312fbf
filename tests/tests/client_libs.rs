//! Real Redis client libraries, each at its default settings, against the
//! server and through the proxy: redis-py, node-redis and ioredis run the
//! scripts in `tests/clients/`. At their defaults all three open with
//! `HELLO 3` (RESP3), and ioredis sends `INFO` as its ready check, so this is
//! what applications meet, not what `redis-cli` gets away with.
//!
//! Each script checks, with exact values, `SET … EX`, `GET`, `MGET` with a
//! missing key, `INCR`, `EXPIRE`/`TTL`, `PEXPIRE`/`PTTL`, a pipeline, and a
//! `WATCH`/`MULTI`/`EXEC` that commits and one that another connection
//! makes fail; it stops at the first mismatch, naming it.
//! Through the proxy the transactions run on a dedicated upstream
//! connection of the client's own (`--no-transactions` leaves them out, for
//! a proxy started with `--max-dedicated 0`).
//!
//! `cargo xtask setup` installs the libraries into `tests/clients/.venv` and
//! `tests/clients/node_modules`; a test whose library is missing fails and
//! says so. With `KV_TESTS_CLIENT_LIBS_ADDR=HOST:PORT` the scripts run, with
//! transactions, against that server instead of a kv started here, e.g. a
//! `redis-server`, to check the scripts and this harness themselves.

use kv_tests::{
    clients_dir, node_modules, require_tool, run_tool, start_stack, venv_python,
    ALLOW_MISSING_TOOLS_ENV,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names a running Redis-compatible server to test instead of kv.
const EXTERNAL_ADDR_ENV: &str = "KV_TESTS_CLIENT_LIBS_ADDR";

/// For one run of a script: a passing run takes well under a second, and
/// the scripts' own watchdogs (20 s in checks.mjs; redis-py's socket
/// timeouts) report a server that stops answering before this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A client library and the script in `tests/clients/` that drives it.
struct Library {
    name: &'static str,
    script: &'static str,
    runtime: Runtime,
}

enum Runtime {
    /// The virtual environment's interpreter, which has redis-py.
    Python,
    /// `node`, with the npm package `package` in `tests/clients/node_modules`.
    Node { package: &'static str },
}

const REDIS_PY: Library = Library {
    name: "redis-py",
    script: "redis_py.py",
    runtime: Runtime::Python,
};

const NODE_REDIS: Library = Library {
    name: "node-redis",
    script: "node_redis.mjs",
    runtime: Runtime::Node { package: "redis" },
};

const IOREDIS: Library = Library {
    name: "ioredis",
    script: "ioredis.mjs",
    runtime: Runtime::Node { package: "ioredis" },
};

impl Library {
    /// The program that runs the script, and the script; `None` (after a
    /// note) only when missing tools are allowed and something is missing.
    ///
    /// # Panics
    ///
    /// If the library or its runtime is missing: CI runs `cargo xtask
    /// setup` first, so that is a broken setup, not a reason to skip.
    fn command(&self) -> Option<(PathBuf, PathBuf)> {
        let script = clients_dir().join(self.script);
        assert!(script.is_file(), "{} is missing", script.display());
        let program = match self.runtime {
            Runtime::Python => {
                let python = venv_python();
                installed(&python, "redis-py's Python virtual environment")?;
                python
            }
            Runtime::Node { package } => {
                let node = require_tool("node")?;
                let manifest = node_modules().join(package).join("package.json");
                installed(&manifest, &format!("the npm package `{package}`"))?;
                node
            }
        };
        Some((program, script))
    }
}

/// Whether `path`, which setup makes, is there: panics, or with missing
/// tools allowed returns `None`, after saying to run `cargo xtask setup`.
fn installed(path: &Path, what: &str) -> Option<()> {
    if path.exists() {
        return Some(());
    }
    let why = format!(
        "{what} is not installed ({} is missing): run `cargo xtask setup`",
        path.display()
    );
    if std::env::var(ALLOW_MISSING_TOOLS_ENV).as_deref() == Ok("1") {
        eprintln!("note: {why}; skipping this test because {ALLOW_MISSING_TOOLS_ENV}=1");
        return None;
    }
    panic!("{why} (or set {ALLOW_MISSING_TOOLS_ENV}=1 to skip the tests that need it)");
}

/// Runs the script against `host:port`; returns a description of the
/// failure, output included, if it did not pass.
fn run_script(
    lib: &Library,
    (program, script): &(PathBuf, PathBuf),
    host: &str,
    port: u16,
    transactions: bool,
    against: &str,
) -> Result<(), String> {
    let port = port.to_string();
    let mut args = vec![script.to_string_lossy().into_owned(), host.to_owned(), port];
    if !transactions {
        args.push("--no-transactions".to_owned());
    }
    let out = run_tool(program, &args, SCRIPT_TIMEOUT);
    if out.code() == Some(0) {
        // Every check it passed, for --nocapture or another run's failure.
        println!("--- {} against the {against} ---\n{}", lib.name, out.stdout);
        return Ok(());
    }
    // The script's `FAIL [...]` line is on stderr, so it comes first.
    Err(format!(
        "{} against the {against} failed ({}): {} {args:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
        lib.name,
        out.status,
        program.display(),
        out.stderr,
        out.stdout
    ))
}

/// Runs `lib`'s script against a kv server, then through a kv proxy in
/// front of it (both, so that one failure does not hide the other), or
/// only against the server named by `KV_TESTS_CLIENT_LIBS_ADDR`.
fn check_library(lib: &Library) {
    let Some(command) = lib.command() else {
        return;
    };
    let external = std::env::var(EXTERNAL_ADDR_ENV).ok();
    let failures: Vec<String> = match external.filter(|addr| !addr.is_empty()) {
        Some(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse().ok()?)))
                .unwrap_or_else(|| panic!("{EXTERNAL_ADDR_ENV}={addr:?} is not HOST:PORT"));
            let against = format!("server at {EXTERNAL_ADDR_ENV}={addr}");
            run_script(lib, &command, host, port, true, &against)
                .err()
                .into_iter()
                .collect()
        }
        None => {
            let (server, proxy) = start_stack(&[], &[]);
            let runs = [
                (server.server_addr(), true, "kv server"),
                (proxy.proxy_addr(), true, "kv proxy"),
            ];
            runs.iter()
                .filter_map(|&(addr, transactions, against)| {
                    let host = addr.ip().to_string();
                    run_script(lib, &command, &host, addr.port(), transactions, against).err()
                })
                .collect()
        }
    };
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn redis_py_against_server_and_proxy() {
    check_library(&REDIS_PY);
}

#[test]
fn node_redis_against_server_and_proxy() {
    check_library(&NODE_REDIS);
}

#[test]
fn ioredis_against_server_and_proxy() {
    check_library(&IOREDIS);
}

/// The libraries' own client-side caches, which rest on the node's
/// `CLIENT TRACKING`: redis-py's (`protocol=3, cache_config=…`) and
/// node-redis's (`RESP: 3, clientSideCache`). The second read of a key is
/// answered by the library without a request, and a write from another
/// connection reaches it as an invalidation: from the server itself, and
/// through the proxy (whose clients get invalidations for what they read
/// through it).
const REDIS_PY_CACHE: Library = Library {
    name: "redis-py client-side cache",
    script: "redis_py_cache.py",
    runtime: Runtime::Python,
};

const NODE_REDIS_CACHE: Library = Library {
    name: "node-redis client-side cache",
    script: "node_redis_cache.mjs",
    runtime: Runtime::Node { package: "redis" },
};

fn check_client_side_cache(lib: &Library) {
    let Some(command) = lib.command() else {
        return;
    };
    let (server, proxy) = start_stack(&[], &[]);
    let runs = [
        (server.server_addr(), "kv server"),
        (proxy.proxy_addr(), "kv proxy"),
    ];
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|&(addr, against)| {
            let host = addr.ip().to_string();
            run_script(lib, &command, &host, addr.port(), true, against).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn redis_py_client_side_cache_against_server_and_proxy() {
    check_client_side_cache(&REDIS_PY_CACHE);
}

#[test]
fn node_redis_client_side_cache_against_server_and_proxy() {
    check_client_side_cache(&NODE_REDIS_CACHE);
}
