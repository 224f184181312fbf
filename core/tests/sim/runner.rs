//! Running seeds, shrinking failures and reporting them.

use super::model::fmt_t;
use super::setup::{Params, Setup, FAULTS};
use super::world::{Stats, World};
use kv_core::Instant;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// How a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The step that broke an invariant; `steps + 1` while quiescing.
    pub step: u64,
    pub time: Instant,
    /// The invariant (or `panic`).
    pub kind: String,
    pub message: String,
}

pub struct Run {
    pub failure: Option<Failure>,
    pub trace: Vec<String>,
    pub stats: Stats,
    /// Steps executed (those of the quiescing phase not counted).
    pub steps: u64,
}

/// Runs one simulation; a panic in the code under test is a failure too.
pub fn run(p: &Params, trace: bool) -> Run {
    let mut world = World::new(p.clone(), trace);
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(v)) => Some(Failure {
            step: world.step,
            time: world.now,
            kind: v.kind.to_string(),
            message: v.message,
        }),
        Err(panic) => Some(Failure {
            step: world.step,
            time: world.now,
            kind: "panic".to_string(),
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(a panic without a message)".into()),
        }),
    };
    Run {
        failure,
        trace: world.trace.take().unwrap_or_default(),
        stats: world.stats.clone(),
        steps: world.step.min(p.steps),
    }
}

/// A failure after shrinking, ready to report.
pub struct Explained {
    pub shrunk: Params,
    pub failure: Failure,
    pub report: String,
}

/// Shrinks a failure and writes its report: the seed, the step, the
/// shrunk parameters, the trace of the shrunk run and how to replay it.
pub fn explain(p: &Params, f: &Failure) -> Explained {
    let (shrunk, sf, runs) = shrink(p, f);
    let traced = run(&shrunk, true);
    let mut r = String::new();
    let _ = writeln!(r, "\n==== simulation failure: {} ====", sf.kind);
    let _ = writeln!(r, "{}", sf.message);
    let _ = writeln!(
        r,
        "seed {}: first failed at {} (t={}); shrunk in {runs} re-runs to fail at {} (t={})",
        p.seed,
        step_text(f.step, p.steps),
        fmt_t(f.time),
        step_text(sf.step, shrunk.steps),
        fmt_t(sf.time)
    );
    let setup = |q: &Params| Setup::new(q);
    let _ = writeln!(
        r,
        "shrunk: steps {} -> {}, clients {} -> {}, proxies {} -> {}, faults {} -> {}",
        p.steps,
        shrunk.steps,
        setup(p).clients.len(),
        setup(&shrunk).clients.len(),
        setup(p).proxies,
        setup(&shrunk).proxies,
        p.faults_text(),
        shrunk.faults_text()
    );
    let _ = writeln!(r, "world: {}", setup(&shrunk).describe());
    match &traced.failure {
        Some(g) if *g == sf => {}
        other => {
            let _ = writeln!(
                r,
                "WARNING: the traced re-run did not fail the same way (non-determinism?): {other:?}"
            );
        }
    }
    const SHOWN: usize = 120;
    let total = traced.trace.len();
    let _ = writeln!(
        r,
        "trace of the shrunk run ({} of {total} lines; SIM_TRACE=all on replay shows all):",
        total.min(SHOWN)
    );
    for line in &traced.trace[total.saturating_sub(SHOWN)..] {
        let _ = writeln!(r, "  {line}");
    }
    let _ = writeln!(r, "replay: {}", shrunk.replay_command());
    Explained {
        shrunk,
        failure: sf,
        report: r,
    }
}

fn step_text(step: u64, steps: u64) -> String {
    if step > steps {
        format!("the end-of-run probes after {steps} steps")
    } else {
        format!("step {step} of {steps}")
    }
}

