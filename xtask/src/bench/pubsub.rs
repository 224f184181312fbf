//! Step 7, `PUBLISH` to 1,000 subscribers: Redis and kv server side by
//! side, interleaved over the rounds.
//!
//! `redis-benchmark` cannot subscribe, so the load is generated here: 1,000
//! subscriber connections per server on one channel, served by one thread
//! (a single-threaded tokio runtime, so that 1,000 sockets cost one thread's
//! wake-ups rather than 1,000 threads'), each counting the messages it
//! receives; and one publisher connection sending `PUBLISH`es, one at a
//! time or pipelined in batches, timing each reply. A run is complete when
//! every subscriber has received every message: deliveries per second are
//! messages × subscribers over the time from the first `PUBLISH` sent to
//! the last message received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::measure::order;
use super::processes::Processes;
use super::report::{PubSubCase, PubSubRun, PubSubSample};
use super::resp::{self, info_number, Conn, RespCounter};
use super::{Options, Target, PIPELINES, VALUE_LEN};

/// Subscriber connections per server.
pub(super) const SUBSCRIBERS: u64 = 1_000;

/// The channel they all subscribe to.
const CHANNEL: &[u8] = b"bench:channel";

/// How long 1,000 connections may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Below this many deliveries per second a run is taken to hang (with a
/// minute to spare): a server or subscriber that stalls, not a slow one.
const SLOWEST_DELIVERIES: u64 = 10_000;

/// The two servers, each with its subscribers, measured in turn.
const TARGETS: [Target; 2] = [Target::Redis, Target::KvServer];

/// Starts Redis and kv server, subscribes 1,000 connections to each, and
/// runs every case `options.rounds` times, interleaved.
pub(super) fn pubsub(
    kv: &Path,
    server_args: &[String],
    options: &Options,
    out: &Path,
) -> Result<PubSubRun> {
    eprintln!("xtask bench: PUBLISH to {SUBSCRIBERS} subscribers");
    // Two sets of subscribers here, and the servers' ends of them, which
    // inherit this limit; `kv` raises its own too.
    let needed = 2 * SUBSCRIBERS + 256;
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).context("could not raise the open file limit")?;
    ensure!(
        limit >= needed,
        "the open file limit is {limit} (hard limit included); {needed} are needed for \
         {SUBSCRIBERS} subscribers per server (raise `ulimit -Hn`)"
    );
    let mut procs = Processes::default();
    let redis = procs.redis(out, "redis-pubsub")?;
    let server = procs.kv(kv, server_args, out, "kv-server-pubsub")?;
    let servers = vec![redis.command.clone(), server.command.clone()];
    let mut targets = Vec::new();
    for (target, addr) in [(Target::Redis, redis.addr), (Target::KvServer, server.addr)] {
        let subscribers = Subscribers::start(addr)?;
        check_subscribed(addr)?;
        let publisher = Publisher::connect(addr)?;
        targets.push((target, subscribers, publisher));
    }

    let mut cases = Vec::new();
    for pipeline in PIPELINES {
        for (target, subscribers, publisher) in &mut targets {
            // Calibration doubles as warm-up, as for redis-benchmark: a
            // message to 1,000 sockets may take milliseconds.
            let warm_up = 100 * u64::from(pipeline);
            let sample = publisher.run(subscribers, warm_up, pipeline)?;
            let rate = sample.delivered_per_s / SUBSCRIBERS as f64;
            cases.push(PubSubCase {
                target: *target,
                pipeline,
                messages: messages_for(rate, options.run_seconds(), warm_up),
                samples: Vec::new(),
            });
        }
    }
    for round in 1..=options.rounds {
        for group in cases.chunks_mut(TARGETS.len()) {
            for i in order(group.len(), round - 1) {
                let case = &mut group[i];
                let (_, subscribers, publisher) = targets
                    .iter_mut()
                    .find(|(t, ..)| *t == case.target)
                    .ok_or_else(|| anyhow!("{:?} was not started", case.target))?;
                let sample = publisher.run(subscribers, case.messages, case.pipeline)?;
                eprintln!(
                    "xtask bench: pubsub: round {round}/{}: {} P{}: {:.0} deliveries/s, \
                     {:.0} PUBLISH/s, p50 {:.3} ms, p99 {:.3} ms",
                    options.rounds,
                    super::report::label(case.target, super::Workload::Set),
                    case.pipeline,
                    sample.delivered_per_s,
                    sample.published_per_s,
                    sample.p50_ms,
                    sample.p99_ms,
                );
                case.samples.push(sample);
            }
        }
    }
    for (target, subscribers, _) in &targets {
        subscribers.check()?;
        let addr = if *target == Target::Redis {
            redis.addr
        } else {
            server.addr
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let info = Conn::connect(addr, deadline)?.info(Some("stats"))?;
        // Redis 7.0 has no such counter; a subscriber it dropped would have
        // failed its run anyway.
        if let Ok(dropped) = info_number(&info, "client_output_buffer_limit_disconnections") {
            ensure!(
                dropped == 0,
                "{target:?} disconnected {dropped} subscribers at their output buffer limit"
            );
        }
    }
    drop(targets);
    drop(procs);
    Ok(PubSubRun {
        subscribers: SUBSCRIBERS,
        message_len: VALUE_LEN,
        servers,
        cases,
    })
}

