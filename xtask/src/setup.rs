//! `cargo xtask setup`: installs the tools the project needs, each only when
//! it is missing, so that running it again is cheap and changes nothing.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kv_tests::{clients_dir, node_modules, python_venv, venv_python, which};
use serde_json::Value;

use crate::cmd::Cmd;

/// The rustup target the wasm client (and kv-core's wasm check) builds for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Toolchain components that `cargo xtask test` runs (`cargo fmt`, `cargo clippy`).
const COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// Debian packages needed by the tests: a Redis server and client to compare
/// against, twemproxy (`nutcracker`) for the benchmark to compare the proxy
/// with, a headless Chromium with its WebDriver for browser tests, Node.js
/// for the wasm unit tests (`wasm-bindgen-test-runner` runs them in Node) and
/// the Node.js client libraries, Python's `venv` for redis-py's virtual
/// environment, a C++ compiler for libFuzzer, which the fuzz targets'
/// check builds, and `make`, with which `tikv-jemalloc-sys` builds the
/// allocator `kv` runs on.
const DEBIAN_PACKAGES: &[&str] = &[
    "redis-server",
    "redis-tools",
    "nutcracker",
    "chromium",
    "chromium-driver",
    "nodejs",
    "python3-venv",
    "g++",
    "make",
];

/// Debian's package for `npm`, wanted only when no `npm` is on `PATH`: a
/// `nodejs` built by NodeSource bundles npm and conflicts with this package.
const NPM_PACKAGE: &str = "npm";

/// Debian's hook that maintainer scripts ask before starting a service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Packages of [`DEBIAN_PACKAGES`] whose maintainer scripts start a
/// system-wide service on install: Redis on port 6379, and twemproxy (whose
/// unit comes up only once someone writes /etc/nutcracker/nutcracker.yml,
/// but whose scripts ask all the same). The tests and the benchmark start
/// their own on free ports; a system one would only hold a port and a share
/// of the CPU.
const SERVICE_PACKAGES: &[&str] = &["redis-server", "nutcracker"];

/// The wasm-bindgen command-line tools matching the `wasm-bindgen` crate in
/// `Cargo.lock`.
pub struct WasmTools {
    /// The `wasm-bindgen` binary, by absolute path, as it may not be on `PATH`.
    pub wasm_bindgen: PathBuf,
    /// `wasm-bindgen-test-runner` installed beside it, if present.
    pub test_runner: Option<PathBuf>,
}

/// Makes sure the rustup components that the checks need are installed.
pub fn components() -> Result<()> {
    let installed = rustup(&["component", "list", "--installed"])?;
    // rustup lists components with the host triple appended, e.g.
    // `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|name| {
            !installed
                .lines()
                .map(str::trim)
                .any(|line| line == *name || line.starts_with(&format!("{name}-")))
        })
        .collect();
    for name in COMPONENTS.iter().filter(|n| !missing.contains(n)) {
        skipped(&format!("rustup component {name} is already installed"));
    }
    if !missing.is_empty() {
        Cmd::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .run()?;
    }
    Ok(())
}

/// Makes sure the `wasm32-unknown-unknown` target is installed.
pub fn wasm_target() -> Result<()> {
    let installed = rustup(&["target", "list", "--installed"])?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        skipped(&format!("rustup target {WASM_TARGET} is already installed"));
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .run()
}

/// Makes sure `wasm-bindgen` is installed at exactly the version of the
/// `wasm-bindgen` crate in `Cargo.lock`: the CLI refuses wasm files produced
/// by any other version.
///
/// Returns `None`, after saying so, when `Cargo.lock` has no `wasm-bindgen`
/// (no crate uses it yet). With `install` false it only looks, and fails if
/// the right version is not there.
pub fn wasm_bindgen_cli(install: bool) -> Result<Option<WasmTools>> {
    let lock = match fs::read_to_string("Cargo.lock") {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("could not read Cargo.lock"),
    };
    let version = match locked_version(&lock, "wasm-bindgen")? {
        Some(version) => version,
        None => {
            skipped("wasm-bindgen-cli: Cargo.lock has no wasm-bindgen package yet");
            return Ok(None);
        }
    };

    if let Some(tools) = find_wasm_bindgen(&version)? {
        skipped(&format!(
            "wasm-bindgen-cli {version} is already installed ({})",
            tools.wasm_bindgen.display()
        ));
        return Ok(Some(tools));
    }
    if !install {
        bail!("wasm-bindgen {version} not found: run `cargo xtask setup --only wasm`");
    }
    let install = |locked: bool| {
        let cmd = Cmd::cargo().args(["install", "wasm-bindgen-cli", "--version"]);
        let cmd = cmd.arg(format!("={version}"));
        if locked {
            cmd.arg("--locked").run()
        } else {
            cmd.run()
        }
    };
    // The crate's own lockfile is the tested set of dependencies, but it can
    // name a version the registry does not serve (yanked, or missing from a
    // mirror); then a fresh resolution is better than no tool at all.
    if let Err(e) = install(true) {
        eprintln!("xtask: warning: {e:#}; retrying without --locked");
        install(false)?;
    }
    match find_wasm_bindgen(&version)? {
        Some(tools) => Ok(Some(tools)),
        None => bail!(
            "installed wasm-bindgen-cli {version}, but found no wasm-bindgen {version} \
             on PATH or in cargo's bin directory"
        ),
    }
}