/// Makes a failing run smaller while it keeps failing the same way (same
/// invariant): the fewest steps (the failing step, then bisection below
/// it), fewer fault kinds, fewer clients, fewer proxies. The same seed
/// with other parameters is a different run, so each attempt is simply
/// tried. Returns the result and how many runs it took.
pub fn shrink(p: &Params, f: &Failure) -> (Params, Failure, usize) {
    let mut runs = 0;
    let mut attempt = |q: &Params| {
        runs += 1;
        run(q, false).failure.filter(|g| g.kind == f.kind)
    };
    let mut best = (p.clone(), f.clone());
    shrink_steps(&mut best, &mut attempt);
    for _ in 0..4 {
        let mut progress = false;
        for &(bit, _) in FAULTS {
            if best.0.faults & bit != 0 {
                let mut q = best.0.clone();
                q.faults &= !bit;
                if let Some(g) = attempt(&q) {
                    best = (q, g);
                    progress = true;
                }
            }
        }
        let clients = Setup::new(&best.0).clients.len();
        for n in 1..clients {
            let mut q = best.0.clone();
            q.clients = Some(n);
            if let Some(g) = attempt(&q) {
                best = (q, g);
                progress = true;
                break;
            }
        }
        let proxies = Setup::new(&best.0).proxies;
        for n in 1..proxies {
            let mut q = best.0.clone();
            q.proxies = Some(n);
            if let Some(g) = attempt(&q) {
                best = (q, g);
                progress = true;
                break;
            }
        }
        if !progress {
            break;
        }
        shrink_steps(&mut best, &mut attempt);
    }
    let (p, f) = best;
    (p, f, runs)
}

fn shrink_steps(
    best: &mut (Params, Failure),
    attempt: &mut impl FnMut(&Params) -> Option<Failure>,
) {
    // A failure at step k happens the same way in a run of k steps: the
    // steps before it draw the same numbers.
    if best.1.step < best.0.steps {
        let mut q = best.0.clone();
        q.steps = best.1.step;
        if let Some(g) = attempt(&q) {
            *best = (q, g);
        }
    }
    // Shorter runs may still fail, in their end-of-run probes: bisect,
    // treating "fails" as if it were monotonic in the step count.
    let (mut lo, mut hi) = (0, best.0.steps);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let mut q = best.0.clone();
        q.steps = mid;
        match attempt(&q) {
            Some(g) => {
                hi = mid;
                *best = (q, g);
            }
            None => lo = mid,
        }
    }
}

/// What running many seeds found.
pub struct Summary {
    pub seeds: u64,
    pub steps: u64,
    pub seconds: f64,
    pub stats: Stats,
    /// The failing seed's parameters and failure, if any seed failed.
    pub failure: Option<(Params, Failure)>,
}

impl Summary {
    pub fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "sim: {} seeds, {} steps in {:.2} s: {:.0} steps/s ({} requests: {} replies, \
             {} failed by faults; {} cache hits, {} of them checked against their age; \
             {} faults; {} keys expired, {} by active expiry; {} EXECs, {} aborted by a \
             watched key; {} transaction commands refused by proxies; {} invalidations taken \
             by proxies, {} reads bound by one or by a reconnection)",
            self.seeds,
            self.steps,
            self.seconds,
            self.steps as f64 / self.seconds.max(1e-9),
            s.requests,
            s.replies,
            s.failed,
            s.proxy_hits,
            s.cache_hits,
            s.faults,
            s.expired,
            s.active_expired,
            s.execs,
            s.exec_aborts,
            s.tx_refused,
            s.invalidations,
            s.tracked_reads
        )
    }
}

/// Runs seeds `start..start + count` with `template`'s other parameters on
/// every core, stopping at the first failure.
pub fn run_many(template: &Params, start: u64, count: u64) -> Summary {
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let total = Mutex::new((0u64, 0u64, Stats::default(), None::<(Params, Failure)>));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let began = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    return;
                }
                let p = Params {
                    seed,
                    ..template.clone()
                };
                let r = run(&p, false);
                let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
                t.0 += 1;
                t.1 += r.steps;
                add(&mut t.2, &r.stats);
                if let Some(f) = r.failure {
                    stop.store(true, Ordering::Relaxed);
                    if t.3.as_ref().is_none_or(|(q, _)| q.seed > seed) {
                        t.3 = Some((p, f));
                    }
                }
            });
        }
    });
    let (seeds, steps, stats, failure) = total.into_inner().unwrap_or_else(|e| e.into_inner());
    Summary {
        seeds,
        steps,
        seconds: began.elapsed().as_secs_f64(),
        stats,
        failure,
    }
}

fn add(total: &mut Stats, s: &Stats) {
    total.requests += s.requests;
    total.replies += s.replies;
    total.failed += s.failed;
    total.cache_hits += s.cache_hits;
    total.proxy_hits += s.proxy_hits;
    total.faults += s.faults;
    total.expired += s.expired;
    total.active_expired += s.active_expired;
    total.execs += s.execs;
    total.exec_aborts += s.exec_aborts;
    total.tx_refused += s.tx_refused;
    total.invalidations += s.invalidations;
    total.tracked_reads += s.tracked_reads;
}
