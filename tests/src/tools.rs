//! External tools the tests use (`redis-cli`, `chromium` …), and the
//! process's file descriptor limit.

use std::path::{Path, PathBuf};

/// The environment variable that turns a missing external tool from a failure
/// into a skipped test (`KV_TESTS_ALLOW_MISSING_TOOLS=1`).
pub const ALLOW_MISSING_TOOLS_ENV: &str = "KV_TESTS_ALLOW_MISSING_TOOLS";

/// Finds an executable named `name` on `PATH`, like `which`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds the external tool `name` (e.g. `redis-cli`) for a test that needs it.
///
/// Returns `None` only when `KV_TESTS_ALLOW_MISSING_TOOLS=1` is set and the
/// tool is missing: the test should then return early (a note is printed).
///
/// # Panics
///
/// If the tool is missing and missing tools are not allowed: CI installs
/// them, so a missing tool is a broken setup, not a reason to skip.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(path) = which(name) {
        return Some(path);
    }
    if std::env::var(ALLOW_MISSING_TOOLS_ENV).as_deref() == Ok("1") {
        eprintln!(
            "note: `{name}` is not on PATH; skipping this test because {ALLOW_MISSING_TOOLS_ENV}=1 (run `cargo xtask setup` to install it)"
        );
        return None;
    }
    panic!(
        "`{name}` is not on PATH: run `cargo xtask setup` to install the test tools \
         (or set {ALLOW_MISSING_TOOLS_ENV}=1 to skip the tests that need it)"
    );
}

/// Raises this process's soft limit on open files to at least `want` (within
/// the hard limit), so that tests with many connections work on machines with
/// a low default. Children spawned afterwards inherit the raised limit.
pub fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to an
    // initialized rlimit struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = want as libc::rlim_t;
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
