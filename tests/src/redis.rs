//! A real `redis-server` to put behind kv's proxy: on a free port, with
//! no persistence, in a scratch directory of its own, killed when dropped.

use crate::conn::Conn;
use crate::process::{free_port, scratch_dir, STARTUP_TIMEOUT};
use crate::tools::require_tool;
use crate::wait::poll_for;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` with `extra` arguments on a free port and waits
/// (up to [`STARTUP_TIMEOUT`]) until it answers `PING` (with `PONG`, or
/// with `NOAUTH` when its default user needs a password or is off).
/// `None` when the tool is missing and [`require_tool`] allows skipping.
///
/// # Panics
///
/// If it cannot be started, or does not answer in time (a port taken
/// between choosing and binding is tried again, twice).
pub fn start_redis_server(extra: &[&str]) -> Option<RedisServer> {
    let program = require_tool("redis-server")?;
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let dir = scratch_dir("redis");
        let port_text = port.to_string();
        let mut args = vec![
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut server = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let up = poll_for(STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Some(Err(format!("exited: {status}")));
            }
            let mut c = Conn::try_connect(server.addr).ok()?;
            c.try_send(b"PING\r\n").ok()?;
            match c.try_read_line_within(Duration::from_secs(1)) {
                // Up, and its default user needs a password (or is off).
                Ok(line) if line == "+PONG" || line.starts_with("-NOAUTH") => Some(Ok(())),
                _ => None,
            }
        });
        match up {
            Some(Ok(())) => return Some(server),
            Some(Err(e)) => last = e,
            None => {
                panic!("redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}")
            }
        }
    }
    panic!("redis-server did not start: {last}");
}