/// Messages for a run of about `seconds` at `rate` messages per second,
/// at least `floor`, in whole hundreds (a run of 1,000 subscribers may
/// publish only a few dozen messages a second).
fn messages_for(rate: f64, seconds: f64, floor: u64) -> u64 {
    ((rate * seconds) as u64)
        .clamp(floor, 10_000_000)
        .div_ceil(100)
        * 100
}

/// Checks that the server counts all [`SUBSCRIBERS`] on the channel.
fn check_subscribed(addr: SocketAddr) -> Result<()> {
    let mut request = Vec::new();
    resp::encode(&mut request, &[b"PUBSUB", b"NUMSUB", CHANNEL]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = Conn::connect(addr, deadline)?.pipeline(&request, 1)?;
    let want = format!(":{SUBSCRIBERS}\r\n");
    ensure!(
        reply.ends_with(want.as_bytes()),
        "{addr} answers PUBSUB NUMSUB with {:?}, not {SUBSCRIBERS} subscribers",
        String::from_utf8_lossy(&reply)
    );
    Ok(())
}

/// What the subscribers of one server share with the publisher.
#[derive(Default)]
struct Shared {
    /// Messages received so far, by all subscribers together.
    delivered: AtomicU64,
    /// The value of `delivered` that completes the run under way;
    /// `u64::MAX` between runs.
    goal: AtomicU64,
    /// What the publisher waits for.
    state: Mutex<State>,
    /// Signalled on every change of `state`.
    changed: Condvar,
}

/// The part of [`Shared`] the publisher waits on.
#[derive(Default)]
struct State {
    /// Subscribers whose subscription the server confirmed.
    subscribed: u64,
    /// When `delivered` reached `goal`.
    done_at: Option<Instant>,
    /// Why a subscriber stopped, if one did: the runs are void then.
    failure: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking subscriber poisons nothing the state cannot show.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and wakes the publisher.
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `ready` holds, a subscriber fails, or `deadline` passes.
    fn wait(
        &self,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        loop {
            if let Some(why) = &state.failure {
                bail!("a subscriber stopped: {why}");
            }
            if ready(&state) {
                return Ok(state);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| anyhow!("the subscribers timed out"))?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// [`SUBSCRIBERS`] connections subscribed to [`CHANNEL`] on one server,
/// on a thread of their own; closed when dropped.
struct Subscribers {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscribers {
    /// Connects and subscribes them all, and waits until the server has
    /// confirmed every subscription.
    fn start(addr: SocketAddr) -> Result<Subscribers> {
        let shared = Arc::new(Shared {
            goal: AtomicU64::new(u64::MAX),
            ..Shared::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("could not start the subscribers' runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("subscribers".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        if let Err(e) = subscribe_all(addr, &shared).await {
                            shared.update(|s| s.failure = Some(format!("{e:#}")));
                        }
                        let _ = stopped.await;
                    });
                    // Dropping the runtime drops the tasks and closes
                    // their sockets.
                })?
        };
        let subscribers = Subscribers {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        drop(
            subscribers
                .shared
                .wait(deadline, |s| s.subscribed == SUBSCRIBERS)
                .with_context(|| format!("subscribing {SUBSCRIBERS} connections to {addr}"))?,
        );
        eprintln!("xtask bench: {SUBSCRIBERS} subscribers on {addr}");
        Ok(subscribers)
    }

    /// Fails if a subscriber has stopped.
    fn check(&self) -> Result<()> {
        match &self.shared.lock().failure {
            Some(why) => bail!("a subscriber stopped: {why}"),
            None => Ok(()),
        }
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens the connections one after the other (1,000 at once would
/// overflow the servers' listen backlogs, and the ones dropped would be
/// retried only after a second), each then read by a task of its own.
async fn subscribe_all(addr: SocketAddr, shared: &Arc<Shared>) -> Result<()> {
    let mut request = Vec::new();
    resp::encode(&mut request, &[b"SUBSCRIBE", CHANNEL]);
    for _ in 0..SUBSCRIBERS {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(&request).await?;
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            if let Err(e) = subscriber(stream, &shared).await {
                shared.update(|s| s.failure = Some(format!("{e:#}")));
            }
        });
    }
    Ok(())
}

/// One subscriber: counts the values the server sends, the first being
/// the subscription's confirmation and every other one a message.
async fn subscriber(mut stream: tokio::net::TcpStream, shared: &Shared) -> Result<()> {
    let mut counter = RespCounter::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut confirmed = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed a subscriber's connection");
        }
        let mut values = counter
            .feed(&buf[..n])
            .map_err(|e| anyhow!("unreadable message: {e}"))?;
        if counter.errors() > 0 {
            bail!("the server answered SUBSCRIBE with an error");
        }
        if !confirmed && values > 0 {
            confirmed = true;
            values -= 1;
            shared.update(|s| s.subscribed += 1);
        }
        if values > 0 {
            let total = shared.delivered.fetch_add(values, Ordering::SeqCst) + values;
            if total >= shared.goal.load(Ordering::SeqCst) {
                let now = Instant::now();
                shared.update(|s| {
                    s.done_at.get_or_insert(now);
                });
            }
        }
    }
}

/// The publishing connection, with its `PUBLISH` encoded once.
struct Publisher {
    stream: TcpStream,
    /// One `PUBLISH CHANNEL message`; every message is the same.
    command: Vec<u8>,
}

impl Publisher {
    fn connect(addr: SocketAddr) -> Result<Publisher> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        // No single read or write may hang the benchmark.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let message = "m".repeat(VALUE_LEN);
        let mut command = Vec::new();
        resp::encode(&mut command, &[b"PUBLISH", CHANNEL, message.as_bytes()]);
        Ok(Publisher { stream, command })
    }

    /// Publishes `messages` messages, `pipeline` at a time (each batch
    /// written once its predecessor's replies are in), and waits until
    /// every subscriber has received them all.
    fn run(&mut self, subs: &Subscribers, messages: u64, pipeline: u32) -> Result<PubSubSample> {
        let shared = &subs.shared;
        subs.check()?;
        let goal = shared.delivered.load(Ordering::SeqCst) + messages * SUBSCRIBERS;
        shared.update(|s| s.done_at = None);
        shared.goal.store(goal, Ordering::SeqCst);
        let batch = self.command.repeat(pipeline as usize);
        let mut latencies = Vec::with_capacity(messages as usize);
        let mut replies = Replies::default();
        let started = Instant::now();
        let mut sent = 0;
        while sent < messages {
            let n = (messages - sent).min(u64::from(pipeline));
            let sent_at = Instant::now();
            self.stream
                .write_all(&batch[..n as usize * self.command.len()])
                .context("writing PUBLISH")?;
            let mut got = 0;
            while got < n {
                let received = replies.read(&mut self.stream)?;
                // Each reply's latency runs from its batch's write to the
                // read that completed it, as redis-benchmark counts.
                let ms = sent_at.elapsed().as_secs_f64() * 1e3;
                latencies.extend(std::iter::repeat_n(ms, received as usize));
                got += received;
            }
            ensure!(got == n, "{got} replies to {n} PUBLISHes");
            sent += n;
        }
        let published = started.elapsed();
        let deadline =
            Instant::now() + Duration::from_secs(60 + messages * SUBSCRIBERS / SLOWEST_DELIVERIES);
        let done_at = shared
            .wait(deadline, |s| s.done_at.is_some())
            .context("waiting for every subscriber to receive every message")?
            .done_at
            .unwrap_or_else(Instant::now);
        shared.goal.store(u64::MAX, Ordering::SeqCst);
        let delivered = shared.delivered.load(Ordering::SeqCst);
        ensure!(
            delivered == goal,
            "the subscribers received {} messages more than were published",
            delivered - goal
        );
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Ok(PubSubSample {
            delivered_per_s: (messages * SUBSCRIBERS) as f64
                / done_at.duration_since(started).as_secs_f64(),
            published_per_s: messages as f64 / published.as_secs_f64(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        })
    }
}

/// Reads `PUBLISH` replies, `:N` lines, checking that every one counts
/// all the subscribers.
#[derive(Default)]
struct Replies {
    pending: Vec<u8>,
}

impl Replies {
    /// One read's worth of replies: how many it completed.
    fn read(&mut self, stream: &mut TcpStream) -> Result<u64> {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).context("reading PUBLISH replies")?;
        if n == 0 {
            bail!("the server closed the publisher's connection");
        }
        self.pending.extend_from_slice(&buf[..n]);
        self.take()
    }

    /// Consumes the complete lines in `pending`.
    fn take(&mut self) -> Result<u64> {
        let want = format!(":{SUBSCRIBERS}");
        let mut done = 0;
        let mut start = 0;
        while let Some(end) = self.pending[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &self.pending[start..start + end];
            ensure!(
                line == want.as_bytes(),
                "PUBLISH answered {:?}, not {want}",
                String::from_utf8_lossy(line)
            );
            done += 1;
            start += end + 2;
        }
        self.pending.drain(..start);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_messages() {
        assert_eq!(messages_for(42.3, 3.0, 100), 200);
        assert_eq!(messages_for(930.0, 3.0, 1_600), 2_800);
        assert_eq!(messages_for(1.0, 1.0, 100), 100);
    }

    #[test]
    fn counts_replies_however_split() {
        let mut r = Replies::default();
        r.pending.extend_from_slice(b":1000\r\n:10");
        assert_eq!(r.take().unwrap(), 1);
        r.pending.extend_from_slice(b"00\r");
        assert_eq!(r.take().unwrap(), 0);
        r.pending.extend_from_slice(b"\n");
        assert_eq!(r.take().unwrap(), 1);
        assert!(r.pending.is_empty());
        r.pending.extend_from_slice(b":999\r\n");
        assert!(r.take().is_err());
    }
}
