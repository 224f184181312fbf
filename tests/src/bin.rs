//! The `kv` binary under test: always the one built from the current
//! source, unless a test names another.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The environment variable that names a binary to test instead of the
/// workspace's own build (an installed or copied `kv`).
pub const KV_BIN_ENV: &str = "KV_BIN";

/// The root of the cargo workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The `kv` binary under test: `$KV_BIN` if set; otherwise the workspace's
/// release build, which the first call in each test process brings up to
/// date ([`build_kv`], a no-op when nothing changed). A test never runs a
/// binary older than the source.
///
/// # Panics
///
/// If `$KV_BIN` names no file, or the build fails.
pub fn kv_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os(KV_BIN_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{KV_BIN_ENV}={} is not a file",
                path.display()
            );
            path
        }
        None => build_kv().unwrap_or_else(|e| panic!("{e}")),
    })
    .clone()
}

/// Builds `kv` in release (`cargo build --release -p kv-native --bin kv`,
/// with the cargo in `$CARGO` if set, the compiler's messages on stderr) and
/// returns the path cargo reports for it. Unlike [`kv_bin`] it ignores
/// `$KV_BIN`, builds on every call, and fails with an error instead of
/// panicking.
pub fn build_kv() -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(&cargo)
        .args(["build", "--release", "-p", "kv-native", "--bin", "kv"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", Path::new(&cargo).display()),
            )
        })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "cargo build --release -p kv-native failed ({}); see the compiler's output above",
            output.status
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kv")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| io::Error::other("cargo build reported no executable for the kv binary"))
}
