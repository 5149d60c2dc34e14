//! The recorded history of a mixed-load run, and the report checked from it.
//!
//! Every operation the load drivers send is recorded with when it started and ended, the
//! node it went to and its answer. Faults are recorded as windows. The invariants of
//! DESIGN.md are checked from that record: acknowledged writes are never lost, a credential
//! whose revocation was acknowledged is never accepted again, and no decision after an
//! acknowledged policy write comes from an older version.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One operation of the load.
#[derive(Clone, Debug)]
pub struct Record {
    /// `login`, `refresh`, `evaluate`, `me`, `server_write`, `policy_upload`, `revoke`,
    /// `revoked_check`.
    pub kind: &'static str,
    /// The node (index) it was sent to.
    pub node: usize,
    /// When it was sent, since the start of the run.
    pub started: Duration,
    /// When its answer arrived, since the start of the run.
    pub ended: Duration,
    /// The HTTP status; 0 when the connection failed.
    pub status: u16,
}

impl Record {
    /// Whether it failed: no answer (status 0) or a 5xx.
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// How many requests were sent in a window, and how many of them failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// Requests sent in the window.
    pub requests: usize,
    /// Those without an answer (status 0) or answered with a 5xx.
    pub failed: usize,
}

/// The kinds of request the load sends, in the order the report lists them.
pub const KINDS: [&str; 8] = [
    "login",
    "refresh",
    "evaluate",
    "me",
    "server_write",
    "policy_upload",
    "revoke",
    "revoked_check",
];

/// A fault, from its injection until the cluster was whole again.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    /// What was done (`kill -9 node-3`, …).
    pub name: String,
    /// When it was injected.
    pub from: Duration,
    /// When it was over (the node back and ready).
    pub until: Duration,
    /// Figures measured during it (`time_to_serve_again_ms`, …).
    pub figures: BTreeMap<String, f64>,
}

#[derive(Default)]
struct Inner {
    records: Vec<Record>,
    faults: Vec<FaultWindow>,
    acknowledged_servers: Vec<String>,
    policy_acks: Vec<(i64, Duration)>,
    decisions: Vec<(i64, Duration)>,
    propagation_ms: Vec<f64>,
    revoked_accepted: Vec<String>,
    /// Failed answers by `kind status code` (the API error code of the body, when any).
    failure_codes: BTreeMap<String, usize>,
}

