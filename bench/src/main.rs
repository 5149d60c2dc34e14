//! `sark-bench`: starts a real `sark` node, drives it over HTTP with `wrk`, and prints the
//! identity numbers next to baselines measured in the same run on the same machine:
//!
//! - password logins/s next to raw argon2id verifications/s (same parameters, all cores);
//! - `GET /health`, token-verified `GET /api/v1/auth/me` and `POST /api/v1/authz/evaluate`
//!   next to a bare axum hello-world (`bare-axum`, built beside this binary) at the same
//!   concurrency;
//! - refresh-token rotations/s, on SQLite and (with `--database-url`) on a second node on
//!   PostgreSQL;
//! - policy evaluations/s (raw regorus, and the API with and without a cache hit);
//! - audit events committed/s and SIEM delivery events/s on SQLite and, with
//!   `--database-url`, PostgreSQL ([`audit`]).
//!
//! Each scenario runs `--rounds` times, interleaved, and the medians are reported, because
//! the machines this runs on are shared and noisy; the goals of docs/performance.md are
//! printed last, each with its measured ratio. Run it with `scripts/bench`, which builds
//! the release binaries first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Value, json};

use sark::idp::password;

mod audit;
mod chart;
mod sessions;
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions};

const USAGE: &str = "usage: sark-bench [--seconds N] [--rounds N] [--connections N] \
                     [--login-connections N] [--audit-callers N] [--siem-events N] \
                     [--database-url URL] [--sark PATH] [--sessions N] [--chart PNG] \
                     [--only SCENARIO,...]\n\
                     --only runs the scenarios whose names start with one of the given \
                     prefixes (the baseline `bare` is always run); goals whose figures were \
                     not measured print as 0";

const ADMIN_PASSWORD: &str = "bench root passphrase, long enough";
const USER_PASSWORD: &str = "bench user passphrase, long enough";

/// Command-line settings.
#[derive(Debug)]
struct Args {
    seconds: u64,
    rounds: usize,
    connections: usize,
    login_connections: usize,
    audit_callers: usize,
    siem_events: usize,
    database_url: Option<String>,
    binary: Option<PathBuf>,
    only: Vec<String>,
    sessions: usize,
    chart: Option<PathBuf>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Self {
            seconds: 5,
            rounds: 3,
            connections: 64,
            login_connections: 8,
            audit_callers: 64,
            siem_events: 20_000,
            database_url: None,
            binary: None,
            only: Vec::new(),
            sessions: 100_000,
            chart: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
                "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
                "--connections" => args.connections = value()?.parse().context("--connections")?,
                "--login-connections" => {
                    args.login_connections = value()?.parse().context("--login-connections")?;
                }
                "--audit-callers" => {
                    args.audit_callers = value()?.parse().context("--audit-callers")?;
                }
                "--siem-events" => args.siem_events = value()?.parse().context("--siem-events")?,
                "--database-url" => args.database_url = Some(value()?),
                "--sark" => args.binary = Some(PathBuf::from(value()?)),
                "--only" => args.only = value()?.split(',').map(str::to_owned).collect(),
                "--sessions" => args.sessions = value()?.parse().context("--sessions")?,
                "--chart" => args.chart = Some(PathBuf::from(value()?)),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        ensure!(
            args.seconds > 0 && args.rounds > 0,
            "--seconds and --rounds must be positive"
        );
        ensure!(
            args.connections > 0 && args.login_connections > 0 && args.audit_callers > 0,
            "connection and caller counts must be positive"
        );
        ensure!(args.siem_events > 0, "--siem-events must be positive");
        Ok(args)
    }

    /// `--sark`, else the `sark` built next to this binary (same profile).
    fn binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.binary {
            return Ok(path.clone());
        }
        let exe = std::env::current_exe()?;
        let path = exe.with_file_name("sark");
        ensure!(
            path.is_file(),
            "{} does not exist: build it with the same profile or pass --sark",
            path.display()
        );
        Ok(path)
    }
}

/// The bare axum baseline, running while this holds it.
struct BareAxum {
    child: std::process::Child,
    addr: String,
}

