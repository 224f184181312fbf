//! Running `kv` (and other programs) as child processes: started on ports
//! the OS picks, their `listening on` lines parsed, killed and reaped when
//! dropped. The benchmark reads its processes' announcements with [`Announcer`] too.

use crate::bin::kv_bin;
use crate::wait::poll_for;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long [`KvProcess::spawn`] waits for the `listening on` line(s).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// The one address of a single-role process: the proxy's if it printed
    /// one, else the server's.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.proxy.or(self.server)
    }

    /// Parses one stdout line; returns whether it was a `listening on` line.
    pub fn parse_line(&mut self, line: &str) -> bool {
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

/// Why a process did not announce where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceError {
    /// The deadline passed first.
    Timeout {
        /// The lines it was to print.
        expected: usize,
        /// How long it was given.
        waited: Duration,
    },
    /// It closed its stdout (it is exiting) first.
    Closed,
}

impl std::fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnnounceError::Timeout { expected, waited } => write!(
                f,
                "did not print {expected} `listening on` line(s) within {waited:?}"
            ),
            AnnounceError::Closed => {
                write!(
                    f,
                    "closed stdout before printing its `listening on` line(s)"
                )
            }
        }
    }
}

/// Reads a child's stdout for its `listening on` lines. The reader thread
/// goes on draining stdout (into its list of lines) afterwards, so that the
/// child can never block on a full pipe; it ends with the process.
pub struct Announcer {
    /// Every stdout line so far.
    pub(crate) lines: Arc<Mutex<Vec<String>>>,
    /// The thread reading stdout.
    pub(crate) reader: JoinHandle<()>,
    rx: mpsc::Receiver<String>,
}

