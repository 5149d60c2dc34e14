//! A record of when each node was unready and when it was out of a balancer's rotation.
//!
//! [`ReadinessMonitor`] polls every node's `GET /health/ready` and the balancer's stats
//! socket every 100 ms from tasks of its own, and keeps, per node, the intervals in which
//! the node answered anything but 200 (with the `failing` list it gave) and those in which
//! HAProxy did not send it requests. Times are on the [`History`]'s clock, so they line up
//! with the recorded requests and faults.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::balancer::{Balancer, StatsSocket};
use crate::history::History;
use crate::sandbox::ClusterSandbox;

/// How often each node and the rotation are polled.
const POLL: Duration = Duration::from_millis(100);

/// One interval in which a node was unready (or out of rotation).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// When the first poll that saw it started (seconds on the history's clock).
    pub from_s: f64,
    /// When the first poll that saw it over again started, or when the monitor stopped.
    pub until_s: f64,
    /// Whether it was still going on when the monitor stopped.
    pub ongoing: bool,
    /// Why, as seen: the `failing` entries of `/health/ready` (`cluster`,
    /// `shutting_down`, …), `unreachable`, `timeout` or `status N`; for the rotation,
    /// HAProxy's server status (`DOWN`, `DOWN 1/2`, `MAINT`, …).
    pub reasons: Vec<String>,
}

impl Interval {
    fn overlaps(&self, from: f64, until: f64) -> bool {
        self.from_s <= until && self.until_s >= from
    }

    /// How long it lasted, in seconds.
    pub fn length_s(&self) -> f64 {
        self.until_s - self.from_s
    }
}

/// What the monitor saw of one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeReadiness {
    /// The node's name (`node-1`, …).
    pub name: String,
    /// Polls of its `/health/ready`.
    pub polls: usize,
    /// Intervals in which it did not answer `/health/ready` with 200.
    pub unready: Vec<Interval>,
    /// Their total length, in seconds.
    pub unready_total_s: f64,
    /// Intervals in which the balancer did not send it requests.
    pub out_of_rotation: Vec<Interval>,
    /// Their total length, in seconds.
    pub out_of_rotation_total_s: f64,
}

/// Whether the union of `intervals` covers all of `from..=until`.
fn covers(intervals: &[Interval], from: f64, until: f64) -> bool {
    let mut reached = from;
    let mut sorted: Vec<&Interval> = intervals.iter().collect();
    sorted.sort_by(|a, b| a.from_s.total_cmp(&b.from_s));
    for interval in sorted {
        if interval.from_s > reached {
            break;
        }
        reached = reached.max(interval.until_s);
        if reached >= until {
            return true;
        }
    }
    reached >= until
}

impl NodeReadiness {
    /// The unready intervals that overlap `from..=until`.
    pub fn unready_between(&self, from: Duration, until: Duration) -> Vec<&Interval> {
        let (from, until) = (from.as_secs_f64(), until.as_secs_f64());
        self.unready
            .iter()
            .filter(|i| i.overlaps(from, until))
            .collect()
    }

    /// The out-of-rotation intervals that overlap `from..=until`.
    pub fn out_of_rotation_between(&self, from: Duration, until: Duration) -> Vec<&Interval> {
        let (from, until) = (from.as_secs_f64(), until.as_secs_f64());
        self.out_of_rotation
            .iter()
            .filter(|i| i.overlaps(from, until))
            .collect()
    }

    /// Whether it was seen ready at some moment of `from..=until`.
    pub fn ready_during(&self, from: Duration, until: Duration) -> bool {
        !covers(&self.unready, from.as_secs_f64(), until.as_secs_f64())
    }

    /// Whether it was in rotation at some moment of `from..=until`.
    pub fn in_rotation_during(&self, from: Duration, until: Duration) -> bool {
        !covers(
            &self.out_of_rotation,
            from.as_secs_f64(),
            until.as_secs_f64(),
        )
    }
}

/// What the monitor saw, from its start until its stop.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadinessSummary {
    /// When it started polling (seconds on the history's clock).
    pub from_s: f64,
    /// When it stopped.
    pub until_s: f64,
    /// Polls of the balancer's stats socket that got no answer (its rotation is not
    /// recorded for them).
    pub rotation_poll_errors: usize,
    /// Per node, in slot order.
    pub nodes: Vec<NodeReadiness>,
}

