//! Harness for the end-to-end tests of the `kv` binary.
//!
//! The scenarios live in `tests/tests/*.rs`, one per file; this library gives
//! them what they share, one module per job:
//!
//! - [`bin`]: the binary under test, always built from the current source
//!   ([`kv_bin`]; [`build_kv`] builds it for the benchmark);
//! - [`process`]: [`KvProcess`] runs `kv server`, `kv proxy` or `kv up` on
//!   ports chosen by the OS and parses the addresses they print (the
//!   benchmark launches its processes with the same [`Announcer`]);
//!   [`run_kv`] runs a one-shot command such as `kv cli` with a deadline;
//! - [`conn`]: [`Conn`], a TCP client that never waits without a deadline,
//!   and the wire helpers; [`http`]: [`http_get`] and HTTP heads;
//! - [`wait`]: [`wait_until`] / [`wait_for`] poll for an observable
//!   condition instead of sleeping;
//! - [`tools`]: [`require_tool`] finds external tools such as `redis-cli`;
//! - [`redis`]: [`start_redis_server`] runs a real `redis-server` to put
//!   behind the proxy;
//! - [`clients`]: where the Redis client libraries that `cargo xtask setup`
//!   installs live ([`venv_python`], [`node_modules`]);
//! - [`rng`]: the one seeded generator, [`XorShift`].
//!
//! Every wait in this crate has a deadline and panics with a description of
//! what it was waiting for, so a broken binary fails a test instead of hanging
//! it.

pub mod bin;
pub mod clients;
pub mod cluster;
pub mod conn;
pub mod http;
pub mod process;
pub mod redis;
pub mod rng;
pub mod tools;
pub mod wait;

pub use bin::{build_kv, kv_bin, workspace_root, KV_BIN_ENV};
pub use clients::{clients_dir, node_modules, python_venv, venv_python};
pub use cluster::{RedisCluster, ReshardJob};
pub use conn::{
    info_field, inline_header_count, play_seed_transcript, resp_command, Conn, ReadError, Value,
    IO_TIMEOUT, SEED_TRANSCRIPT,
};
pub use http::{http_get, HttpResponse};
pub use process::{
    free_port, proc_status_bytes, reset_peak_rss, run_kv, run_tool, scratch_dir, start_proxy,
    start_server, start_server_on, start_stack, try_free_port, up_args, vm_rss_bytes,
    AnnounceError, Announcer, KvProcess, Listening, Output, STARTUP_TIMEOUT,
};
pub use redis::{start_redis_server, RedisServer};
pub use rng::XorShift;
pub use tools::{raise_fd_limit, require_tool, which, ALLOW_MISSING_TOOLS_ENV};
pub use wait::{wait_for, wait_until, POLL_INTERVAL};

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
        // The one address of a single-role process, as the benchmark finds
        // its servers by it: the server's, or the proxy's; none from other
        // lines.
        let addr_of = |line: &str| {
            let mut l = Listening::default();
            l.parse_line(line);
            l.addr()
        };
        assert_eq!(
            addr_of("kv server listening on 127.0.0.1:7070"),
            Some("127.0.0.1:7070".parse().unwrap())
        );
        assert_eq!(
            addr_of("kv proxy listening on 127.0.0.1:1 (upstream 127.0.0.1:2)"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(addr_of("starting"), None);
        assert_eq!(l.addr(), l.proxy, "the proxy's address comes first");
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
