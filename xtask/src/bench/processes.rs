//! The servers the benchmark starts, and their clean-up: whatever a phase
//! starts ends with it, whether it succeeded or not.
//!
//! `kv` announces the address it picked on stdout; reading that is the test
//! harness's job ([`kv_tests::Announcer`]), so the benchmark and the
//! end-to-end tests agree on what `kv` prints. Redis cannot pick a port and
//! print it, so it is given one.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv_tests::{try_free_port, AnnounceError, Announcer};

use super::resp::Conn;
use crate::cmd::Cmd;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long removing a data directory is retried (see [`remove_dir`]).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often removing a data directory is retried.
const REMOVE_RETRY: Duration = Duration::from_millis(50);

/// A server process this benchmark started.
pub(super) struct Service {
    /// Where it listens.
    pub(super) addr: SocketAddr,
    /// Its process id, to read its memory use.
    pub(super) pid: u32,
    /// The command line it was started with, for the report.
    pub(super) command: String,
}

/// The processes started by one phase, and the data directories made for
/// them. Dropping it kills and reaps the processes, then removes the
/// directories, so that nothing outlives the benchmark, whether it fails or
/// not.
#[derive(Default)]
pub(super) struct Processes {
    /// Each with the name its log and messages use, in start order.
    children: Vec<(String, Child)>,
    /// Removed after the processes that used them are gone.
    dirs: Vec<PathBuf>,
}

impl Processes {
    /// Starts `redis-server` on a free port, persistence off, logging to
    /// `logs/NAME.log`, and waits until it answers `PING`.
    pub(super) fn redis(&mut self, out: &Path, name: &str) -> Result<Service> {
        let dir = out.join(name);
        fs::create_dir_all(&dir)?;
        self.redis_with(out, name, &dir, &["--appendonly", "no"])
    }

    /// Starts `redis-server` like [`Processes::redis`], but with the
    /// persistence settings `persistence` (RDB snapshots stay off) and its
    /// files in `dir`.
    pub(super) fn redis_with(
        &mut self,
        out: &Path,
        name: &str,
        dir: &Path,
        persistence: &[&str],
    ) -> Result<Service> {
        // Redis must be told its port (it cannot report one it picked), so
        // there is a short window in which another program could take it;
        // starting Redis then fails loudly.
        let port = try_free_port().context("could not find a free port")?;
        let log = log_file(out, name)?;
        let cmd = Cmd::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        let command = cmd.to_string();
        let child = cmd.spawn(Stdio::from(log.try_clone()?), Stdio::from(log))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut conn = Conn::connect(addr, deadline)
            .with_context(|| format!("{name} did not start; see {}", log_path(out, name)))?;
        let pong = conn.command(&[b"PING"])?;
        ensure!(pong == "PONG", "{name} answered PING with {pong:?}");
        Ok(Service { addr, pid, command })
    }

    /// Starts twemproxy (`nutcracker`) with the configuration file `config`
    /// (checked first with `nutcracker -t`), logging to `logs/NAME.log`, and
    /// waits until it answers `PING` at `listen`, the address the file names.
    /// Its stats port, which it would otherwise open on every interface at
    /// 22222, is put on a free loopback port.
    pub(super) fn nutcracker(
        &mut self,
        out: &Path,
        name: &str,
        config: &Path,
        listen: SocketAddr,
    ) -> Result<Service> {
        let test = Cmd::new("nutcracker").arg("-t").arg("-c").arg(config);
        let checked = test.output()?;
        ensure!(
            checked.status.success(),
            "`{test}` rejects the configuration: {}{}",
            String::from_utf8_lossy(&checked.stdout).trim(),
            String::from_utf8_lossy(&checked.stderr).trim()
        );
        let stats = try_free_port().context("could not find a free port")?;
        let log = log_file(out, name)?;
        // Debian's build logs to /var/log/nutcracker/ unless told otherwise.
        let cmd = Cmd::new("nutcracker")
            .arg("-c")
            .arg(config)
            .args(["-a", "127.0.0.1", "-s", &stats.to_string()])
            .args(["-o", &log_path(out, name)]);
        let command = cmd.to_string();
        let child = cmd.spawn(Stdio::from(log.try_clone()?), Stdio::from(log))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut conn = Conn::connect(listen, deadline)
            .with_context(|| format!("{name} did not start; see {}", log_path(out, name)))?;
        let pong = conn.command(&[b"PING"])?;
        ensure!(pong == "PONG", "{name} answered PING with {pong:?}");
        eprintln!("xtask bench: {name} (pid {pid}) listening on {listen}");
        Ok(Service {
            addr: listen,
            pid,
            command,
        })
    }

