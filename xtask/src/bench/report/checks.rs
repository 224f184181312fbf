//! The project's performance targets, evaluated on one run: reported,
//! never asserted, since a miss is a finding rather than a failure.

use super::{find, p99_of, paired, ratio, rps_of, ProxyComparison, Report};
use crate::bench::{Target, Workload, COMMANDS, PIPELINES};

/// A performance target of the project, and whether it was met.
pub(super) struct Check {
    /// The target's row label: what is compared with what.
    pub(super) what: String,
    /// The goal as the table shows it, e.g. `≥ 1.00×`.
    pub(super) goal: &'static str,
    /// The figure it is judged on; `None` when a case it needs is missing.
    pub(super) measured: Option<f64>,
    /// `measured >= limit` passes when true, `measured <= limit` when false.
    at_least: bool,
    /// The figure of the goal, the one `goal` shows.
    limit: f64,
}

impl Check {
    /// `pass`, `**miss**` (bold, so a miss stands out in the table), or
    /// `n/a` when nothing was measured.
    pub(super) fn verdict(&self) -> &'static str {
        match self.measured {
            None => "n/a",
            Some(m)
                if (self.at_least && m >= self.limit) || (!self.at_least && m <= self.limit) =>
            {
                "pass"
            }
            Some(_) => "**miss**",
        }
    }
}

/// The project's performance targets, evaluated.
pub(super) fn checks(r: &Report) -> Vec<Check> {
    let cases = &r.cases;
    // `a` against `b` on the same workload and pipeline depth.
    let vs = |a, b, workload, p, metric| {
        paired(
            find(cases, a, workload, p),
            find(cases, b, workload, p),
            metric,
        )
    };
    let at_least = |what: String, goal, measured, limit| Check {
        what,
        goal,
        measured,
        at_least: true,
        limit,
    };
    let mut v = Vec::new();
    for workload in [Workload::Get, Workload::Set] {
        let name = workload.test();
        v.push(at_least(
            format!("kv server {name} P1 req/s vs Redis"),
            "≥ 1.00×",
            vs(Target::KvServer, Target::Redis, workload, 1, rps_of),
            1.0,
        ));
        v.push(at_least(
            format!("kv server {name} P16 req/s vs Redis"),
            "≥ 1.20×",
            vs(Target::KvServer, Target::Redis, workload, 16, rps_of),
            1.2,
        ));
        v.push(at_least(
            format!("kv server {name} P16 req/s vs null ceiling"),
            "≥ 0.90",
            vs(Target::KvServer, Target::Null, workload, 16, rps_of),
            0.9,
        ));
    }
    for p in PIPELINES {
        v.push(at_least(
            format!("kv proxy cache-hit GET P{p} vs Redis GET"),
            "≥ 0.95×",
            vs(Target::KvProxy, Target::Redis, Workload::Get, p, rps_of),
            0.95,
        ));
    }
    v.push(at_least(
        "kv proxy cache-hit GET P16, /metrics scraped vs not served".into(),
        "≥ 0.97×",
        vs(
            Target::KvProxyMetrics,
            Target::KvProxy,
            Workload::Get,
            16,
            rps_of,
        ),
        0.97,
    ));
    v.push(at_least(
        "kv proxy forwarded SET P1 vs Redis SET".into(),
        "≥ 0.60×",
        vs(Target::KvProxy, Target::Redis, Workload::Set, 1, rps_of),
        0.6,
    ));
    for workload in [Workload::Get, Workload::Set] {
        v.push(Check {
            what: format!("kv server {} P1 p99 latency vs Redis", workload.test()),
            goal: "≤ 1.00×",
            measured: vs(Target::KvServer, Target::Redis, workload, 1, p99_of),
            at_least: false,
            limit: 1.0,
        });
    }
    for workload in COMMANDS {
        v.push(at_least(
            format!("kv server {} P16 req/s vs Redis", workload.test()),
            "≥ 1.00×",
            vs(Target::KvServer, Target::Redis, workload, 16, rps_of),
            1.0,
        ));
    }
    for (memory, what) in [
        (&r.memory, "kv bytes/key vs Redis (both RSS)"),
        (
            &r.memory_ttl,
            "kv bytes/key vs Redis, keys with a TTL (both RSS)",
        ),
    ] {
        v.push(Check {
            what: what.into(),
            goal: "≤ 1.00×",
            measured: memory
                .as_ref()
                .and_then(|m| ratio(Some(m.kv_rss as f64), Some(m.redis_rss as f64))),
            at_least: false,
            limit: 1.0,
        });
    }
    for p in PIPELINES {
        let tracked = |target| {
            r.tracking
                .as_ref()
                .and_then(|t| find(&t.cases, target, Workload::Set, p))
        };
        v.push(at_least(
            format!("kv server SET P{p} with 2 tracking proxies vs untracked"),
            "≥ 0.90×",
            paired(
                tracked(Target::KvServerTracked),
                tracked(Target::KvServerUntracked),
                rps_of,
            ),
            0.9,
        ));
    }
    let proxies = match &r.proxies {
        Some(ProxyComparison::Measured(p)) => Some(&p.cases[..]),
        _ => None,
    };
    let vs_twemproxy = |kv, workload, p| {
        proxies.and_then(|cases| {
            paired(
                find(cases, kv, workload, p),
                find(cases, Target::Twemproxy, workload, p),
                rps_of,
            )
        })
    };
    for workload in [Workload::Get, Workload::Set] {
        for p in PIPELINES {
            v.push(at_least(
                format!(
                    "kv proxy (cache off) {} P{p} req/s vs twemproxy",
                    workload.test()
                ),
                "≥ 1.00×",
                vs_twemproxy(Target::KvProxyUncached, workload, p),
                1.0,
            ));
        }
    }
    for p in PIPELINES {
        v.push(at_least(
            format!("kv proxy cache-hit GET P{p} req/s vs twemproxy GET"),
            "≥ 1.50×",
            vs_twemproxy(Target::KvProxyCached, Workload::Get, p),
            1.5,
        ));
    }
    v
}