/// The history of one run.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::default(),
        }
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner)
    }

    /// Records an operation sent at `started`.
    pub fn record(&self, kind: &'static str, node: usize, started: Duration, status: u16) {
        let ended = self.now();
        self.with(|h| {
            h.records.push(Record {
                kind,
                node,
                started,
                ended,
                status,
            })
        });
    }

    /// A server whose creation was acknowledged (201).
    pub fn acknowledged_server(&self, name: String) {
        self.with(|h| h.acknowledged_servers.push(name));
    }

    /// A policy version whose activation was acknowledged at `at`.
    pub fn policy_acknowledged(&self, version: i64, at: Duration) {
        self.with(|h| h.policy_acks.push((version, at)));
    }

    /// A decision made from `version`, for a request sent at `started`.
    pub fn decision(&self, version: i64, started: Duration) {
        self.with(|h| h.decisions.push((version, started)));
    }

    /// A broadcast's propagation time, as its answer reported it.
    pub fn propagation(&self, ms: f64) {
        self.with(|h| h.propagation_ms.push(ms));
    }

    /// A failed answer's error code (the body's `error.code`), to tell failures apart.
    pub fn failure_code(&self, kind: &str, status: u16, code: &str) {
        self.with(|h| {
            *h.failure_codes
                .entry(format!("{kind} {status} {code}"))
                .or_default() += 1
        });
    }

    /// A revoked credential that was accepted after its revocation was acknowledged.
    pub fn revoked_accepted(&self, what: String) {
        self.with(|h| h.revoked_accepted.push(what));
    }

    /// A fault window.
    pub fn fault(&self, window: FaultWindow) {
        self.with(|h| h.faults.push(window));
    }

    /// The operations sent from `from` until `until` (by when they were sent).
    pub fn records_between(&self, from: Duration, until: Duration) -> Vec<Record> {
        self.with(|h| {
            h.records
                .iter()
                .filter(|r| r.started >= from && r.started <= until)
                .cloned()
                .collect()
        })
    }

    /// How many operations were sent from `from` until `until`, and how many of them
    /// failed (status 0 or 5xx).
    pub fn failures_between(&self, from: Duration, until: Duration) -> Failures {
        self.with(|h| {
            h.records
                .iter()
                .filter(|r| r.started >= from && r.started <= until)
                .fold(Failures::default(), |mut f, r| {
                    f.requests += 1;
                    f.failed += usize::from(r.failed());
                    f
                })
        })
    }

    /// The servers whose creation was acknowledged.
    pub fn acknowledged_servers(&self) -> Vec<String> {
        self.with(|h| h.acknowledged_servers.clone())
    }

    /// The report, given how many acknowledged writes and audit events were found missing
    /// at the end of the run.
    pub fn report(&self, scenario: &str, lost_writes: usize, lost_audit_events: usize) -> Report {
        self.with(|h| {
            let total = h.records.len();
            let errors = |records: &mut dyn Iterator<Item = &Record>| {
                let (mut n, mut bad) = (0usize, 0usize);
                // Status 0: no answer (connection refused or timed out).
                let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
                for r in records {
                    n += 1;
                    bad += usize::from(r.failed());
                    *statuses.entry(r.status.to_string()).or_default() += 1;
                }
                json!({"requests": n, "errors": bad, "error_rate": ratio(bad, n), "statuses": statuses})
            };
            let mut by_kind = BTreeMap::new();
            for kind in KINDS {
                by_kind.insert(
                    kind,
                    errors(&mut h.records.iter().filter(|r| r.kind == kind)),
                );
            }
            let faults: Vec<Value> = h
                .faults
                .iter()
                .map(|f| {
                    let during = errors(
                        &mut h
                            .records
                            .iter()
                            .filter(|r| r.started >= f.from && r.started <= f.until),
                    );
                    json!({
                        "fault": f.name,
                        "from_s": f.from.as_secs_f64(),
                        "until_s": f.until.as_secs_f64(),
                        "during": during,
                        "figures": f.figures,
                    })
                })
                .collect();
            let calm = errors(&mut h.records.iter().filter(|r| {
                !h.faults
                    .iter()
                    .any(|f| r.started >= f.from && r.started <= f.until)
            }));
            // A decision is stale when it was asked for after a newer version was
            // acknowledged and still came from an older one.
            let stale = h
                .decisions
                .iter()
                .filter(|(version, started)| {
                    h.policy_acks
                        .iter()
                        .any(|(acked, at)| at < started && acked > version)
                })
                .count();
            let mut propagation = h.propagation_ms.clone();
            propagation.sort_by(f64::total_cmp);
            // Acknowledged revocations only: a refused one's time says nothing of how long
            // a revocation takes.
            let mut revocation: Vec<f64> = h
                .records
                .iter()
                .filter(|r| r.kind == "revoke" && r.status == 200)
                .map(|r| r.ended.saturating_sub(r.started).as_secs_f64() * 1e3)
                .collect();
            revocation.sort_by(f64::total_cmp);
            Report(json!({
                "scenario": scenario,
                "duration_s": self.now().as_secs_f64(),
                "requests": total,
                "overall": errors(&mut h.records.iter()),
                "calm": calm,
                "by_kind": by_kind,
                "faults": faults,
                "broadcast_propagation_ms": {
                    "count": propagation.len(),
                    "p50": percentile(&propagation, 0.50),
                    "p99": percentile(&propagation, 0.99),
                },
                "failure_codes": h.failure_codes,
                "revocation_latency_ms": {
                    "count": revocation.len(),
                    "p50": percentile(&revocation, 0.50),
                    "p99": percentile(&revocation, 0.99),
                    "max": revocation.last(),
                },
                "invariants": {
                    "acknowledged_writes": h.acknowledged_servers.len(),
                    "acknowledged_writes_lost": lost_writes,
                    "audit_events_lost": lost_audit_events,
                    "revoked_credentials_accepted": h.revoked_accepted.len(),
                    "revoked_examples": h.revoked_accepted.iter().take(50).collect::<Vec<_>>(),
                    "policy_versions_acknowledged": h.policy_acks.len(),
                    "decisions": h.decisions.len(),
                    "stale_decisions": stale,
                },
            }))
        })
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(rank).copied()
}

