//! Harness for the end-to-end tests of the `kv` binary.
//!
//! The scenarios live in `tests/tests/*.rs`, one per file; this library gives
//! them what they share:
//!
//! - [`kv_bin`] finds the binary under test;
//! - [`KvProcess`] runs `kv server`, `kv proxy` or `kv up` on ports chosen by
//!   the OS and parses the addresses they print;
//! - [`run_kv`] runs a one-shot command such as `kv cli` with a deadline;
//! - [`Conn`] is a TCP client that never waits without a deadline;
//! - [`wait_until`] / [`wait_for`] poll for an observable condition instead of
//!   sleeping;
//! - [`require_tool`] finds external tools such as `redis-cli`;
//! - [`http_get`] and [`KvProcess::console_addr`] reach the browser console's
//!   HTTP side.
//!
//! Every wait in this crate has a deadline and panics with a description of
//! what it was waiting for, so a broken binary fails a test instead of hanging
//! it.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a [`Conn`] read waits for the bytes it needs.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`KvProcess::spawn`] waits for the `listening on` line(s).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`wait_until`] and [`wait_for`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The environment variable that names the binary under test.
pub const KV_BIN_ENV: &str = "KV_BIN";

/// The environment variable that turns a missing external tool from a failure
/// into a skipped test (`KV_TESTS_ALLOW_MISSING_TOOLS=1`).
pub const ALLOW_MISSING_TOOLS_ENV: &str = "KV_TESTS_ALLOW_MISSING_TOOLS";

/// The root of the cargo workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The `kv` binary under test: `$KV_BIN` if set, otherwise whichever of
/// `<workspace>/target/release/kv` and `<workspace>/target/debug/kv` exists
/// and is newer.
///
/// # Panics
///
/// If `$KV_BIN` names no file, or neither build exists.
pub fn kv_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(KV_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{KV_BIN_ENV}={} is not a file; build it first: cargo build --release -p kv-native",
            path.display()
        );
        return path;
    }
    let target = workspace_root().join("target");
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("kv"))
        .filter_map(|path| {
            let modified = path.metadata().ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, path)) => path,
        None => panic!(
            "no kv binary in {} (nor {KV_BIN_ENV} set); build it first: cargo build --release -p kv-native",
            target.display()
        ),
    }
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns true.
///
/// # Panics
///
/// If `timeout` passes first; the message names `what` was awaited.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || condition().then_some(()))
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value.
///
/// # Panics
///
/// If `timeout` passes first; the message names `what` was awaited.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

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

/// What a `kv` process announced on stdout once it was listening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    /// From `kv server listening on ADDR`.
    pub server: Option<SocketAddr>,
    /// From `kv proxy listening on ADDR (upstream UPSTREAM)`.
    pub proxy: Option<SocketAddr>,
    /// The `UPSTREAM` of the proxy line, as printed.
    pub upstream: Option<String>,
}

impl Listening {
    /// Parses one stdout line; returns whether it was a `listening on` line.
    fn parse_line(&mut self, line: &str) -> bool {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("kv server listening on ") {
            self.server = Some(parse_addr(rest, line));
            true
        } else if let Some(rest) = line.strip_prefix("kv proxy listening on ") {
            let (addr, upstream) = match rest.split_once(" (upstream ") {
                Some((addr, up)) => (addr, Some(up.trim_end_matches(')').to_string())),
                None => (rest, None),
            };
            self.proxy = Some(parse_addr(addr, line));
            self.upstream = upstream;
            true
        } else {
            false
        }
    }
}

fn parse_addr(text: &str, line: &str) -> SocketAddr {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("cannot parse the address in {line:?}: {e}"))
}