impl BareAxum {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(binary)
            .arg("127.0.0.1:0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (built with sark-bench)", binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("bare-axum said {line:?}"))?
            .trim()
            .to_owned();
        Ok(Self { child, addr })
    }
}

impl Drop for BareAxum {
    fn drop(&mut self) {
        // Closing stdin stops it gracefully; the kill is for a server that hangs.
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// A goal of docs/performance.md and what this run measured.
struct Goal {
    name: String,
    measured: f64,
    bound: f64,
    at_least: bool,
}

impl Goal {
    fn at_least(name: impl Into<String>, measured: f64, bound: f64) -> Self {
        Self {
            name: name.into(),
            measured,
            bound,
            at_least: true,
        }
    }

    fn at_most(name: impl Into<String>, measured: f64, bound: f64) -> Self {
        Self {
            name: name.into(),
            measured,
            bound,
            at_least: false,
        }
    }

    fn met(&self) -> bool {
        if self.at_least {
            self.measured >= self.bound
        } else {
            self.measured <= self.bound
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.at_least { "≥" } else { "≤" };
        write!(
            f,
            "{:<42} {:>8.2} (goal {sign} {:.2}) {}",
            self.name,
            self.measured,
            self.bound,
            if self.met() { "met" } else { "NOT MET" }
        )
    }
}

/// One measured run of a scenario.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The medians of a scenario's rounds.
#[derive(Clone, Copy, Debug, Default)]
struct Medians(Sample);

impl Medians {
    fn of(samples: &[Sample]) -> Self {
        let median = |f: fn(&Sample) -> f64| {
            let mut values: Vec<f64> = samples.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            match values.len() {
                0 => 0.0,
                n if n % 2 == 1 => values[n / 2],
                n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            }
        };
        Self(Sample {
            per_second: median(|s| s.per_second),
            p50_ms: median(|s| s.p50_ms),
            p99_ms: median(|s| s.p99_ms),
        })
    }
}

impl fmt::Display for Medians {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms",
            self.0.per_second, self.0.p50_ms, self.0.p99_ms
        )
    }
}

/// Prints the figures wrk collected, in a line this program parses.
const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("SARK_BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d status_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"#;

/// wrk's threads for `connections` connections.
fn wrk_threads(connections: usize) -> usize {
    connections.min(2)
}

/// A wrk run: `script` defines the requests; the done hook is appended.
struct Wrk<'a> {
    url: String,
    connections: usize,
    seconds: u64,
    script: String,
    dir: &'a Path,
}

impl Wrk<'_> {
    fn run(&self, name: &str) -> anyhow::Result<Sample> {
        let path = self.dir.join(format!("{name}.lua"));
        std::fs::write(&path, format!("{}\n{DONE_HOOK}", self.script))?;
        let threads = wrk_threads(self.connections);
        let output = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            .arg("--timeout")
            .arg("10s")
            .arg("-s")
            .arg(&path)
            .arg(&self.url)
            .output()
            .context("running wrk (Debian package `wrk`; scripts/install-deps installs it)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "wrk failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SARK_BENCH "))
            .ok_or_else(|| anyhow!("wrk printed no figures: {stdout}"))?;
        let field = |key: &str| -> anyhow::Result<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| anyhow!("no {key} in {line}"))?
                .parse::<f64>()
                .with_context(|| format!("{key} in {line}"))
        };
        let (socket, status) = (field("socket_errors")?, field("status_errors")?);
        ensure!(
            socket == 0.0 && status == 0.0,
            "{name}: {socket} socket errors and {status} non-2xx answers; the figures would not be of successful requests"
        );
        Ok(Sample {
            per_second: field("requests")? / (field("duration_us")? / 1e6),
            p50_ms: field("p50_us")? / 1e3,
            p99_ms: field("p99_us")? / 1e3,
        })
    }
}

/// Lua string literal of `s` (JSON strings are valid Lua strings for our ASCII bodies).
fn lua_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Raw argon2id verifications per second on `threads` threads, with SARK's parameters.
fn argon2_per_second(hash: &str, threads: usize, seconds: u64) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if password::verify_password(USER_PASSWORD, hash) {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    Sample {
        per_second: total as f64 / started.elapsed().as_secs_f64(),
        ..Sample::default()
    }
}