impl ReadinessSummary {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeReadiness> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The summary as JSON, for a report.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// One line per node: its unready and out-of-rotation intervals.
    pub fn text(&self) -> String {
        let describe = |intervals: &[Interval]| {
            intervals
                .iter()
                .map(|i| {
                    format!(
                        "{:.2}-{:.2} s{} [{}]",
                        i.from_s,
                        i.until_s,
                        if i.ongoing { " (ongoing)" } else { "" },
                        i.reasons.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut out = format!(
            "readiness from {:.2} s to {:.2} s ({} rotation polls failed)\n",
            self.from_s, self.until_s, self.rotation_poll_errors
        );
        for node in &self.nodes {
            out.push_str(&format!(
                "  {}: unready {:.2} s in {} intervals: {}; out of rotation {:.2} s in {} intervals: {}\n",
                node.name,
                node.unready_total_s,
                node.unready.len(),
                describe(&node.unready),
                node.out_of_rotation_total_s,
                node.out_of_rotation.len(),
                describe(&node.out_of_rotation),
            ));
        }
        out
    }
}

/// The intervals of one yes/no signal (ready, in rotation) as polls see it.
#[derive(Default)]
struct Track {
    polls: usize,
    open: Option<(Duration, BTreeSet<String>)>,
    closed: Vec<Interval>,
}

impl Track {
    /// A poll sent `at` saw the signal `good`, or not because of `reasons`.
    fn observe(&mut self, at: Duration, good: bool, reasons: Vec<String>) {
        self.polls += 1;
        match (&mut self.open, good) {
            (None, false) => self.open = Some((at, reasons.into_iter().collect())),
            (Some((_, seen)), false) => seen.extend(reasons),
            (Some(_), true) => {
                if let Some((from, seen)) = self.open.take() {
                    self.closed.push(Interval {
                        from_s: from.as_secs_f64(),
                        until_s: at.as_secs_f64(),
                        ongoing: false,
                        reasons: seen.into_iter().collect(),
                    });
                }
            }
            (None, true) => {}
        }
    }

    /// The intervals, an open one ending at `end`; and their total length.
    fn finish(&self, end: Duration) -> (Vec<Interval>, f64) {
        let mut intervals = self.closed.clone();
        if let Some((from, seen)) = &self.open {
            intervals.push(Interval {
                from_s: from.as_secs_f64(),
                until_s: end.as_secs_f64(),
                ongoing: true,
                reasons: seen.iter().cloned().collect(),
            });
        }
        let total = intervals
            .iter()
            .map(Interval::length_s)
            .fold(0.0, |a, b| a + b);
        (intervals, total)
    }
}

#[derive(Default)]
struct State {
    ready: Vec<Track>,
    rotation: Vec<Track>,
}

/// Polls every node's readiness and the balancer's rotation until stopped.
pub struct ReadinessMonitor {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    state: Arc<Mutex<State>>,
    rotation_errors: Arc<AtomicUsize>,
    history: Arc<History>,
    started: Duration,
    names: Vec<String>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReadinessMonitor {
    /// Starts polling every slot of `sandbox` (stopped ones count as unready:
    /// `unreachable`) and, when given, `balancer`'s rotation.
    pub fn start(
        sandbox: &ClusterSandbox,
        balancer: Option<&Balancer>,
        history: Arc<History>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let n = sandbox.nodes().len();
        let state = Arc::new(Mutex::new(State {
            ready: (0..n).map(|_| Track::default()).collect(),
            rotation: (0..n).map(|_| Track::default()).collect(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let rotation_errors = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (i, node) in sandbox.nodes().iter().enumerate() {
            tasks.push(tokio::spawn(poll_node(
                client.clone(),
                format!("http://{}/health/ready", node.http),
                i,
                state.clone(),
                history.clone(),
                stop.clone(),
            )));
        }
        if let Some(balancer) = balancer {
            tasks.push(tokio::spawn(poll_rotation(
                balancer.stats(),
                state.clone(),
                rotation_errors.clone(),
                history.clone(),
                stop.clone(),
            )));
        }
        Ok(Self {
            stop,
            tasks,
            state,
            rotation_errors,
            started: history.now(),
            history,
            names: sandbox.nodes().iter().map(|n| n.name.clone()).collect(),
        })
    }

    /// Stops polling (after the polls under way) and returns what was seen.
    pub async fn stop(self) -> ReadinessSummary {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let end = self.history.now();
        let state = lock(&self.state);
        let nodes = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (unready, unready_total_s) = state.ready[i].finish(end);
                let (out_of_rotation, out_of_rotation_total_s) = state.rotation[i].finish(end);
                NodeReadiness {
                    name: name.clone(),
                    polls: state.ready[i].polls,
                    unready,
                    unready_total_s,
                    out_of_rotation,
                    out_of_rotation_total_s,
                }
            })
            .collect();
        ReadinessSummary {
            from_s: self.started.as_secs_f64(),
            until_s: end.as_secs_f64(),
            rotation_poll_errors: self.rotation_errors.load(Ordering::Relaxed),
            nodes,
        }
    }
}

/// Why a `/health/ready` answer (or its absence) means unready; empty when it was 200.
async fn readiness(client: &reqwest::Client, url: &str) -> Vec<String> {
    match client.get(url).send().await {
        Ok(response) if response.status() == 200 => Vec::new(),
        Ok(response) => {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let failing: Vec<String> = body["failing"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            if failing.is_empty() {
                vec![format!("status {status}")]
            } else {
                failing
            }
        }
        Err(e) if e.is_timeout() => vec!["timeout".to_owned()],
        Err(_) => vec!["unreachable".to_owned()],
    }
}

async fn poll_node(
    client: reqwest::Client,
    url: String,
    i: usize,
    state: Arc<Mutex<State>>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(POLL);
    // A poll that waited out its timeout is followed by the next at once, not by a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let at = history.now();
        let reasons = readiness(&client, &url).await;
        lock(&state).ready[i].observe(at, reasons.is_empty(), reasons);
    }
}

async fn poll_rotation(
    stats: StatsSocket,
    state: Arc<Mutex<State>>,
    errors: Arc<AtomicUsize>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(POLL);
    // As for the nodes: no burst after a slow answer.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let at = history.now();
        match stats.statuses().await {
            Ok(statuses) => {
                let mut state = lock(&state);
                for (track, status) in state.rotation.iter_mut().zip(statuses) {
                    let good = status.in_rotation();
                    track.observe(at, good, vec![status.status]);
                }
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_track_opens_on_the_first_bad_poll_and_closes_on_the_first_good_one() {
        let mut track = Track::default();
        track.observe(s(0.0), true, vec![]);
        track.observe(s(1.0), false, vec!["cluster".into()]);
        track.observe(s(1.1), false, vec!["shutting_down".into()]);
        track.observe(s(1.5), true, vec![]);
        track.observe(s(2.0), false, vec!["unreachable".into()]);
        let (intervals, total) = track.finish(s(3.0));
        assert_eq!(intervals.len(), 2);
        assert_eq!(intervals[0].reasons, vec!["cluster", "shutting_down"]);
        assert!(!intervals[0].ongoing);
        assert!(intervals[1].ongoing);
        assert!((total - 1.5).abs() < 1e-9, "{total}");
    }

    #[test]
    fn ready_during_is_false_only_when_unready_intervals_cover_the_whole_window() {
        let node = NodeReadiness {
            name: "node-1".into(),
            polls: 0,
            unready: vec![
                Interval {
                    from_s: 0.0,
                    until_s: 2.0,
                    ongoing: false,
                    reasons: vec![],
                },
                Interval {
                    from_s: 2.0,
                    until_s: 3.0,
                    ongoing: false,
                    reasons: vec![],
                },
            ],
            unready_total_s: 3.0,
            out_of_rotation: vec![],
            out_of_rotation_total_s: 0.0,
        };
        assert!(!node.ready_during(s(0.5), s(2.9)));
        assert!(node.ready_during(s(0.5), s(3.5)));
        assert!(node.in_rotation_during(s(0.0), s(1.0)));
        assert_eq!(node.unready_between(s(2.5), s(4.0)).len(), 1);
        assert!(node.unready_between(s(3.5), s(4.0)).is_empty());
    }
}