/// Where reports go: `$CHAOS_REPORT_DIR`, else the workspace's `target/chaos-reports`.
pub fn report_dir() -> std::path::PathBuf {
    std::env::var_os("CHAOS_REPORT_DIR").map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/chaos-reports"
            ))
        },
        std::path::PathBuf::from,
    )
}

/// The checked figures of a run.
#[derive(Clone, Debug)]
pub struct Report(pub Value);

impl Report {
    /// A count of the invariants section (`acknowledged_writes_lost`, …).
    pub fn invariant(&self, name: &str) -> u64 {
        self.0["invariants"][name].as_u64().unwrap_or(u64::MAX)
    }

    /// The invariants of DESIGN.md this run broke, with how often: acknowledged writes or
    /// their audit events lost, revoked credentials accepted, stale decisions.
    pub fn broken_invariants(&self) -> Vec<(&'static str, u64)> {
        [
            "acknowledged_writes_lost",
            "audit_events_lost",
            "revoked_credentials_accepted",
            "stale_decisions",
        ]
        .into_iter()
        .map(|name| (name, self.invariant(name)))
        .filter(|(_, count)| *count != 0)
        .collect()
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        let r = &self.0;
        let mut out = format!(
            "scenario {}: {} requests in {:.1} s, error rate {:.4} (5xx and refused connections)\n",
            r["scenario"].as_str().unwrap_or_default(),
            r["requests"],
            r["duration_s"].as_f64().unwrap_or_default(),
            r["overall"]["error_rate"].as_f64().unwrap_or_default(),
        );
        out.push_str(&format!(
            "  between faults: {} requests, error rate {:.4}\n",
            r["calm"]["requests"],
            r["calm"]["error_rate"].as_f64().unwrap_or_default(),
        ));
        for (kind, figures) in r["by_kind"].as_object().into_iter().flatten() {
            out.push_str(&format!(
                "  {kind}: {} requests, error rate {:.4}, by status {}\n",
                figures["requests"],
                figures["error_rate"].as_f64().unwrap_or_default(),
                figures["statuses"],
            ));
        }
        for fault in r["faults"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  fault {}: {} requests, error rate {:.4}; {}\n",
                fault["fault"].as_str().unwrap_or_default(),
                fault["during"]["requests"],
                fault["during"]["error_rate"].as_f64().unwrap_or_default(),
                fault["figures"],
            ));
        }
        let p = &r["broadcast_propagation_ms"];
        out.push_str(&format!(
            "  broadcast propagation: p50 {} ms, p99 {} ms over {} broadcasts\n",
            p["p50"], p["p99"], p["count"]
        ));
        if let Some(codes) = r["failure_codes"].as_object()
            && !codes.is_empty()
        {
            out.push_str(&format!(
                "  failures by kind, status and code: {}\n",
                r["failure_codes"]
            ));
        }
        let l = &r["revocation_latency_ms"];
        out.push_str(&format!(
            "  revocation latency (acknowledged): p50 {} ms, p99 {} ms, max {} ms over {} revocations\n",
            l["p50"], l["p99"], l["max"], l["count"]
        ));
        let i = &r["invariants"];
        out.push_str(&format!(
            "  invariants: {} acknowledged writes, {} lost; audit events lost {}; revoked credentials accepted {}; stale decisions {} of {}\n",
            i["acknowledged_writes"],
            i["acknowledged_writes_lost"],
            i["audit_events_lost"],
            i["revoked_credentials_accepted"],
            i["stale_decisions"],
            i["decisions"],
        ));
        out
    }

    /// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.txt`.
    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let name = self.0["scenario"].as_str().unwrap_or("chaos");
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&self.0)?,
        )?;
        std::fs::write(dir.join(format!("{name}.txt")), self.summary())
    }
}