/// Makes sure the Debian packages the tests need are installed, with
/// `apt-get`, as root or through `sudo`.
pub fn system_packages() -> Result<()> {
    let mut missing = Vec::new();
    for &name in DEBIAN_PACKAGES {
        if dpkg_installed(name)? {
            skipped(&format!("Debian package {name} is already installed"));
        } else {
            missing.push(name);
        }
    }
    match which("npm") {
        Some(npm) => skipped(&format!("npm is already installed ({})", npm.display())),
        None => missing.push(NPM_PACKAGE),
    }
    if missing.is_empty() {
        return Ok(());
    }

    let privilege = Privilege::detect(&missing)?;
    privilege
        .cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .run()?;
    // The redis-server and nutcracker packages would start system-wide
    // services right away (see SERVICE_PACKAGES); keep services off while
    // apt-get installs, unless the machine already has a policy of its own.
    let _guard = if missing.iter().any(|name| SERVICE_PACKAGES.contains(name)) {
        Some(NoServiceStart::install(&privilege)?)
    } else {
        None
    };
    privilege
        .cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .run()
}

/// Makes sure the Redis client libraries that the end-to-end tests drive
/// (tests/tests/client_libs.rs) are installed at the versions pinned in
/// `tests/clients/`: redis-py in a Python virtual environment, node-redis
/// and ioredis in `node_modules`. Needs `python3` with `venv`, and `npm`,
/// which [`system_packages`] installs.
pub fn client_libs() -> Result<()> {
    python_client()?;
    node_clients()
}

/// redis-py, at the version in `tests/clients/requirements.txt`, in the
/// virtual environment `tests/clients/.venv`.
fn python_client() -> Result<()> {
    let requirements = clients_dir().join("requirements.txt");
    let text = fs::read_to_string(&requirements)
        .with_context(|| format!("could not read {}", requirements.display()))?;
    let pins =
        pinned_requirements(&text).with_context(|| format!("in {}", requirements.display()))?;

    let venv = python_venv();
    let python = venv_python();
    // An environment whose interpreter does not run (never made, or made
    // from a Python that is gone since) is made anew.
    let runs = Cmd::new(&python)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        skipped(&format!(
            "Python virtual environment {} already exists",
            venv.display()
        ));
    } else {
        if which("python3").is_none() {
            bail!(
                "python3 not found: install Python 3 with its venv module (Debian: python3-venv)"
            );
        }
        Cmd::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .run()
            .context(
                "could not make the virtual environment; on Debian it needs the \
                 python3-venv package: `cargo xtask setup --only system`",
            )?;
    }

    let mut stale = Vec::new();
    for (name, version) in &pins {
        let installed = Cmd::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
            ])
            .arg(name)
            .output()?;
        let found = String::from_utf8_lossy(&installed.stdout).trim().to_owned();
        if installed.status.success() && found == *version {
            skipped(&format!(
                "Python package {name}=={version} is already installed"
            ));
        } else {
            stale.push(format!("{name}=={version}"));
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: not installed: {}", stale.join(", "));
    Cmd::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&requirements)
        .run()
}

/// The `name==version` pins of a `requirements.txt`. Only exact pins are
/// accepted: they are what makes "already installed" a simple comparison.
fn pinned_requirements(text: &str) -> Result<Vec<(String, String)>> {
    let mut pins = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once("==") {
            Some((name, version)) if !name.trim().is_empty() && !version.trim().is_empty() => {
                pins.push((name.trim().to_owned(), version.trim().to_owned()));
            }
            _ => bail!(
                "line {}: `{line}` is not an exact pin `name==version`",
                number + 1
            ),
        }
    }
    Ok(pins)
}

