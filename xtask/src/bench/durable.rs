//! Step 6: durable writes, Redis's append-only file against kv's log, under
//! each fsync policy.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::measure::{calibrate, measure_rounds, Calibration};
use super::processes::Processes;
use super::report::Durable;
use super::resp::{self, info_field, info_number, Conn};
use super::{Options, Target, Workload, PIPELINES};
use crate::cmd::Cmd;

/// The fsync policies of the durable-writes comparison, as both
/// `kv server --fsync` and Redis's `appendfsync` name them.
const FSYNC_POLICIES: [&str; 3] = ["always", "everysec", "no"];

/// Below this rate a durable `redis-benchmark` run is taken to hang and is
/// killed (with 30 s to spare), as in memory, but far lower: writes that
/// wait for a disk may be slow indeed.
const SLOWEST_DURABLE_RPS: u64 = 100;

/// The durable-writes comparison, one fsync policy after the other, each
/// with fresh servers on fresh, empty data directories.
pub(super) fn durable(kv: &Path, options: &Options, out: &Path) -> Result<Vec<Durable>> {
    let help = Cmd::new(kv).args(["server", "--help"]).read()?;
    if !help.contains("--fsync") {
        eprintln!("xtask bench: skipping durable writes: this kv server has no --fsync");
        return Ok(Vec::new());
    }
    FSYNC_POLICIES
        .into_iter()
        .map(|policy| durable_policy(kv, policy, options, out))
        .collect()
}

/// SETs on Redis (`appendonly yes`, `appendfsync POLICY`) and on
/// `kv server --fsync POLICY`, interleaved over the rounds.
fn durable_policy(
    kv: &Path,
    policy: &'static str,
    options: &Options,
    out: &Path,
) -> Result<Durable> {
    eprintln!("xtask bench: durable writes, fsync {policy}");
    let mut procs = Processes::default();
    let redis_dir = procs.fresh_dir(out.join(format!("redis-aof-{policy}")))?;
    let kv_dir = procs.fresh_dir(out.join(format!("kv-data-{policy}")))?;
    let redis = procs.redis_with(
        out,
        &format!("redis-aof-{policy}"),
        &redis_dir,
        &["--appendonly", "yes", "--appendfsync", policy],
    )?;
    let mut kv_args: Vec<String> = ["server", "--listen", "127.0.0.1:0", "--fsync", policy]
        .map(String::from)
        .into();
    kv_args.push("--data-dir".into());
    kv_args.push(kv_dir.display().to_string());
    let server = procs.kv(kv, &kv_args, out, &format!("kv-server-{policy}"))?;

    // Both must really be logging, under the policy asked for.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = Conn::connect(redis.addr, deadline)?.info(Some("persistence"))?;
    ensure!(
        info_field(&info, "aof_enabled") == Some("1"),
        "redis (appendfsync {policy}) runs without its append-only file"
    );
    let mut request = Vec::new();
    resp::encode(&mut request, &[b"CONFIG", b"GET", b"appendfsync"]);
    let reply = Conn::connect(redis.addr, deadline)?.pipeline(&request, 1)?;
    ensure!(
        String::from_utf8_lossy(&reply).contains(&format!("\r\n{policy}\r\n")),
        "redis reports appendfsync {:?}, not {policy}",
        String::from_utf8_lossy(&reply)
    );
    let info = Conn::connect(server.addr, deadline)?.info(None)?;
    ensure!(
        info_field(&info, "aof_enabled") == Some("1")
            && info_field(&info, "aof_fsync") == Some(policy),
        "kv server (--fsync {policy}) reports aof_enabled {:?}, aof_fsync {:?}",
        info_field(&info, "aof_enabled"),
        info_field(&info, "aof_fsync")
    );

    let addr = |target| {
        Ok(match target {
            Target::KvServer => server.addr,
            _ => redis.addr,
        })
    };
    let mut cases = Vec::new();
    for pipeline in PIPELINES {
        for target in [Target::Redis, Target::KvServer] {
            // Shorter than in memory: under `always` every batch of writes
            // waits for the disk.
            let calibration = Calibration {
                warm_up: if pipeline == 1 { 5_000 } else { 50_000 },
                floor: 1_000,
                slowest_rps: SLOWEST_DURABLE_RPS,
            };
            cases.push(calibrate(
                addr(target)?,
                target,
                Workload::Set,
                pipeline,
                calibration,
                options,
            )?);
        }
    }
    measure_rounds(
        &mut cases,
        addr,
        SLOWEST_DURABLE_RPS,
        options,
        &format!("fsync {policy}: "),
    )?;

    // Redis rewrites its log in a forked child, which a kill of Redis would
    // leave running for a while: stop new rewrites and let any running one
    // finish before the servers are killed. (kv rewrites on a thread.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = Conn::connect(redis.addr, deadline)?;
    conn.command(&[b"CONFIG", b"SET", b"auto-aof-rewrite-percentage", b"0"])?;
    let redis_info = loop {
        let info = conn.info(Some("persistence"))?;
        let busy = |field| info_field(&info, field).is_some_and(|v| v != "0");
        if !busy("aof_rewrite_in_progress") && !busy("aof_rewrite_scheduled") {
            break info;
        }
        ensure!(
            Instant::now() < deadline,
            "redis (appendfsync {policy}) is still rewriting its log"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for field in ["aof_last_write_status", "aof_last_bgrewrite_status"] {
        let status = info_field(&redis_info, field);
        ensure!(
            status.is_none_or(|v| v == "ok"),
            "redis (appendfsync {policy}) reports {field}:{}",
            status.unwrap_or("")
        );
    }
    let kv_info = Conn::connect(server.addr, deadline)?.info(None)?;
    ensure!(
        info_field(&kv_info, "aof_status") == Some("ok"),
        "kv server (--fsync {policy}) reports aof_status {:?}",
        info_field(&kv_info, "aof_status")
    );
    let rewrites = (
        info_number(&redis_info, "aof_rewrites").ok(),
        info_number(&kv_info, "aof_rewrites").ok(),
    );

    let kv_fs = filesystem(&kv_dir);
    let redis_fs = filesystem(&redis_dir);
    let filesystem = if kv_fs == redis_fs {
        kv_fs
    } else {
        format!("kv: {kv_fs}, Redis: {redis_fs}")
    };
    let durable = Durable {
        policy,
        filesystem,
        mount: mount(&kv_dir),
        servers: vec![redis.command, server.command],
        cases,
        rewrites,
    };
    drop(procs);
    Ok(durable)
}

/// The type of the filesystem holding `dir`, as `stat -f -c %T` names it
/// (which tells ext2, ext3 and ext4 apart by none of them).
fn filesystem(dir: &Path) -> String {
    Cmd::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .read()
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The type and options of the mount holding `dir`, as `findmnt` shows
/// them, when it can.
fn mount(dir: &Path) -> Option<String> {
    let text = Cmd::new("findmnt")
        .args(["-n", "-o", "FSTYPE,OPTIONS", "--target"])
        .arg(dir)
        .read()
        .ok()?;
    let (fstype, mount_options) = text.trim().split_once(char::is_whitespace)?;
    Some(format!("{fstype} {}", mount_options.trim()))
}