/// The node under test and an authenticated client for setting it up.
struct Bench {
    sandbox: ClusterSandbox,
    base: String,
    client: reqwest::Client,
    users: Vec<String>,
    /// The node's resident memory once it answered its first request.
    idle_rss: u64,
}

impl Bench {
    /// A node on SQLite, or on `database` (a PostgreSQL URL), with the bench's users.
    async fn start(args: &Args, database: Option<String>) -> anyhow::Result<Self> {
        let huge = "1000000000".to_owned();
        let mut env = vec![
            (
                "SARK_BOOTSTRAP_ADMIN_PASSWORD".into(),
                ADMIN_PASSWORD.into(),
            ),
            (
                "SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE".into(),
                huge.clone(),
            ),
            ("SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE".into(), huge),
            ("SARK_HTTP__MAX_CONNECTIONS".into(), "4096".into()),
        ];
        if let Some(url) = database {
            env.push(("SARK_DATABASE__URL".into(), url));
        }
        let sandbox = ClusterSandbox::start(
            1,
            SandboxOptions {
                env,
                binary: Some(args.binary()?),
            },
        )
        .await?;
        let base = format!("http://{}", sandbox.nodes()[0].http);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut bench = Self {
            sandbox,
            base,
            client,
            users: Vec::new(),
            idle_rss: 0,
        };
        bench.idle_rss = bench.rss()?;
        let admin = bench.login("admin", ADMIN_PASSWORD).await?;
        let admin = token(&admin, "access_token")?;
        // Twice as many users as login connections: logins of one name take turns (the
        // lockout check), so one user per connection would measure that queue instead.
        for i in 0..args.login_connections * 2 {
            let name = format!("bench-user-{i}");
            let user = json!({"username": name, "email": format!("{name}@example.org"),
                              "role": "viewer", "password": USER_PASSWORD});
            bench
                .post("/api/v1/users", &user, Some(&admin), 201)
                .await?;
            bench.users.push(name);
        }
        Ok(bench)
    }

    /// The node's resident memory now.
    fn rss(&self) -> anyhow::Result<u64> {
        let pid = self
            .sandbox
            .nodes()
            .first()
            .and_then(|node| node.pid())
            .ok_or_else(|| anyhow!("the node is not running"))?;
        sessions::rss_of(&pid.to_string())
    }

    async fn login(&self, username: &str, password: &str) -> anyhow::Result<Value> {
        let body = json!({"username": username, "password": password});
        self.post("/api/v1/auth/login", &body, None, 200).await
    }