/// node-redis and ioredis into `tests/clients/node_modules`: `npm ci` from
/// the committed `package-lock.json`, or `npm install` (which writes the
/// lock) when there is none yet.
fn node_clients() -> Result<()> {
    let dir = clients_dir();
    if which("npm").is_none() {
        bail!("npm not found: `cargo xtask setup --only system` installs it");
    }
    let lock_path = dir.join("package-lock.json");
    let verb = if lock_path.exists() {
        let lock = read_json(&lock_path)?;
        let stale = stale_node_packages(&lock, &node_modules())?;
        if stale.is_empty() {
            skipped(&format!(
                "Node packages in {} match package-lock.json",
                node_modules().display()
            ));
            return Ok(());
        }
        if node_modules().exists() {
            eprintln!("xtask: not installed as locked: {}", stale.join(", "));
        }
        "ci"
    } else {
        "install"
    };
    // --engine-strict: node-redis and ioredis name the Node.js versions they
    // support, and an older Node.js had better fail here than in a test.
    Cmd::new("npm")
        .arg(verb)
        .arg("--prefix")
        .arg(&dir)
        .args(["--engine-strict", "--no-audit", "--no-fund"])
        .run()
}

/// The packages of a `package-lock.json` (lockfile version 2 or 3) that are
/// not installed in `node_modules` at their locked version. Optional ones
/// (e.g. for another platform) may be absent.
fn stale_node_packages(lock: &Value, node_modules: &Path) -> Result<Vec<String>> {
    let Some(packages) = lock["packages"].as_object() else {
        bail!("package-lock.json has no `packages`: regenerate it with npm 7 or newer");
    };
    let mut stale = Vec::new();
    for (key, entry) in packages {
        // `""` is the project itself; nested entries read
        // `node_modules/a/node_modules/b`.
        let Some(path) = key.strip_prefix("node_modules/") else {
            continue;
        };
        if entry["optional"].as_bool() == Some(true) || entry["link"].as_bool() == Some(true) {
            continue;
        }
        let manifest = node_modules.join(path).join("package.json");
        let installed = fs::read_to_string(&manifest)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|m| m["version"].as_str().map(str::to_owned));
        if installed.as_deref() != entry["version"].as_str() {
            stale.push(path.to_owned());
        }
    }
    Ok(stale)
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Prints that a step was skipped because its tool is already present.
fn skipped(what: &str) {
    eprintln!("xtask: skip: {what}");
}

/// Runs `rustup` with `args` and returns its stdout, failing with a hint when
/// rustup is missing.
fn rustup(args: &[&str]) -> Result<String> {
    if which("rustup").is_none() {
        bail!(
            "rustup not found: it manages the Rust toolchain here (https://rustup.rs); \
             without it, install the clippy and rustfmt components and the \
             {WASM_TARGET} target by other means"
        );
    }
    Cmd::new("rustup").args(args).read()
}

/// The version of package `name` recorded in the text of a `Cargo.lock`, or
/// `None` when it is not there. Fails if several versions are locked, since
/// there would be no single CLI version to install.
fn locked_version(lock: &str, name: &str) -> Result<Option<String>> {
    let mut versions: Vec<String> = Vec::new();
    // Each package is a `[[package]]` table of `key = "value"` lines; a plain
    // string scan is enough for cargo's fixed format.
    for table in lock.split("[[package]]").skip(1) {
        let mut found_name = None;
        let mut found_version = None;
        for line in table.lines().map(str::trim) {
            if line.starts_with('[') {
                break; // The next table (e.g. `[metadata]`) starts here.
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = value.trim().trim_matches('"');
                match key.trim() {
                    "name" => found_name = Some(value),
                    "version" => found_version = Some(value),
                    _ => {}
                }
            }
        }
        if let (Some(n), Some(v)) = (found_name, found_version) {
            if n == name && !versions.iter().any(|known| known == v) {
                versions.push(v.to_owned());
            }
        }
    }
    match versions.len() {
        0 => Ok(None),
        1 => Ok(versions.pop()),
        _ => bail!(
            "Cargo.lock has several versions of {name} ({}); keep one so that \
             wasm-bindgen-cli can match it",
            versions.join(", ")
        ),
    }
}