/// A new empty directory under the system's temp directory, unique to this
/// call (`kv-tests-<pid>-<n>-<label>`).
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kv-tests-{}-{n}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A running `kv` process that listens (`server`, `proxy` or `up`).
///
/// It runs in a fresh scratch directory of its own, so that a server's
/// default data directory (`kv-data/`, relative to the current directory)
/// is never shared with another test's server; pass `--data-dir` to choose
/// one.
///
/// Dropping it kills the process (SIGKILL), reaps it, and removes its
/// scratch directory.
pub struct KvProcess {
    child: Child,
    cwd: PathBuf,
    args: Vec<String>,
    listening: Listening,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl KvProcess {
    /// Starts `kv ARGS...` and waits (up to [`STARTUP_TIMEOUT`]) until it has
    /// printed its `listening on` line: two lines for `kv up`, one otherwise.
    ///
    /// # Panics
    ///
    /// If the binary cannot be started, exits, or does not print the
    /// line(s) in time; the message carries its stdout and stderr.
    pub fn spawn<I, S>(args: I) -> KvProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let expected = if args.first().map(String::as_str) == Some("up") {
            2
        } else {
            1
        };
        let bin = kv_bin();
        let cwd = scratch_dir("cwd");
        let mut child = Command::new(&bin)
            .args(&args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", bin.display()));

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_bytes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("stdout is piped");
        let lines = Arc::clone(&stdout_lines);
        let stdout_reader = thread::spawn(move || {
            // Keeps draining after startup so the child never blocks on a
            // full pipe; the receiver may be gone by then.
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("stderr is piped");
        let stderr_reader = spawn_collector(err, Arc::clone(&stderr_bytes));

        let mut process = KvProcess {
            child,
            cwd,
            args,
            listening: Listening::default(),
            stdout: stdout_lines,
            stderr: stderr_bytes,
            readers: vec![stdout_reader, stderr_reader],
            status: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = 0;
        while seen < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if process.listening.parse_line(&line) {
                        seen += 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    process.fail(&format!(
                        "did not print {expected} `listening on` line(s) within {STARTUP_TIMEOUT:?}"
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = wait_child(&mut process.child, Duration::from_secs(5));
                    process.fail(&format!(
                        "closed stdout before printing its `listening on` line(s) (exit: {status:?})"
                    ));
                }
            }
        }
        process
    }

    /// Kills the process (if still running) and panics with `why` plus its
    /// output.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = wait_child(&mut self.child, Duration::from_secs(5));
        // Let the collectors see EOF so stderr is complete.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        panic!(
            "kv {:?} {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args,
            self.stdout_text(),
            self.stderr_text()
        );
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything parsed from the `listening on` lines.
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// The address of the server (from `kv server` or `kv up`).
    ///
    /// # Panics
    ///
    /// If the process printed no `kv server listening on` line.
    pub fn server_addr(&self) -> SocketAddr {
        self.listening
            .server
            .unwrap_or_else(|| panic!("kv {:?} printed no server address", self.args))
    }

    /// The address of the proxy (from `kv proxy` or `kv up`).
    ///
    /// # Panics
    ///
    /// If the process printed no `kv proxy listening on` line.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listening
            .proxy
            .unwrap_or_else(|| panic!("kv {:?} printed no proxy address", self.args))
    }

    /// The listening address of a single-role process: the proxy's if it
    /// printed one, else the server's.
    pub fn addr(&self) -> SocketAddr {
        self.listening
            .proxy
            .or(self.listening.server)
            .expect("spawn only returns once an address is known")
    }

    /// The address of the browser console, from the `kv console on
    /// http://ADDR/` line that `kv up` and `kv proxy --http` print after the
    /// proxy's line; waits up to [`STARTUP_TIMEOUT`] for it.
    ///
    /// # Panics
    ///
    /// If the line does not come in time; the message carries the output.
    pub fn console_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let found = self.stdout.lock().unwrap().iter().find_map(|line| {
                let rest = line.trim().strip_prefix("kv console on http://")?;
                Some(parse_addr(rest.trim_end_matches('/'), line))
            });
            if let Some(addr) = found {
                return addr;
            }
            if Instant::now() >= deadline {
                panic!(
                    "kv {:?} printed no `kv console on http://ADDR/` line within {STARTUP_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.args,
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The stdout lines read so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// The stderr read so far (lossily decoded).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Kills the process with SIGKILL and waits until it is gone (so its
    /// listening port is closed when this returns).
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.child.kill();
        self.status = wait_child(&mut self.child, Duration::from_secs(10));
        assert!(
            self.status.is_some(),
            "kv {:?} (pid {}) did not die after SIGKILL",
            self.args,
            self.pid()
        );
    }

    /// Sends SIGTERM (a request to shut down gracefully) without waiting.
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` to the process, if it has not been reaped yet.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) with the pid of our own unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) failed: {}",
            io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.wait_timeout(Duration::ZERO).is_some()
    }
}

impl Drop for KvProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.cwd);
    }
}

fn spawn_collector<R: Read + Send + 'static>(
    mut reader: R,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// Polls `try_wait` until the child exits or `timeout` passes.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5).min(deadline - now));
    }
}

/// The result of a one-shot command run by [`run_kv`] or [`run_tool`].
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `kv ARGS...` to completion (stdin closed), killing it and panicking
/// if it takes longer than `timeout`.
pub fn run_kv<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_tool(&kv_bin(), args, timeout)
}

/// Runs `program ARGS...` to completion (stdin closed), killing it and
/// panicking if it takes longer than `timeout`.
pub fn run_tool<I, S>(program: &Path, args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", program.display()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        spawn_collector(child.stdout.take().unwrap(), Arc::clone(&stdout)),
        spawn_collector(child.stderr.take().unwrap(), Arc::clone(&stderr)),
    ];
    let status = wait_child(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        for r in readers {
            let _ = r.join();
        }
        panic!(
            "{} {args:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            program.display(),
            String::from_utf8_lossy(&stdout.lock().unwrap()),
            String::from_utf8_lossy(&stderr.lock().unwrap()),
        );
    };
    let elapsed = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    let stdout = String::from_utf8_lossy(&stdout.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    Output {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// Starts a `kv server` and a `kv proxy` in front of it.
///
/// `server_args` and `proxy_args` are appended to
/// `server --listen 127.0.0.1:0` and
/// `proxy --listen 127.0.0.1:0 --upstream SERVER`.
pub fn start_stack(server_args: &[&str], proxy_args: &[&str]) -> (KvProcess, KvProcess) {
    let server = start_server(server_args);
    let proxy = start_proxy(server.server_addr(), proxy_args);
    (server, proxy)
}

/// Starts `kv server --listen 127.0.0.1:0 EXTRA...`.
pub fn start_server(extra: &[&str]) -> KvProcess {
    let mut args = vec!["server", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    KvProcess::spawn(args)
}

/// Starts `kv proxy --listen 127.0.0.1:0 --upstream UPSTREAM EXTRA...`.
pub fn start_proxy(upstream: SocketAddr, extra: &[&str]) -> KvProcess {
    let upstream = upstream.to_string();
    let mut args = vec!["proxy", "--listen", "127.0.0.1:0", "--upstream", &upstream];
    args.extend_from_slice(extra);
    KvProcess::spawn(args)
}

/// How a read on a [`Conn`] ended without the bytes it wanted.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (EOF).
    Eof,
    /// The deadline passed.
    Timeout,
    /// Another I/O error (e.g. connection reset).
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "connection closed by the peer (EOF)"),
            ReadError::Timeout => write!(f, "timed out"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// A TCP client connection whose every read waits with a deadline
/// ([`IO_TIMEOUT`] unless told otherwise).
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes received but not yet returned.
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (with `TCP_NODELAY`, so each `send` leaves at once).
    ///
    /// # Panics
    ///
    /// If the connection cannot be made within [`IO_TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// Connects to `addr`, returning the error instead of panicking.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            addr,
            buf: Vec::new(),
        })
    }