    /// POSTs `body` and returns the answer, which must have status `expect`.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        bearer: Option<&str>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        ensure!(
            status == expect,
            "POST {path}: {status} {}",
            response.text().await?
        );
        Ok(response.json().await?)
    }

    /// Proves the two evaluate scenarios measure what they say: a repeated input is a
    /// cache hit, a new one a miss.
    async fn check_cache(&self, admin: &str) -> anyhow::Result<()> {
        let same = json!({"resource": "servers", "action": "read"});
        self.post("/api/v1/authz/evaluate", &same, Some(admin), 200)
            .await?;
        let again = self
            .post("/api/v1/authz/evaluate", &same, Some(admin), 200)
            .await?;
        ensure!(
            again["cached"] == true,
            "a repeated input was not a hit: {again}"
        );
        let new = json!({"resource": "servers", "action": "read", "context": {"request": "check"}});
        let fresh = self
            .post("/api/v1/authz/evaluate", &new, Some(admin), 200)
            .await?;
        ensure!(fresh["cached"] == false, "a new input was a hit: {fresh}");
        Ok(())
    }

    /// Logins by `connections` connections: each wrk thread cycles through its own users
    /// (every `threads`-th one), so two logins of one user are never in flight together
    /// and the run measures logins, not the per-user turn.
    fn login_script(&self, connections: usize) -> String {
        let bodies: Vec<String> = self
            .users
            .iter()
            .map(|u| lua_string(&json!({"username": u, "password": USER_PASSWORD}).to_string()))
            .collect();
        format!(
            r#"local bodies = {{ {} }}
local threads = {}
local headers = {{ ["Content-Type"] = "application/json" }}
local n = 0
setup = function(thread) thread:set("cursor", n); n = n + 1 end
request = function()
  cursor = cursor + threads
  return wrk.format("POST", "/api/v1/auth/login", headers, bodies[(cursor % #bodies) + 1])
end"#,
            bodies.join(", "),
            wrk_threads(connections)
        )
    }

    /// `chains` sessions, each refreshing its own token in a loop for `seconds`.
    async fn refreshes(&self, chains: usize, seconds: u64) -> anyhow::Result<Sample> {
        let mut tokens = Vec::with_capacity(chains);
        for i in 0..chains {
            let user = &self.users[i % self.users.len()];
            tokens.push(token(
                &self.login(user, USER_PASSWORD).await?,
                "refresh_token",
            )?);
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = tokens
            .into_iter()
            .map(|mut refresh| {
                let client = self.client.clone();
                let url = format!("{}/api/v1/auth/refresh", self.base);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let response = client
                            .post(&url)
                            .json(&json!({"refresh_token": refresh}))
                            .send()
                            .await?;
                        ensure!(
                            response.status() == 200,
                            "refresh: {}",
                            response.text().await?
                        );
                        refresh = token(&response.json().await?, "refresh_token")?;
                        latencies.push(sent.elapsed());
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: usize| {
            latencies
                .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Ok(Sample {
            per_second: latencies.len() as f64 / elapsed,
            p50_ms: pct(50),
            p99_ms: pct(99),
        })
    }
}

fn token(body: &Value, key: &str) -> anyhow::Result<String> {
    body[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {key} in {body}"))
}

/// Raw evaluations per second of the built-in `authorization` bundle on one thread,
/// rotating over an admin, a viewer reading, and a viewer writing.
fn regorus_per_second(seconds: u64) -> anyhow::Result<Sample> {
    let (name, source) = sark::policy::BUILTIN_POLICIES[0];
    let settings = sark_actors::policy::PolicySettings::default();
    let compiled = sark_actors::policy::compile(name, 1, "bench", source, &settings)
        .map_err(|e| anyhow!("{e}"))?;
    let input = |role: &str, action: &str| {
        json!({"user": {"role": role, "mfa_enabled": false, "mfa_verified": false},
               "principal_type": "session", "scopes": [], "action": action, "resource": "servers",
               "context": {"time": "2026-11-26T12:00:00Z", "ip": "127.0.0.1", "node_id": "bench"}})
    };
    let inputs = [
        input("admin", "write"),
        input("viewer", "read"),
        input("viewer", "write"),
    ];
    let expected = [Some(json!(true)), Some(json!(true)), Some(json!(false))];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut n = 0usize;
    while Instant::now() < deadline {
        for (input, expected) in inputs.iter().zip(&expected) {
            let value = compiled
                .eval_rule("allow", input)
                .map_err(|e| anyhow!("{e}"))?;
            ensure!(value == *expected, "allow for {input} was {value:?}");
            n += 1;
        }
    }
    Ok(Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        ..Sample::default()
    })
}

/// wrk script: POSTs JSON to `/api/v1/authz/evaluate` with a bearer token; `vary` makes
/// every request's input distinct (a cache miss).
fn evaluate_script(token: &str, vary: bool) -> String {
    let body = r#"{"resource": "servers", "action": "read"}"#;
    let request = if vary {
        r#"n = n + 1
  return wrk.format(nil, nil, nil, string.format('{"resource": "servers", "action": "read", "context": {"request": "%d-%d"}}', id, n))"#
            .to_owned()
    } else {
        format!("return wrk.format(nil, nil, nil, {})", lua_string(body))
    };
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {}
local threads = 0
setup = function(thread) thread:set("id", threads); threads = threads + 1 end
n = 0
request = function()
  {request}
end"#,
        lua_string(&format!("Bearer {token}"))
    )
}

/// What one round measures, in print order.
const SCENARIOS: &[&str] = &[
    "argon2_1",
    "argon2_all",
    "login",
    "bare",
    "me",
    "health",
    "refresh",
    "regorus",
    "evaluate_hit",
    "evaluate_miss",
    "siem_direct",
];

/// How the SIEM baseline sends.
const SIEM_BATCH_NOTE: &str = "500 per request";

/// Scenarios run once per store (`<name>_sqlite`, `<name>_postgres`).
const STORE_SCENARIOS: &[&str] = &["audit_group", "audit_single", "siem_outbox"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let bench = Bench::start(&args, None).await?;
    let idle_rss = bench.idle_rss;
    let warm_rss = bench.rss()?;
    let bare = BareAxum::start(&args.binary()?.with_file_name("bare-axum"))?;
    let scratch = tempfile::tempdir()?;
    let hash = password::hash_password(USER_PASSWORD).map_err(|e| anyhow!("{e}"))?;
    let params = hash.split('$').nth(3).unwrap_or("?").to_owned();
    let access = token(
        &bench.login(&bench.users[0], USER_PASSWORD).await?,
        "access_token",
    )?;
    let admin = token(&bench.login("admin", ADMIN_PASSWORD).await?, "access_token")?;
    bench.check_cache(&admin).await?;
    let wrk = |path: &str, connections: usize, script: String| Wrk {
        url: format!("{}{path}", bench.base),
        connections,
        seconds: args.seconds,
        script,
        dir: scratch.path(),
    };
    let me_script = format!(
        r#"wrk.headers["Authorization"] = {}"#,
        lua_string(&format!("Bearer {access}"))
    );
    let mut stores = vec![audit::BenchStore::sqlite().await?];
    let mut postgres_node = None;
    match &args.database_url {
        Some(url) => {
            stores.push(audit::BenchStore::postgres(url).await?);
            let database = sark_chaos::sandbox::fresh_database_on(url)?;
            postgres_node = Some(Bench::start(&args, Some(database)).await?);
        }
        None => println!("PostgreSQL not measured: no --database-url"),
    }
    let mut scenarios: Vec<String> = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    if postgres_node.is_some() {
        scenarios.push("refresh_postgres".to_owned());
    }
    for store in &stores {
        scenarios.extend(
            STORE_SCENARIOS
                .iter()
                .map(|s| format!("{s}_{}", store.label)),
        );
    }
    let selected =
        |name: &str| args.only.is_empty() || args.only.iter().any(|p| name.starts_with(p.as_str()));
    scenarios.retain(|s| s == "bare" || selected(s));
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    println!(
        "sark-bench: {} on {cores} cores, {} s per run, {} rounds interleaved; medians",
        bench.sandbox.nodes()[0].http,
        args.seconds,
        args.rounds
    );
    for round in 1..=args.rounds {
        println!("round {round}/{}", args.rounds);
        for scenario in &scenarios {
            let sample = match scenario.as_str() {
                "argon2_1" => argon2_per_second(&hash, 1, args.seconds),
                "argon2_all" => argon2_per_second(&hash, cores, args.seconds),
                "login" => wrk(
                    "/api/v1/auth/login",
                    args.login_connections,
                    bench.login_script(args.login_connections),
                )
                .run("login")?,
                "me" => wrk("/api/v1/auth/me", args.connections, me_script.clone()).run("me")?,
                "health" => wrk("/health", args.connections, String::new()).run("health")?,
                "bare" => Wrk {
                    url: format!("http://{}/", bare.addr),
                    ..wrk("/", args.connections, String::new())
                }
                .run("bare")?,
                "refresh" => bench.refreshes(args.connections, args.seconds).await?,
                "regorus" => regorus_per_second(args.seconds)?,
                "evaluate_hit" => wrk(
                    "/api/v1/authz/evaluate",
                    args.connections,
                    evaluate_script(&admin, false),
                )
                .run("evaluate_hit")?,
                "evaluate_miss" => wrk(
                    "/api/v1/authz/evaluate",
                    args.connections,
                    evaluate_script(&admin, true),
                )
                .run("evaluate_miss")?,
                "siem_direct" => audit::direct_delivery(args.siem_events).await?,
                "refresh_postgres" => {
                    postgres_node
                        .as_ref()
                        .ok_or_else(|| anyhow!("no PostgreSQL node"))?
                        .refreshes(args.connections, args.seconds)
                        .await?
                }
                other => {
                    let (kind, label) = other
                        .rsplit_once('_')
                        .ok_or_else(|| anyhow!("no scenario {other}"))?;
                    let store = stores
                        .iter()
                        .find(|s| s.label == label)
                        .ok_or_else(|| anyhow!("no store for {other}"))?;
                    match kind {
                        "audit_group" => {
                            audit::group_commits(store, args.audit_callers, args.seconds).await?
                        }
                        "audit_single" => audit::single_commits(store, args.seconds).await?,
                        "siem_outbox" => audit::outbox_delivery(store, args.siem_events).await?,
                        _ => bail!("no scenario {other}"),
                    }
                }
            };
            samples.entry(scenario.clone()).or_default().push(sample);
        }
    }
    // Memory is measured once: it does not vary from round to round as throughput does.
    let session_memory = if selected("sessions") {
        Some(sessions::session_memory(args.sessions).await?)
    } else {
        None
    };
    let m = |name: &str| Medians::of(samples.get(name).map_or(&[][..], Vec::as_slice));
    let (raw1, raw, logins, me, health, refresh) = (
        m("argon2_1"),
        m("argon2_all"),
        m("login"),
        m("me"),
        m("health"),
        m("refresh"),
    );
    let (regorus, hit, miss) = (m("regorus"), m("evaluate_hit"), m("evaluate_miss"));
    let ratio = |a: Medians, b: Medians| {
        format!(
            "throughput {:.2}, p50 {:.2}, p99 {:.2}",
            a.0.per_second / b.0.per_second,
            a.0.p50_ms / b.0.p50_ms,
            a.0.p99_ms / b.0.p99_ms
        )
    };
    let conns = args.connections;
    println!();
    println!(
        "argon2id verify ({params}), 1 thread      {:>9.1} /s",
        raw1.0.per_second
    );
    println!(
        "argon2id verify ({params}), {cores} threads     {:>9.1} /s",
        raw.0.per_second
    );
    println!(
        "POST /api/v1/auth/login, {:>3} connections      {logins}",
        args.login_connections
    );
    println!(
        "  logins/s ÷ raw argon2id verifications/s ({cores} threads) = {:.2}",
        logins.0.per_second / raw.0.per_second
    );
    println!("GET /api/v1/auth/me, {conns:>3} connections          {me}");
    println!("GET /health, {conns:>3} connections                  {health}");
    println!("  /auth/me ÷ /health: {}", ratio(me, health));
    println!(
        "POST /api/v1/auth/refresh, {:>3} sessions        {refresh}",
        args.connections
    );
    let refresh_postgres = postgres_node.as_ref().map(|_| m("refresh_postgres"));
    if let Some(figure) = refresh_postgres {
        println!(
            "  on PostgreSQL, {:>3} sessions                 {figure}",
            args.connections
        );
    }
    println!(
        "regorus eval of `authorization`, 1 thread  {:>9.0} /s",
        regorus.0.per_second
    );
    println!("POST /api/v1/authz/evaluate (cache hit)    {hit}");
    println!("POST /api/v1/authz/evaluate (cache miss)   {miss}");
    println!("  evaluate hit ÷ /health: {}", ratio(hit, health));
    println!("  evaluate miss ÷ /health: {}", ratio(miss, health));
    let bare_axum = m("bare");
    println!("bare axum GET /, {conns:>3} connections              {bare_axum}");
    for (name, figure) in [
        ("GET /health", health),
        ("GET /api/v1/auth/me", me),
        ("evaluate (cache hit)", hit),
        ("evaluate (cache miss)", miss),
    ] {
        println!("  {name} ÷ bare axum: {}", ratio(figure, bare_axum));
    }
    let direct = m("siem_direct");
    for store in &stores {
        let label = store.label;
        let (group, single, outbox) = (
            m(&format!("audit_group_{label}")),
            m(&format!("audit_single_{label}")),
            m(&format!("siem_outbox_{label}")),
        );
        println!(
            "audit events committed ({label}), {:>3} callers {group}",
            args.audit_callers
        );
        println!("audit events one per transaction ({label})   {single}");
        println!(
            "  group commit ÷ one per transaction: {:.2}",
            group.0.per_second / single.0.per_second
        );
        println!(
            "SIEM delivery outbox → HEC ({label})      {:>9.0} events/s",
            outbox.0.per_second
        );
        println!(
            "  outbox ÷ direct posts of the same batches: {:.2}",
            outbox.0.per_second / direct.0.per_second
        );
    }
    println!(
        "SIEM direct posts to HEC, {SIEM_BATCH_NOTE}    {:>9.0} events/s",
        direct.0.per_second
    );
    if let Some(path) = &args.chart {
        let bar = |label, figure: Medians, baseline| chart::Bar {
            label,
            per_second: figure.0.per_second,
            p99_ms: figure.0.p99_ms,
            baseline,
        };
        chart::draw(
            path,
            &format!(
                "SARK's front door next to bare axum (grey): medians of {} interleaved round(s), wrk -c{conns}, {cores} cores",
                args.rounds
            ),
            &[
                bar("bare axum", bare_axum, true),
                bar("GET /health", health, false),
                bar("GET /auth/me", me, false),
                bar("evaluate (hit)", hit, false),
                bar("evaluate (miss)", miss, false),
            ],
        )?;
        println!("chart written to {}", path.display());
    }
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "idle node resident memory                  {:>9.1} MiB",
        idle_rss as f64 / MIB
    );
    println!(
        "  after {} password hashes (users and logins) {:>6.1} MiB",
        args.login_connections * 2 + 2,
        warm_rss as f64 / MIB
    );
    if let Some(memory) = session_memory {
        println!(
            "{} session actors: +{:.1} MiB resident ({:.0} bytes each), started in {:.1} s",
            memory.sessions,
            memory.added_bytes as f64 / MIB,
            memory.added_bytes as f64 / memory.sessions as f64,
            memory.started_in.as_secs_f64()
        );
        println!(
            "  as many actors that do nothing: +{:.1} MiB ({:.0} bytes each; ractor's own part)",
            memory.noop_bytes as f64 / MIB,
            memory.noop_bytes as f64 / memory.sessions as f64
        );
    }
    let per_second = |a: Medians, b: Medians| a.0.per_second / b.0.per_second;
    let mut goals = vec![
        Goal::at_least(
            "evaluate (cache hit) ÷ bare axum",
            per_second(hit, bare_axum),
            0.40,
        ),
        Goal::at_most("evaluate (cache hit) p99, ms", hit.0.p99_ms, 5.0),
        Goal::at_least(
            "evaluate (cache miss) ÷ bare axum",
            per_second(miss, bare_axum),
            0.25,
        ),
        Goal::at_least(
            "GET /api/v1/auth/me ÷ bare axum",
            per_second(me, bare_axum),
            0.35,
        ),
        Goal::at_least(
            "GET /health ÷ bare axum",
            per_second(health, bare_axum),
            0.80,
        ),
        Goal::at_least(
            "logins ÷ raw argon2id verifications",
            per_second(logins, raw),
            0.90,
        ),
    ];
    goals.push(Goal::at_most(
        "idle node resident memory, MiB",
        idle_rss as f64 / MIB,
        50.0,
    ));
    if let Some(memory) = session_memory {
        goals.push(Goal::at_most(
            format!("idle node + {} session actors, MiB", memory.sessions),
            (idle_rss + memory.added_bytes) as f64 / MIB,
            500.0,
        ));
    }
    if let Some(figure) = refresh_postgres {
        goals.push(Goal::at_least(
            "refreshes on PostgreSQL, /s",
            figure.0.per_second,
            3000.0,
        ));
    }
    for store in &stores {
        let outbox = m(&format!("siem_outbox_{}", store.label));
        goals.push(Goal::at_least(
            format!("SIEM outbox ÷ direct posts ({})", store.label),
            per_second(outbox, direct),
            0.80,
        ));
    }
    println!();
    println!("goals (docs/performance.md), medians of this run:");
    for goal in &goals {
        println!("  {goal}");
    }
    drop(bare);
    if let Some(node) = postgres_node {
        let statuses = node.sandbox.shutdown().await?;
        ensure!(
            statuses.iter().all(std::process::ExitStatus::success),
            "the PostgreSQL node did not stop cleanly: {statuses:?}"
        );
    }
    let statuses = bench.sandbox.shutdown().await?;
    ensure!(
        statuses.iter().all(std::process::ExitStatus::success),
        "the node did not stop cleanly: {statuses:?}"
    );
    Ok(())
}