/// Looks for a `wasm-bindgen` of exactly `version` on `PATH` and in cargo's
/// bin directories (which may be missing from `PATH`, e.g. in CI).
fn find_wasm_bindgen(version: &str) -> Result<Option<WasmTools>> {
    let mut candidates: Vec<PathBuf> = which("wasm-bindgen").into_iter().collect();
    for dir in cargo_bin_dirs() {
        let path = dir.join("wasm-bindgen");
        if path.is_file() && !candidates.contains(&path) {
            candidates.push(path);
        }
    }
    for path in candidates {
        // A binary that cannot run counts as missing, not as an error.
        let Ok(output) = Cmd::new(&path).arg("--version").output() else {
            continue;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        // The output reads `wasm-bindgen X.Y.Z`.
        let found = stdout.split_whitespace().nth(1).unwrap_or("");
        if output.status.success() && found == version {
            let runner = path.with_file_name("wasm-bindgen-test-runner");
            return Ok(Some(WasmTools {
                wasm_bindgen: path,
                test_runner: runner.is_file().then_some(runner),
            }));
        }
        eprintln!(
            "xtask: {} is version {}, but Cargo.lock wants {version}",
            path.display(),
            if found.is_empty() { "unknown" } else { found }
        );
    }
    Ok(None)
}

/// The directories `cargo install` may have put binaries in, most specific
/// first: `$CARGO_INSTALL_ROOT/bin`, `$CARGO_HOME/bin`, `~/.cargo/bin`.
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(root) = env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(root).join("bin"));
        }
    }
    if let Some(home) = env::var_os("HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    dirs
}

/// Whether dpkg reports Debian package `name` as fully installed.
fn dpkg_installed(name: &str) -> Result<bool> {
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .context(
            "dpkg-query not found: `setup` installs system packages on Debian \
             only; elsewhere install Redis, twemproxy, Chromium and ChromeDriver \
             by hand and use `cargo xtask setup --only wasm`",
        )?;
    // dpkg-query exits non-zero for packages it has never heard of, which
    // simply means "not installed"; a removed package reports another status.
    Ok(String::from_utf8_lossy(&output.stdout).contains("install ok installed"))
}

/// How to run commands as root.
enum Privilege {
    /// Already root: run commands as they are.
    Root,
    /// Run through `sudo`; `non_interactive` adds `-n` so that sudo fails
    /// instead of waiting for a password nobody can type.
    Sudo { non_interactive: bool },
}

impl Privilege {
    /// Works out how to get root, or fails saying what to install by hand.
    fn detect(packages: &[&str]) -> Result<Self> {
        if is_root()? {
            return Ok(Privilege::Root);
        }
        if which("sudo").is_some() {
            use std::io::IsTerminal;
            return Ok(Privilege::Sudo {
                non_interactive: !std::io::stdin().is_terminal(),
            });
        }
        bail!(
            "installing Debian packages needs root, and there is no sudo: as root, run \
             `apt-get update && apt-get install -y --no-install-recommends {}`",
            packages.join(" ")
        )
    }

    /// A command running `program` as root.
    fn cmd(&self, program: &str) -> PrivilegedCmd<'_> {
        PrivilegedCmd {
            privilege: self,
            program: program.to_owned(),
            envs: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A command to run as root, turned into a [`Cmd`] when run.
///
/// Kept apart from [`Cmd`] because under sudo the environment must travel as
/// `env VAR=value` arguments: sudo drops the caller's environment.
struct PrivilegedCmd<'a> {
    privilege: &'a Privilege,
    program: String,
    envs: Vec<(String, String)>,
    args: Vec<String>,
}

impl PrivilegedCmd<'_> {
    fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        self.args.extend(args.into_iter().map(|a| a.to_string()));
        self
    }

    fn run(self) -> Result<()> {
        let cmd = match self.privilege {
            Privilege::Root => self
                .envs
                .iter()
                .fold(Cmd::new(&self.program), |cmd, (k, v)| cmd.env(k, v)),
            Privilege::Sudo { non_interactive } => {
                let mut cmd = Cmd::new("sudo");
                if *non_interactive {
                    cmd = cmd.arg("-n");
                }
                if !self.envs.is_empty() {
                    cmd = cmd
                        .arg("env")
                        .args(self.envs.iter().map(|(k, v)| format!("{k}={v}")));
                }
                cmd.arg(&self.program)
            }
        };
        cmd.args(&self.args).run()
    }
}