    /// The address it is connected to.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes`.
    ///
    /// # Panics
    ///
    /// On a write error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write to {} failed: {e}", self.addr));
    }

    /// Writes all of `bytes`, returning the error instead of panicking.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `line` followed by `\r\n`, as telnet does.
    pub fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes);
    }

    /// Writes `bytes` one byte per write (each its own TCP segment, thanks
    /// to `TCP_NODELAY`), as a character-mode telnet does.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.send(std::slice::from_ref(b));
        }
    }

    /// Half-closes the connection: the peer sees EOF, and we can still read.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(ReadError::Io)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::Timeout)
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Reads one line (without its `\r\n` or `\n`), waiting up to `timeout`.
    pub fn try_read_line_within(&mut self, timeout: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill(deadline)?;
        }
    }

    /// Reads one line (without its line ending), waiting up to [`IO_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On EOF, an error, or the deadline; the message shows any partial line.
    pub fn read_line(&mut self) -> String {
        match self.try_read_line_within(IO_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "reading a line from {}: {e}; unterminated bytes received: {:?}",
                self.addr,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads exactly `n` lines.
    pub fn expect_lines(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.read_line()).collect()
    }

    /// Reads lines until one contains `needle`; returns all of them (the
    /// matching one last).
    pub fn read_until_contains(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_read_line_within(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!(
                    "waiting for a line containing {needle:?} from {}: {e}; lines so far: {lines:?}",
                    self.addr
                ),
            }
        }
    }

    /// Reads one complete inline-format reply: a single line, or a header
    /// `(N pairs)` / `(N lines)` / `(N items)` followed by its `N` lines.
    pub fn read_reply(&mut self) -> Vec<String> {
        let first = self.read_line();
        let more = inline_header_count(&first).unwrap_or(0);
        let mut lines = vec![first];
        lines.extend(self.expect_lines(more));
        lines
    }

    /// Sends one inline command (adding `\r\n`) and returns its reply, the
    /// lines of a multi-line reply joined with `\n`.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_reply().join("\n")
    }

    /// Sends one RESP2 command made of `args` and returns the raw reply
    /// lines of a simple reply (status, error, integer: one line; bulk: two
    /// lines; nil: one line). Arrays are not supported.
    pub fn resp(&mut self, args: &[&[u8]]) -> Vec<String> {
        self.send(&resp_command(args));
        let first = self.read_line();
        match first.as_bytes().first() {
            Some(b'$') if first != "$-1" => vec![first.clone(), self.read_line()],
            _ => vec![first],
        }
    }

    /// Waits up to `timeout` for the peer to close the connection, returning
    /// whatever was received before the close (including lines not yet read).
    /// A connection reset counts as closed.
    ///
    /// # Panics
    ///
    /// If the connection is still open after `timeout`.
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(_) => continue,
                Err(ReadError::Eof) | Err(ReadError::Io(_)) => {
                    return std::mem::take(&mut self.buf);
                }
                Err(ReadError::Timeout) => panic!(
                    "{}: connection still open after {timeout:?}; received: {:?}",
                    self.addr,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Waits up to [`IO_TIMEOUT`] for the peer to close the connection; see
    /// [`Conn::expect_closed_within`].
    pub fn expect_closed(&mut self) -> Vec<u8> {
        self.expect_closed_within(IO_TIMEOUT)
    }

    /// Reads exactly `n` bytes (after any buffered ones), waiting up to
    /// [`IO_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On EOF, an error, or the deadline.
    pub fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.buf.len() < n {
            if let Err(e) = self.fill(deadline) {
                panic!(
                    "reading {n} bytes from {}: {e}; got {} bytes",
                    self.addr,
                    self.buf.len()
                );
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads an HTTP/1.1 response head: the status line and the header
    /// lines up to the blank line.
    ///
    /// # Panics
    ///
    /// If the head does not come within [`IO_TIMEOUT`] or is malformed.
    pub fn read_http_head(&mut self) -> HttpResponse {
        let status_line = self.read_line();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{}: not an HTTP status line: {status_line:?}", self.addr));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: malformed HTTP header line {line:?}", self.addr));
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        HttpResponse {
            status_line,
            status,
            headers,
            body: Vec::new(),
        }
    }
}