impl Announcer {
    /// Takes the child's stdout, which must be piped.
    ///
    /// # Panics
    ///
    /// If it is not.
    pub fn start(child: &mut Child) -> Announcer {
        let out = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let collected = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push(line.clone());
                // The receiver is gone once the announcement was read.
                let _ = tx.send(line);
            }
        });
        Announcer { lines, reader, rx }
    }

    /// Waits up to `timeout` for `expected` `listening on` lines.
    pub fn wait(&self, expected: usize, timeout: Duration) -> Result<Listening, AnnounceError> {
        let deadline = Instant::now() + timeout;
        let mut listening = Listening::default();
        let mut seen = 0;
        while seen < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => seen += usize::from(listening.parse_line(&line)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(AnnounceError::Timeout {
                        expected,
                        waited: timeout,
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(AnnounceError::Closed),
            }
        }
        Ok(listening)
    }
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
        KvProcess::start(args, false)
    }

    /// Like [`spawn`](Self::spawn), but runs a copy of the binary under
    /// test placed alone in the process's scratch directory (its current
    /// directory), with `$KV_WWW` unset: a `kv` as installed or copied to
    /// another machine, with no source tree beside it to read files from.
    ///
    /// # Panics
    ///
    /// As [`spawn`](Self::spawn), and if the copy cannot be made.
    pub fn spawn_copied<I, S>(args: I) -> KvProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        KvProcess::start(args, true)
    }

    fn start<I, S>(args: I, copied: bool) -> KvProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        // `kv up` announces its server and its proxy; in front of a
        // cluster, only the proxy.
        let in_front_of_cluster = args.iter().any(|a| a == "--upstream-cluster");
        let expected = if args.first().map(String::as_str) == Some("up") && !in_front_of_cluster {
            2
        } else {
            1
        };
        let cwd = scratch_dir("cwd");
        let mut command = if copied {
            let bin = cwd.join("kv");
            std::fs::copy(kv_bin(), &bin).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    kv_bin().display(),
                    bin.display()
                )
            });
            let mut command = Command::new(bin);
            command.env_remove("KV_WWW");
            command
        } else {
            Command::new(kv_bin())
        };
        let bin = PathBuf::from(command.get_program());
        command
            .args(&args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A copy just written can be "busy" for a moment: a process another
        // test forked meanwhile holds the copy's write descriptor until it
        // execs. That passes; any other error does not.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut child = loop {
            match command.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot start {} {args:?}: {e}", bin.display()),
            }
        };

        let stderr_bytes = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr is piped");
        let stderr_reader = spawn_collector(err, Arc::clone(&stderr_bytes));
        let announced = Announcer::start(&mut child);
        let mut process = KvProcess {
            child,
            cwd,
            args,
            listening: Listening::default(),
            stdout: Arc::clone(&announced.lines),
            stderr: stderr_bytes,
            readers: vec![stderr_reader],
            status: None,
        };
        let announcement = announced.wait(expected, STARTUP_TIMEOUT);
        process.readers.push(announced.reader);
        match announcement {
            Ok(listening) => process.listening = listening,
            Err(e) => {
                // A process that closed its stdout is exiting: give it time
                // to say how it ended. One that timed out is still running.
                let grace = match e {
                    AnnounceError::Closed => Duration::from_secs(5),
                    AnnounceError::Timeout { .. } => Duration::ZERO,
                };
                let status = wait_child(&mut process.child, grace);
                process.fail(&format!("{e} (exit: {status:?})"));
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
            .addr()
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
        let found = poll_for(STARTUP_TIMEOUT, || {
            self.stdout.lock().unwrap().iter().find_map(|line| {
                let rest = line.trim().strip_prefix("kv console on http://")?;
                Some(parse_addr(rest.trim_end_matches('/'), line))
            })
        });
        // The message shows the output as it is at the deadline.
        found.unwrap_or_else(|| {
            panic!(
                "kv {:?} printed no `kv console on http://ADDR/` line within {STARTUP_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.args,
                self.stdout_text(),
                self.stderr_text()
            )
        })
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

    /// Sends SIGTERM and checks the process exits with status 0 within
    /// `timeout`, its stderr in the message if not.
    pub fn stop_cleanly(mut self, timeout: Duration) {
        self.sigterm();
        let status = self.wait_timeout(timeout);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "kv {:?} after SIGTERM: {status:?}\n--- stderr ---\n{}",
            self.args,
            self.stderr_text()
        );
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

/// Starts `kv server --listen 127.0.0.1:0 --data-dir DIR EXTRA...`.
pub fn start_server_on(data_dir: &Path, extra: &[&str]) -> KvProcess {
    let dir = data_dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["--data-dir", dir];
    args.extend_from_slice(extra);
    start_server(&args)
}

/// The arguments of `kv up` with every port (the console's too) chosen by
/// the OS, then `extra`.
pub fn up_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "up",
        "--server-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts `kv proxy --listen 127.0.0.1:0 --upstream UPSTREAM EXTRA...`.
pub fn start_proxy(upstream: SocketAddr, extra: &[&str]) -> KvProcess {
    let upstream = upstream.to_string();
    let mut args = vec!["proxy", "--listen", "127.0.0.1:0", "--upstream", &upstream];
    args.extend_from_slice(extra);
    KvProcess::spawn(args)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// released), for a tool that can only be told a port, not print one.
///
/// # Panics
///
/// If no port can be had; [`try_free_port`] returns the error instead.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// [`free_port`], failing with an error instead of panicking.
pub fn try_free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A process's memory figure from `/proc/<pid>/status` (`VmRSS`, its
/// resident memory now, or `VmHWM`, the most it has had), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in {path}:\n{status}"));
    kib * 1024
}

/// A process's resident memory (`VmRSS`), in bytes.
pub fn vm_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS")
}

/// Starts a process's peak resident memory (`VmHWM`) anew from its
/// resident memory now (Linux's `clear_refs` 5), so that a later
/// `proc_status_bytes(pid, "VmHWM")` is the peak of what follows.
pub fn reset_peak_rss(pid: u32) {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
}