/// Whether this process runs with effective user id 0.
fn is_root() -> Result<bool> {
    // std has no getuid(); /proc/self/status has the ids on its `Uid:` line
    // (real, effective, saved, filesystem).
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return Ok(line.split_whitespace().nth(2) == Some("0"));
        }
    }
    Ok(Cmd::new("id").arg("-u").read()?.trim() == "0")
}

/// While alive, a `policy-rc.d` that denies every service start, so that
/// installing redis-server or nutcracker does not also start it. Removed on
/// drop, also when the install fails.
struct NoServiceStart<'a> {
    /// Set when this guard wrote the policy file and must remove it.
    privilege: Option<&'a Privilege>,
}

impl<'a> NoServiceStart<'a> {
    fn install(privilege: &'a Privilege) -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            // Typical of Docker images, whose policy already denies starts;
            // either way it is the machine owner's to keep.
            eprintln!("xtask: keeping the existing {POLICY_RC_D}");
            return Ok(NoServiceStart { privilege: None });
        }
        // Exit status 101 means "action forbidden by policy" to invoke-rc.d
        // and deb-systemd-invoke.
        let script = env::temp_dir().join(format!("xtask-policy-rc.d-{}", std::process::id()));
        fs::write(
            &script,
            "#!/bin/sh\n# Written by cargo xtask setup.\nexit 101\n",
        )
        .with_context(|| format!("could not write {}", script.display()))?;
        let result = privilege
            .cmd("install")
            .args(["-m", "0755"])
            .arg(script.to_string_lossy())
            .arg(POLICY_RC_D)
            .run();
        let _ = fs::remove_file(&script);
        result?;
        Ok(NoServiceStart {
            privilege: Some(privilege),
        })
    }
}

impl Drop for NoServiceStart<'_> {
    fn drop(&mut self) {
        if let Some(privilege) = self.privilege {
            if let Err(e) = privilege.cmd("rm").args(["-f", POLICY_RC_D]).run() {
                eprintln!("xtask: warning: could not remove {POLICY_RC_D}: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"# This file is automatically @generated by Cargo.
version = 4

[[package]]
name = "wasm-bindgen"
version = "0.2.100"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "cfg-if",
 "wasm-bindgen-macro",
]

[[package]]
name = "wasm-bindgen-macro"
version = "0.2.101"
"#;

    #[test]
    fn finds_locked_version_by_exact_name() {
        assert_eq!(
            locked_version(LOCK, "wasm-bindgen").unwrap().as_deref(),
            Some("0.2.100")
        );
        assert_eq!(
            locked_version(LOCK, "wasm-bindgen-macro")
                .unwrap()
                .as_deref(),
            Some("0.2.101")
        );
    }

    #[test]
    fn missing_package_is_none() {
        assert_eq!(locked_version(LOCK, "kv-core").unwrap(), None);
        assert_eq!(locked_version("", "wasm-bindgen").unwrap(), None);
    }

    #[test]
    fn several_versions_are_an_error() {
        let lock = format!("{LOCK}\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.99\"\n");
        assert!(locked_version(&lock, "wasm-bindgen").is_err());
    }

    #[test]
    fn requirements_must_be_exact_pins() {
        let text = "# comment\n\nredis==8.1.0  # trailing\nfoo == 1.2\n";
        assert_eq!(
            pinned_requirements(text).unwrap(),
            [
                ("redis".to_owned(), "8.1.0".to_owned()),
                ("foo".to_owned(), "1.2".to_owned())
            ]
        );
        assert!(pinned_requirements("redis>=8\n").is_err());
        assert!(pinned_requirements("redis\n").is_err());
        assert!(pinned_requirements("").unwrap().is_empty());
    }

    #[test]
    fn node_packages_compare_with_the_lock() {
        let dir = std::env::temp_dir().join(format!("xtask-node-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(dir.join("a/package.json"), r#"{"version": "1.0.0"}"#).unwrap();
        fs::create_dir_all(dir.join("b")).unwrap();
        fs::write(dir.join("b/package.json"), r#"{"version": "0.9.0"}"#).unwrap();
        let lock: Value = serde_json::from_str(
            r#"{"packages": {
                "": {"name": "root"},
                "node_modules/a": {"version": "1.0.0"},
                "node_modules/b": {"version": "1.0.0"},
                "node_modules/c": {"version": "1.0.0"},
                "node_modules/d": {"version": "1.0.0", "optional": true}
            }}"#,
        )
        .unwrap();
        let stale = stale_node_packages(&lock, &dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(stale, ["b", "c"]);
        assert!(stale_node_packages(&serde_json::json!({}), &dir).is_err());
    }
}