/// An HTTP response as read by [`http_get`] or [`Conn::read_http_head`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The status code.
    pub status: u16,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a head read alone).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, lossily decoded.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET PATH` (exactly as given: no normalisation, so `/../x` reaches
/// the server as is) to `addr` over HTTP/1.1 with `Connection: close`, and
/// reads the response; the body is read by `Content-Length`, or to EOF.
///
/// # Panics
///
/// If the server does not answer within [`IO_TIMEOUT`].
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut conn = Conn::connect(addr);
    conn.send(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut response = conn.read_http_head();
    response.body = match response.header("Content-Length") {
        Some(len) => {
            let len = len
                .parse()
                .unwrap_or_else(|_| panic!("{addr}: bad Content-Length {len:?}"));
            conn.read_bytes(len)
        }
        None => conn.expect_closed(),
    };
    response
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// released), for a tool that can only be told a port, not print one.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The `N` of an inline multi-line reply header `(N pairs)`, `(N lines)`,
/// `(N items)` (also singular), or `None` for a one-line reply.
pub fn inline_header_count(line: &str) -> Option<usize> {
    let inner = line.strip_prefix('(')?.strip_suffix(')')?;
    let (n, word) = inner.split_once(' ')?;
    match word {
        "pair" | "pairs" | "line" | "lines" | "item" | "items" => n.parse().ok(),
        _ => None,
    }
}

/// Encodes a RESP2 command (an array of bulk strings).
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses the `key:value` lines of an `INFO` reply (as returned by
/// [`Conn::cmd`]) into a lookup of numeric fields.
pub fn info_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim() == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The lines a telnet user types for the seed transcript, and the exact
/// replies expected, in order. `DUMP`'s reply is its header and pair lines
/// joined with `\n`.
pub const SEED_TRANSCRIPT: &[(&str, &str)] = &[
    ("PUT name Derek Moss", "OK"),
    ("put age 18", "OK"),
    ("GET name", "\"Derek Moss\""),
    ("Put gender M", "OK"),
    (
        "dump",
        "(3 pairs)\n\"age\" \"18\"\n\"gender\" \"M\"\n\"name\" \"Derek Moss\"",
    ),
];

/// Plays [`SEED_TRANSCRIPT`] over `conn`, one line at a time as typed into
/// telnet (`\r\n` endings), asserting every reply exactly.
pub fn play_seed_transcript(conn: &mut Conn) {
    for (line, expected) in SEED_TRANSCRIPT {
        let reply = conn.cmd(line);
        assert_eq!(&reply, expected, "reply to {line:?} via {}", conn.peer());
    }
}

/// A small deterministic pseudo-random generator (xorshift64*) for
/// reproducible garbage input.
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (zero is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let mut l = Listening::default();
        assert!(l.parse_line("kv server listening on 127.0.0.1:4000"));
        assert!(l.parse_line("kv proxy listening on 127.0.0.1:4001 (upstream 127.0.0.1:4000)"));
        assert!(!l.parse_line("something else"));
        assert_eq!(l.server, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(l.proxy, Some("127.0.0.1:4001".parse().unwrap()));
        assert_eq!(l.upstream.as_deref(), Some("127.0.0.1:4000"));
    }

    #[test]
    fn inline_headers() {
        assert_eq!(inline_header_count("(3 pairs)"), Some(3));
        assert_eq!(inline_header_count("(1 line)"), Some(1));
        assert_eq!(inline_header_count("(nil)"), None);
        assert_eq!(inline_header_count("(integer) 1"), None);
        assert_eq!(inline_header_count("\"(2 lines)\""), None);
    }

    #[test]
    fn info_fields() {
        let info = "(3 lines)\n# Cache\ncache_hits:4\ncache_misses:2";
        assert_eq!(info_field(info, "cache_hits"), Some(4));
        assert_eq!(info_field(info, "cache_misses"), Some(2));
        assert_eq!(info_field(info, "nope"), None);
    }

    #[test]
    fn xorshift_is_deterministic() {
        assert_eq!(XorShift::new(7).bytes(100), XorShift::new(7).bytes(100));
        assert_ne!(XorShift::new(7).bytes(100), XorShift::new(8).bytes(100));
    }
}
