//! Codec micro-benchmarks: how fast kv-core turns request bytes into
//! [`Command`]s, and replies and commands back into bytes, with no sockets
//! involved.
//!
//! Every benchmark works on a realistic pipelined batch of [`BATCH`]
//! commands: `SET key:000123 <64-byte value>` or `GET key:000123`, in both
//! dialects. Each is measured twice, once with [`Throughput::Bytes`] (MB/s of
//! wire bytes) and once with [`Throughput::Elements`] (commands/s), because a
//! criterion benchmark reports a single throughput; `cargo xtask bench` reads
//! both figures from criterion's JSON output.
//!
//! Run with `cargo bench -p kv-core --bench codec` (add `-- --quick` for a
//! short run).

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use kv_core::{Command, Decoder, Dialect, Limits, Reply};

/// Commands per batch: enough that per-batch costs (buffer growth, the
/// first allocation) are amortised as they are on a busy pipelined
/// connection.
const BATCH: usize = 1000;

/// The 64-byte value of every `SET`, as `redis-benchmark -d 64` would send.
const VALUE: &[u8; 64] = b"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

/// Which command a batch is made of.
#[derive(Clone, Copy)]
enum Workload {
    Get,
    Set,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
        }
    }

    /// The `i`th command of a batch. Keys vary so that nothing benefits
    /// from seeing the same bytes twice.
    fn command(self, i: usize) -> Command {
        let key = format!("key:{i:06}");
        match self {
            Workload::Get => Command::build(&[&b"GET"[..], key.as_bytes()]),
            Workload::Set => Command::build(&[&b"SET"[..], key.as_bytes(), VALUE]),
        }
        .expect("a valid command")
    }

    /// The reply the server sends to each command of the batch.
    fn reply(self) -> Reply {
        match self {
            Workload::Get => Reply::Bulk(Bytes::from_static(VALUE)),
            Workload::Set => Reply::ok(),
        }
    }
}

/// A batch of requests as a client pipelines them in `dialect`.
fn request_batch(workload: Workload, dialect: Dialect) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..BATCH {
        match dialect {
            Dialect::Resp => workload.command(i).encode_resp(&mut out),
            Dialect::Inline => {
                let line = match workload {
                    Workload::Get => format!("GET key:{i:06}\r\n"),
                    Workload::Set => format!(
                        "SET key:{i:06} {}\r\n",
                        std::str::from_utf8(VALUE).expect("ASCII")
                    ),
                };
                out.extend_from_slice(line.as_bytes());
            }
        }
    }
    out.to_vec()
}

fn dialect_name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Resp => "resp",
        Dialect::Inline => "inline",
    }
}

/// Benchmarks `routine` twice under `name`: once per throughput unit.
fn both_throughputs(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    bytes: usize,
    mut routine: impl FnMut(),
) {
    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(bytes as u64)),
        ("commands", Throughput::Elements(BATCH as u64)),
    ] {
        group.throughput(throughput);
        group.bench_function(criterion::BenchmarkId::new(name, unit), |b| {
            b.iter(&mut routine)
        });
    }
}

/// Decoder + `Command::from_frame`: the server's whole request path short
/// of executing the command.
fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for dialect in [Dialect::Resp, Dialect::Inline] {
        for op in [Workload::Get, Workload::Set] {
            let input = request_batch(op, dialect);
            let limits = Limits::default();
            // One decoder for the whole run, as one long-lived connection
            // has: its buffer is allocated once and then reused.
            let mut decoder = Decoder::new(limits);
            let name = format!("{}_{}", dialect_name(dialect), op.name());
            both_throughputs(&mut group, &name, input.len(), || {
                decoder.feed(black_box(&input));
                let mut n = 0;
                while let Some(frame) = decoder.next_frame().expect("valid input") {
                    let cmd = Command::from_frame(frame, &limits).expect("valid command");
                    black_box(cmd);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            });
        }
    }
    group.finish();
}

/// `Reply::encode` for a batch of replies (a bulk value for `GET`, `OK` for
/// `SET`) in both dialects.
fn encode_reply(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_reply");
    for dialect in [Dialect::Resp, Dialect::Inline] {
        for op in [Workload::Get, Workload::Set] {
            let replies: Vec<Reply> = (0..BATCH).map(|_| op.reply()).collect();
            let mut out = BytesMut::new();
            for r in &replies {
                r.encode(dialect, &mut out);
            }
            let bytes = out.len();
            let name = format!("{}_{}", dialect_name(dialect), op.name());
            both_throughputs(&mut group, &name, bytes, || {
                out.clear();
                for r in black_box(&replies) {
                    r.encode(dialect, &mut out);
                }
                black_box(&out);
            });
        }
    }
    group.finish();
}

/// `Command::encode_resp`: how clients (the CLI, the browser) put each
/// request on the wire. The proxy frames what it forwards the same way, but
/// through `encode_resp_args` without building a `Command`.
fn encode_command(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_command");
    for op in [Workload::Get, Workload::Set] {
        let commands: Vec<Command> = (0..BATCH).map(|i| op.command(i)).collect();
        let mut out = BytesMut::new();
        for cmd in &commands {
            cmd.encode_resp(&mut out);
        }
        let bytes = out.len();
        let name = format!("resp_{}", op.name());
        both_throughputs(&mut group, &name, bytes, || {
            out.clear();
            for cmd in black_box(&commands) {
                cmd.encode_resp(&mut out);
            }
            black_box(&out);
        });
    }
    group.finish();
}

/// Shorter than criterion's defaults (3 s warm-up, 5 s measurement): the
/// inputs are small and deterministic, so estimates settle quickly, and
/// every case runs twice (once per throughput unit).
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, encode_reply, encode_command
}
criterion_main!(benches);