    /// An empty directory at `path` (anything left there by an earlier run
    /// is removed first), removed again when `self` is dropped.
    pub(super) fn fresh_dir(&mut self, path: PathBuf) -> Result<PathBuf> {
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("could not remove {}", path.display()))?;
        }
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        self.dirs.push(path.clone());
        Ok(path)
    }

    /// Starts `kv ARGS` (which must include `--listen 127.0.0.1:0`) and
    /// waits for the line announcing the address it listens on.
    pub(super) fn kv(
        &mut self,
        kv: &Path,
        args: &[String],
        out: &Path,
        name: &str,
    ) -> Result<Service> {
        let log = log_file(out, name)?;
        let cmd = Cmd::new(kv).args(args);
        // The report names the binary as users run it.
        let command = cmd.to_string().replacen(&kv.display().to_string(), "kv", 1);
        let mut child = cmd.spawn(Stdio::piped(), Stdio::from(log))?;
        let pid = child.id();
        // Taken before the child is stored, so that it cannot block on a
        // full stdout pipe whatever happens next.
        let announcer = Announcer::start(&mut child);
        self.children.push((name.to_owned(), child));
        let listening = match announcer.wait(1, START_TIMEOUT) {
            Ok(listening) => listening,
            Err(AnnounceError::Timeout { .. }) => bail!(
                "{name} did not announce its address within {START_TIMEOUT:?}; see {}",
                log_path(out, name)
            ),
            Err(AnnounceError::Closed) => bail!(
                "{name} exited before listening; see {}",
                log_path(out, name)
            ),
        };
        let addr = listening
            .addr()
            .with_context(|| format!("{name} announced no address"))?;
        eprintln!("xtask bench: {name} (pid {pid}) listening on {addr}");
        Ok(Service { addr, pid, command })
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            // SIGKILL: nothing of these servers' state is worth keeping, and
            // no shutdown path can then hang the benchmark.
            let _ = child.kill();
            match child.wait() {
                Ok(_) => eprintln!("xtask bench: stopped {name} (pid {})", child.id()),
                Err(e) => eprintln!("xtask bench: warning: could not reap {name}: {e}"),
            }
        }
        for dir in &self.dirs {
            match remove_dir(dir) {
                Ok(()) => eprintln!("xtask bench: removed {}", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!(
                    "xtask bench: warning: could not remove {}: {e}",
                    dir.display()
                ),
            }
        }
    }
}

/// Removes `dir` and everything in it, retrying every [`REMOVE_RETRY`] for
/// up to [`REMOVE_TIMEOUT`]; the last error if it never succeeds (a
/// missing `dir` is reported at once, not retried). A Redis killed during a log rewrite leaves its
/// forked rewriter behind for a moment (it exits once it finds its parent
/// gone), which may still be writing files here.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(REMOVE_RETRY);
            }
            result => return result,
        }
    }
}

/// User and system CPU time process `pid` has used, in seconds, from
/// `/proc/PID/stat` (in clock ticks of `USER_HZ`, 100 on Linux whatever the
/// kernel's own tick rate).
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu(&stat).with_context(|| format!("{path} has no CPU times: {stat:?}"))
}

/// The CPU seconds of a `/proc/PID/stat` line: its 14th and 15th fields,
/// counted after the command name (which may hold spaces and parentheses).
fn parse_cpu(stat: &str) -> Option<f64> {
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // `after` starts at field 3 (the state): utime is field 14, stime 15.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Where the server called `name` logs, as the error messages name it.
fn log_path(out: &Path, name: &str) -> String {
    out.join("logs")
        .join(format!("{name}.log"))
        .display()
        .to_string()
}

/// A new, empty log for the server called `name`, replacing any earlier
/// run's: a log holds one run's output only.
fn log_file(out: &Path, name: &str) -> Result<fs::File> {
    let path = log_path(out, name);
    fs::File::create(&path).with_context(|| format!("could not create {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dirs_are_emptied_and_removed_with_the_guard() {
        let base = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let path = base.join("kv-data-always");
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("appendonly.kv"), b"left over").unwrap();
        let mut procs = Processes::default();
        let dir = procs.fresh_dir(path.clone()).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::write(dir.join("appendonly.kv"), b"written").unwrap();
        drop(procs);
        assert!(!path.exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn reads_cpu_times() {
        let stat = "4242 (kv (proxy) x) S 1 4242 4242 0 -1 4194560 600 0 0 0 \
                    250 50 0 0 20 0 3 0 1234 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("4242 (kv) S 1"), None);
        assert!(cpu_seconds(std::process::id()).is_ok());
    }
}
