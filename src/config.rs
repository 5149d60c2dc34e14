//! Configuration: defaults, then a TOML file, then `SARK_*` environment variables, then
//! command-line flags; validated once into a [`Config`] that is passed down as `Arc<Config>`.
//!
//! `SARK_A__B` is the key `b` of table `[a]`. Every secret may instead be given as a file
//! with the `_FILE` suffix (`SARK_SECRETS__KEY_FILE`); such files must not be readable by
//! other users. Unknown keys are refused, so a typo fails start-up instead of being ignored.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::Zeroizing;

mod providers;

pub use providers::{LdapConfig, OidcConfig, RoleMapping, SamlConfig};

/// A secret string: never printed by `Debug`, wiped from memory when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret value; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_like(d).map(Secret::new)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

/// Accepts a string, or a number or boolean that the environment parser produced from
/// something the user meant as a string (a numeric password, say).
fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// A list given either as a TOML array or as one comma-separated string (environment).
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(d)? {
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Many(v) => v,
    })
}

fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    comma_list(d)?
        .into_iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!("`{s}` is not a CIDR or an IP address"))
                })
        })
        .collect()
}

/// HTTP front door.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// A second, plain-HTTP listener for `/metrics` and `/health/detailed`, which are then
    /// not served on `bind`; `/health` and `/health/ready` are served on both.
    #[serde(default)]
    pub management_bind: Option<SocketAddr>,
    /// PEM certificate chain; with `tls_key_file`, serve HTTPS (TLS 1.3) directly.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key.
    pub tls_key_file: Option<PathBuf>,
    /// Proxies whose forwarded client address is believed.
    #[serde(deserialize_with = "cidr_list", serialize_with = "serialize_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// The one header those proxies put the client's address in.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// Origins allowed by CORS (exact match); empty means no cross-origin access.
    #[serde(deserialize_with = "comma_list")]
    pub cors_allowed_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 503 `request_timeout`.
    pub request_timeout_seconds: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace_seconds: u64,
    /// On shutdown, how long the node keeps serving with readiness failing before it
    /// closes the port (time for load balancers to notice).
    pub shutdown_delay_seconds: u64,
    /// A client must send a request's headers within this time; also the idle timeout of
    /// keep-alive connections.
    pub header_read_timeout_seconds: u64,
    /// Connections open at once at most.
    pub max_connections: usize,
}

fn serialize_cidrs<S: serde::Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// Primary store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; unset means SQLite in the data directory.
    pub url: Option<Secret>,
    /// Connections in the pool at most.
    pub max_connections: u32,
    /// Connections kept open.
    pub min_connections: u32,
    /// How long a request waits for a connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL: a statement (lock waits included) that runs longer is cancelled.
    pub statement_timeout_ms: u64,
}

/// Redis, for cluster-wide limits.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…` or `redis+sentinel://host:port,host:port/master-name`.
    pub url: Option<Secret>,
}

/// Secrets at rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 or hex of at least 32 bytes; generated into the data directory when unset.
    pub key: Option<Secret>,
    /// Keys being replaced by `key` (comma-separated): they still open what they sealed,
    /// and seal nothing, until `sark admin rotate-secrets-key` has sealed it again.
    #[serde(default, deserialize_with = "secret_list")]
    pub previous_keys: Vec<Secret>,
}

impl SecretsConfig {
    /// The configured keys as a ring, the sealing key generated into `data_dir` when none
    /// is configured; also says whether it was generated just now.
    pub fn key_ring(
        &self,
        data_dir: &Path,
    ) -> Result<(crate::secrets::KeyRing, bool), crate::secrets::SecretsError> {
        let previous: Vec<&str> = self.previous_keys.iter().map(Secret::expose).collect();
        crate::secrets::KeyRing::load(self.key.as_ref().map(Secret::expose), &previous, data_dir)
    }
}

/// A list of secrets, given like [`comma_list`].
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    Ok(comma_list(d)?.into_iter().map(Secret::new).collect())
}

/// Request rate limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per client IP, for requests without a credential.
    pub unauthenticated_per_minute: u32,
    /// Per principal.
    pub authenticated_per_minute: u32,
}

/// Authentication.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Failures within `lockout_seconds` that lock an account.
    pub lockout_threshold: u32,
    /// How long a lockout lasts (and the window failures are counted in).
    pub lockout_seconds: u64,
    /// Lifetime of access tokens.
    pub access_token_seconds: u64,
    /// URL prefixes allowed as OIDC `redirect_uri` and SAML `relay_state`.
    #[serde(deserialize_with = "comma_list")]
    pub allowed_redirects: Vec<String>,
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// How long a login's second-factor challenge stays open.
    pub mfa_challenge_seconds: u64,
    /// How often the node reloads revocations and signing keys from the store.
    pub sync_seconds: u64,
    /// How recent a login must be to enrol a second factor or create an API key without
    /// `current_password` in the request.
    pub reauth_seconds: u64,
    /// Password hashes and verifications run at once (each takes 19 MiB); unset: two
    /// per core, at most what a quarter of the memory limit holds.
    #[serde(default)]
    pub password_hash_concurrency: Option<usize>,
}

/// Policy engine.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// How often each node compares its loaded bundles with the store and repairs any
    /// missed version change (anti-entropy).
    pub sync_seconds: u64,
    /// Wall-clock limit of one policy evaluation; beyond it the evaluation denies.
    pub eval_timeout_ms: u64,
    /// Decisions kept per cacheable bundle version (0 turns the cache off).
    pub cache_entries: usize,
}

impl PolicyConfig {
    /// The engine settings these values describe.
    pub fn settings(&self) -> sark_actors::policy::PolicySettings {
        sark_actors::policy::PolicySettings {
            eval_timeout: Duration::from_millis(self.eval_timeout_ms),
            cache_entries: self.cache_entries,
        }
    }
}

/// Audit log and request log.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit events and API request rows older than this many days are removed (whole
    /// partitions on PostgreSQL); each chain keeps a checkpoint so it still verifies.
    pub retention_days: u64,
    /// While its chain moves, each node records a sealed statement of its chain head this
    /// often; the statements reach the SIEM with the events, out of the database's reach.
    pub head_statement_seconds: u64,
}

/// SIEM forwarding: at most one Splunk HEC and one Datadog sink.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiemConfig {
    /// Splunk HTTP Event Collector.
    pub splunk: Option<SplunkConfig>,
    /// Datadog logs intake.
    pub datadog: Option<DatadogConfig>,
    /// Events per delivery at most (the sinks' own limits apply too).
    pub batch_size: usize,
    /// One delivery request may take this long.
    pub timeout_seconds: u64,
    /// How long a forwarder's claim on a batch lasts before another node may retry it.
    pub lease_seconds: u64,
    /// Longest pause between retries of an event.
    pub backoff_max_seconds: u64,
    /// Consecutive failed attempts that open a sink's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one attempt through.
    pub breaker_open_seconds: u64,
}

impl Default for SiemConfig {
    fn default() -> Self {
        Self {
            splunk: None,
            datadog: None,
            batch_size: 500,
            timeout_seconds: 10,
            lease_seconds: 60,
            backoff_max_seconds: 60,
            breaker_failures: 5,
            breaker_open_seconds: 30,
        }
    }
}

/// A Splunk HTTP Event Collector.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkConfig {
    /// Base URL, e.g. `https://splunk.example.org:8088` (`/services/collector/event` is added).
    pub url: String,
    /// The HEC token.
    pub token: Secret,
    /// Target index; the token's default when unset.
    #[serde(default)]
    pub index: Option<String>,
    /// Event `source`.
    #[serde(default = "default_source")]
    pub source: String,
    /// Event `sourcetype`.
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// Verify the collector's TLS certificate (only ever turn off for a lab).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Extra CA certificate (PEM) to trust for the collector.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Datadog's logs intake (v2).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogConfig {
    /// Intake base URL for the site, e.g. `https://http-intake.logs.datadoghq.eu`
    /// (`/api/v2/logs` is added).
    pub url: String,
    /// The API key.
    pub api_key: Secret,
    /// `service` of the log entries.
    #[serde(default = "default_service")]
    pub service: String,
    /// Extra `ddtags` (comma-separated `key:value`).
    #[serde(default)]
    pub tags: Option<String>,
    /// Verify the intake's TLS certificate.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Extra CA certificate (PEM) to trust for the intake.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_source() -> String {
    "sark".into()
}

fn default_sourcetype() -> String {
    "sark:audit".into()
}

fn default_service() -> String {
    "sark".into()
}

/// Session lifetimes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// A session unused this long expires.
    pub idle_seconds: u64,
    /// A session expires this long after login, however it is used.
    pub absolute_seconds: u64,
    /// A session's actor with nothing to do stops after this long (the session lives on
    /// and its actor is activated again on next use).
    pub actor_idle_seconds: u64,
}

/// Cluster membership.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name; defaults to the host name.
    pub node_name: Option<String>,
    /// Cluster listen address; nodes connect from this address too. Unset: a node without
    /// seeds opens no cluster port, a node with seeds listens on [`DEFAULT_CLUSTER_BIND`].
    pub bind: Option<SocketAddr>,
    /// Peers to join: `host:port` or `dns:name:port`.
    #[serde(deserialize_with = "comma_list")]
    pub seeds: Vec<String>,
    /// Shared secret of the cluster handshake; required when seeds are set.
    pub cookie: Option<Secret>,
    /// How long acknowledged heartbeats keep a node's lease fresh.
    pub lease_seconds: u64,
    /// Interval between heartbeats.
    pub heartbeat_ms: u64,
    /// A member down for longer than this is removed from the voting membership (by a node
    /// that holds a valid lease), and no longer counts toward the majority.
    pub forget_after_seconds: u64,
    /// PEM certificate of this node, for mutual TLS between nodes (with the key and CA).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of that certificate.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA that every node certificate must chain to.
    pub tls_ca_file: Option<PathBuf>,
    /// The DNS name every node certificate carries (checked when a node dials another).
    #[serde(default = "default_cluster_server_name")]
    pub tls_server_name: String,
    /// The cluster protocol version this node speaks: this build's, or the one before it,
    /// to keep speaking the older protocol until every node of a rolling upgrade runs this
    /// build.
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u32,
}

/// The cluster port of a node with seeds and no `cluster.bind`.
pub const DEFAULT_CLUSTER_BIND: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7400,
));

impl ClusterConfig {
    /// Where the cluster listener binds: `cluster.bind`, else the default port when seeds
    /// name a cluster to join; `None` for a single node, which needs no cluster port.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.bind
            .or_else(|| (!self.seeds.is_empty()).then_some(DEFAULT_CLUSTER_BIND))
    }
}

fn default_protocol_version() -> u32 {
    sark_cluster::wire::PROTOCOL_VERSION
}

fn default_cluster_server_name() -> String {
    "sark-cluster".into()
}

/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `sark=debug,info`.
    pub level: String,
    /// `json` (one object per line) or `text`.
    pub format: LogFormat,
}

/// The header trusted proxies put the client's address in; the other one is never read
/// (a client can send it through the proxy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, …`.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1, …`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The whole configuration of a node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded database and local state live.
    pub data_dir: PathBuf,
    /// Password of the `admin` account created at first start.
    pub bootstrap_admin_password: Option<Secret>,
    /// HTTP front door.
    pub http: HttpConfig,
    /// Primary store.
    pub database: DatabaseConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Secrets at rest.
    pub secrets: SecretsConfig,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Sessions.
    pub session: SessionConfig,
    /// Policy engine.
    pub policy: PolicyConfig,
    /// Audit log and request log.
    pub audit: AuditConfig,
    /// SIEM forwarding.
    pub siem: SiemConfig,
    /// LDAP login; off when absent.
    #[serde(default)]
    pub ldap: Option<LdapConfig>,
    /// OpenID Connect login; off when absent.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// SAML 2.0 login; off when absent.
    #[serde(default)]
    pub saml: Option<SamlConfig>,
    /// Cluster.
    pub cluster: ClusterConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sark-data"),
            bootstrap_admin_password: None,
            http: HttpConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
                management_bind: None,
                tls_cert_file: None,
                tls_key_file: None,
                trusted_proxies: Vec::new(),
                client_ip_header: ClientIpHeader::default(),
                cors_allowed_origins: Vec::new(),
                body_limit_bytes: 1024 * 1024,
                request_timeout_seconds: 30,
                shutdown_grace_seconds: 30,
                shutdown_delay_seconds: 0,
                header_read_timeout_seconds: 10,
                max_connections: 4096,
            },
            database: DatabaseConfig {
                url: None,
                max_connections: 16,
                min_connections: 1,
                acquire_timeout_ms: 3_000,
                statement_timeout_ms: 15_000,
            },
            redis: RedisConfig::default(),
            secrets: SecretsConfig::default(),
            rate_limit: RateLimitConfig {
                unauthenticated_per_minute: 100,
                authenticated_per_minute: 1000,
            },
            auth: AuthConfig {
                lockout_threshold: 5,
                lockout_seconds: 900,
                access_token_seconds: 900,
                allowed_redirects: Vec::new(),
                issuer: "sark".into(),
                audience: "sark-api".into(),
                mfa_challenge_seconds: 300,
                reauth_seconds: 300,
                sync_seconds: 5,
                password_hash_concurrency: None,
            },
            session: SessionConfig {
                idle_seconds: 3600,
                absolute_seconds: 43_200,
                actor_idle_seconds: 300,
            },
            audit: AuditConfig {
                retention_days: 90,
                head_statement_seconds: 60,
            },
            siem: SiemConfig::default(),
            ldap: None,
            oidc: None,
            saml: None,
            policy: PolicyConfig {
                sync_seconds: 10,
                eval_timeout_ms: 100,
                cache_entries: 10_000,
            },
            cluster: ClusterConfig {
                node_name: None,
                bind: None,
                seeds: Vec::new(),
                cookie: None,
                lease_seconds: 10,
                heartbeat_ms: 1_000,
                forget_after_seconds: 300,
                tls_cert_file: None,
                tls_key_file: None,
                tls_ca_file: None,
                tls_server_name: default_cluster_server_name(),
                protocol_version: default_protocol_version(),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Json,
            },
        }
    }
}

/// Why configuration was refused; the message names the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn key(key: &str, problem: impl fmt::Display) -> Self {
        Self(format!("`{key}`: {problem}"))
    }

    /// An error about `key`.
    pub fn from_key(key: &str, problem: impl fmt::Display) -> Self {
        Self::key(key, problem)
    }
}

/// Where the primary store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres,
}

/// Secret keys that may be given as `<key>_file` instead.
const SECRET_KEYS: &[&str] = &[
    "bootstrap_admin_password",
    "database.url",
    "redis.url",
    "secrets.key",
    "secrets.previous_keys",
    "cluster.cookie",
    "siem.splunk.token",
    "siem.datadog.api_key",
    "ldap.bind_password",
    "oidc.client_secret",
];

impl Config {
    /// Loads the layers: defaults, `file` (if any), `SARK_*` from `env`, then `overrides`
    /// (command-line flags, as a partial TOML-shaped tree).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: serde_json::Value,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::key(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            refuse_public_secrets(file)?;
            figment = figment.merge(Toml::file_exact(file));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SARK_") && !is_service_link(k))
            .collect();
        let (plain, files) = split_secret_files(env)?;
        figment = figment.merge(EnvVars(plain));
        for (key, path) in files {
            figment = figment.merge(Serialized::default(&key, read_secret_file(&key, &path)?));
        }
        figment = figment.merge(Serialized::defaults(overrides));
        let config: Config = figment
            .extract_lossy()
            .map_err(|e| ConfigError(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: port 0 everywhere, generous rate limits.
    pub fn for_test(data_dir: &Path) -> Self {
        let mut config = Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        config.http.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.cluster.bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.cluster.heartbeat_ms = 100;
        config.rate_limit.unauthenticated_per_minute = 100_000;
        config.rate_limit.authenticated_per_minute = 100_000;
        config.log.format = LogFormat::Text;
        config
    }

    /// Where the primary store lives.
    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        let Some(url) = &self.database.url else {
            return Ok(DatabaseKind::Sqlite(self.data_dir.join("sark.db")));
        };
        let url = url.expose();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(ConfigError::key(
                    "database.url",
                    "sqlite:// needs a file path",
                ));
            }
            Ok(DatabaseKind::Sqlite(PathBuf::from(path)))
        } else {
            Err(ConfigError::key(
                "database.url",
                "must start with sqlite:// or postgres:// (the scheme is not shown here because the URL may hold a password)",
            ))
        }
    }

    /// Per-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.http.request_timeout_seconds)
    }

    /// Checks every section, then what spans sections; the first error names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_siem()?;
        self.validate_http()?;
        self.validate_database()?;
        self.validate_redis()?;
        self.validate_secrets()?;
        self.validate_positive()?;
        self.validate_auth()?;
        self.validate_cluster()?;
        if let Some(ldap) = &self.ldap {
            ldap.validate()?;
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        if let Some(saml) = &self.saml {
            saml.validate()?;
        }
        self.validate_log()
    }

    /// `siem.*`: sink URLs and CA files.
    fn validate_siem(&self) -> Result<(), ConfigError> {
        let sinks = [
            self.siem
                .splunk
                .as_ref()
                .map(|s| ("siem.splunk", &s.url, &s.ca_file)),
            self.siem
                .datadog
                .as_ref()
                .map(|d| ("siem.datadog", &d.url, &d.ca_file)),
        ];
        for (key, url, ca_file) in sinks.into_iter().flatten() {
            check_sink_url(&format!("{key}.url"), url)?;
            if let Some(ca) = ca_file
                && !ca.is_file()
            {
                return Err(ConfigError::key(
                    &format!("{key}.ca_file"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(())
    }

    /// `http.*`: TLS files in pairs, limits, CORS origins.
    fn validate_http(&self) -> Result<(), ConfigError> {
        match (&self.http.tls_cert_file, &self.http.tls_key_file) {
            (Some(_), None) => {
                return Err(ConfigError::key(
                    "http.tls_key_file",
                    "is required when http.tls_cert_file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "http.tls_cert_file",
                    "is required when http.tls_key_file is set",
                ));
            }
            (Some(cert), Some(key)) => {
                for (name, path) in [("http.tls_cert_file", cert), ("http.tls_key_file", key)] {
                    if !path.is_file() {
                        return Err(ConfigError::key(
                            name,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(management) = self.http.management_bind
            && management.port() != 0
            && management.port() == self.http.bind.port()
            && (management.ip() == self.http.bind.ip()
                || management.ip().is_unspecified()
                || self.http.bind.ip().is_unspecified())
        {
            return Err(ConfigError::key(
                "http.management_bind",
                format!("{management} is the port of http.bind; use another port"),
            ));
        }
        if self.http.body_limit_bytes == 0 {
            return Err(ConfigError::key(
                "http.body_limit_bytes",
                "must be greater than 0",
            ));
        }
        if self.http.request_timeout_seconds == 0 {
            return Err(ConfigError::key(
                "http.request_timeout_seconds",
                "must be greater than 0",
            ));
        }
        for origin in &self.http.cors_allowed_origins {
            if origin == "*" || !(origin.starts_with("https://") || origin.starts_with("http://")) {
                return Err(ConfigError::key(
                    "http.cors_allowed_origins",
                    format!(
                        "`{origin}` must be an exact http(s) origin (wildcards are not allowed)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `database.*`: the pool and the URL.
    fn validate_database(&self) -> Result<(), ConfigError> {
        if self.database.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be greater than 0",
            ));
        }
        if self.database.min_connections > self.database.max_connections {
            return Err(ConfigError::key(
                "database.min_connections",
                "must not exceed database.max_connections",
            ));
        }
        self.database_kind()?;
        Ok(())
    }

    /// `redis.url`.
    fn validate_redis(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis.url {
            let url = url.expose();
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+sentinel://"))
            {
                return Err(ConfigError::key(
                    "redis.url",
                    "must start with redis://, rediss:// or redis+sentinel://",
                ));
            }
        }
        Ok(())
    }

    /// `secrets.key` and `bootstrap_admin_password`.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.secrets.key {
            crate::secrets::SecretsKey::parse(key.expose())
                .map_err(|e| ConfigError::key("secrets.key", e))?;
        }
        if !self.secrets.previous_keys.is_empty() {
            let Some(key) = &self.secrets.key else {
                return Err(ConfigError::key(
                    "secrets.previous_keys",
                    "needs `secrets.key`, the key that replaces them",
                ));
            };
            for (i, previous) in self.secrets.previous_keys.iter().enumerate() {
                crate::secrets::SecretsKey::parse(previous.expose()).map_err(|e| {
                    ConfigError::key("secrets.previous_keys", format!("key {}: {e}", i + 1))
                })?;
                if previous.expose().trim() == key.expose().trim() {
                    return Err(ConfigError::key(
                        "secrets.previous_keys",
                        format!("key {} is `secrets.key` itself", i + 1),
                    ));
                }
            }
        }
        if let Some(password) = &self.bootstrap_admin_password {
            crate::idp::password::check_policy("admin", password.expose()).map_err(|v| {
                ConfigError::key(
                    "bootstrap_admin_password",
                    format!("{} ({})", v.message, v.rule),
                )
            })?;
        }
        Ok(())
    }

    /// Counts and durations that must not be zero, in every section.
    fn validate_positive(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "rate_limit.unauthenticated_per_minute",
                u64::from(self.rate_limit.unauthenticated_per_minute),
            ),
            (
                "rate_limit.authenticated_per_minute",
                u64::from(self.rate_limit.authenticated_per_minute),
            ),
            (
                "auth.lockout_threshold",
                u64::from(self.auth.lockout_threshold),
            ),
            ("auth.lockout_seconds", self.auth.lockout_seconds),
            ("auth.access_token_seconds", self.auth.access_token_seconds),
            ("session.idle_seconds", self.session.idle_seconds),
            ("session.absolute_seconds", self.session.absolute_seconds),
            (
                "http.header_read_timeout_seconds",
                self.http.header_read_timeout_seconds,
            ),
            (
                "database.statement_timeout_ms",
                self.database.statement_timeout_ms,
            ),
            ("http.max_connections", self.http.max_connections as u64),
            ("cluster.lease_seconds", self.cluster.lease_seconds),
            ("policy.sync_seconds", self.policy.sync_seconds),
            ("audit.retention_days", self.audit.retention_days),
            (
                "audit.head_statement_seconds",
                self.audit.head_statement_seconds,
            ),
            ("siem.batch_size", self.siem.batch_size as u64),
            ("siem.timeout_seconds", self.siem.timeout_seconds),
            ("siem.lease_seconds", self.siem.lease_seconds),
            ("siem.backoff_max_seconds", self.siem.backoff_max_seconds),
            (
                "siem.breaker_failures",
                u64::from(self.siem.breaker_failures),
            ),
            ("siem.breaker_open_seconds", self.siem.breaker_open_seconds),
            ("policy.eval_timeout_ms", self.policy.eval_timeout_ms),
            ("auth.sync_seconds", self.auth.sync_seconds),
            ("auth.reauth_seconds", self.auth.reauth_seconds),
            (
                "session.actor_idle_seconds",
                self.session.actor_idle_seconds,
            ),
            ("cluster.heartbeat_ms", self.cluster.heartbeat_ms),
            (
                "cluster.forget_after_seconds",
                self.cluster.forget_after_seconds,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        Ok(())
    }

    /// `auth.*`: MFA challenge lifetime, issuer and audience, redirects.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.mfa_challenge_seconds < 120 {
            return Err(ConfigError::key(
                "auth.mfa_challenge_seconds",
                "must be at least 120",
            ));
        }
        for (key, value) in [
            ("auth.issuer", &self.auth.issuer),
            ("auth.audience", &self.auth.audience),
        ] {
            if value.is_empty() || value.len() > 256 {
                return Err(ConfigError::key(key, "must be 1-256 characters"));
            }
        }
        if let Some(concurrency) = self.auth.password_hash_concurrency
            && !(1..=1024).contains(&concurrency)
        {
            return Err(ConfigError::key(
                "auth.password_hash_concurrency",
                "must be 1-1024",
            ));
        }
        for redirect in &self.auth.allowed_redirects {
            if !(redirect.starts_with("https://") || redirect.starts_with("http://")) {
                return Err(ConfigError::key(
                    "auth.allowed_redirects",
                    format!("`{redirect}` must be an absolute http(s) URL prefix"),
                ));
            }
        }
        Ok(())
    }

    /// `cluster.*`: heartbeat within the lease, forgetting after it, protocol version, node name, mutual TLS, cookie.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.cluster.heartbeat_ms >= self.cluster.lease_seconds.saturating_mul(1000) {
            return Err(ConfigError::key(
                "cluster.heartbeat_ms",
                "must be shorter than cluster.lease_seconds",
            ));
        }
        if self.cluster.forget_after_seconds <= self.cluster.lease_seconds {
            return Err(ConfigError::key(
                "cluster.forget_after_seconds",
                "must be longer than cluster.lease_seconds (a member is forgotten only once its lease has certainly expired)",
            ));
        }
        let newest = sark_cluster::wire::PROTOCOL_VERSION;
        if !(newest - 1..=newest).contains(&self.cluster.protocol_version) {
            return Err(ConfigError::key(
                "cluster.protocol_version",
                format!(
                    "must be {newest} (this build's) or {} (the one before)",
                    newest - 1
                ),
            ));
        }
        if let Some(name) = &self.cluster.node_name
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(ConfigError::key(
                "cluster.node_name",
                "must be 1-64 characters of letters, digits, `.`, `_` or `-`",
            ));
        }
        let cluster_tls = [
            ("cluster.tls_cert_file", &self.cluster.tls_cert_file),
            ("cluster.tls_key_file", &self.cluster.tls_key_file),
            ("cluster.tls_ca_file", &self.cluster.tls_ca_file),
        ];
        if cluster_tls.iter().any(|(_, file)| file.is_some()) {
            for (key, file) in cluster_tls {
                match file {
                    None => {
                        return Err(ConfigError::key(
                            key,
                            "is required: mutual TLS between nodes needs the certificate, the key and the CA",
                        ));
                    }
                    Some(path) if !path.is_file() => {
                        return Err(ConfigError::key(
                            key,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if rustls_pki_types::ServerName::try_from(self.cluster.tls_server_name.as_str())
                .is_err()
            {
                return Err(ConfigError::key(
                    "cluster.tls_server_name",
                    "must be a DNS name or an IP address",
                ));
            }
        }
        if !self.cluster.seeds.is_empty() && self.cluster.cookie.is_none() {
            return Err(ConfigError::key(
                "cluster.cookie",
                "is required when cluster.seeds is set",
            ));
        }
        Ok(())
    }

    /// `log.level`.
    fn validate_log(&self) -> Result<(), ConfigError> {
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::key(
                "log.level",
                format!("`{}` is not a valid filter", self.log.level),
            ));
        }
        Ok(())
    }
}

/// `SARK_*` variables as a configuration source, taken verbatim as strings, and named by
/// their variable in error messages.
struct EnvVars(Vec<(String, String)>);

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
            .interpolater(|_, keys| format!("SARK_{}", keys.join("__").to_uppercase()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, raw) in &self.0 {
            let key = name
                .trim_start_matches("SARK_")
                .to_lowercase()
                .replace("__", ".");
            // Kept as the raw string: figment's value grammar would turn `0012` into 12 and
            // strip quotes; `extract_lossy` converts strings only where a number is wanted.
            let value = figment::value::Value::from(raw.clone());
            let nested = figment::util::nest(&key, value);
            if let figment::value::Value::Dict(_, nested) = nested {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dict(into: &mut figment::value::Dict, from: figment::value::Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (
                Some(figment::value::Value::Dict(_, existing)),
                figment::value::Value::Dict(_, new),
            ) => merge_dict(existing, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Whether a variable is one of the service links Kubernetes injects for a Service whose
/// name starts with `sark` (`SARK_SERVICE_HOST`, `SARK_PORT_80_TCP_ADDR`, …). They are
/// not configuration, and refusing them as unknown keys would crash-loop every pod.
fn is_service_link(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("SARK_") else {
        return false;
    };
    if rest.contains("__") {
        return false;
    }
    let words: Vec<&str> = rest.split('_').collect();
    let is_port = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit());
    let is_proto = |w: &str| matches!(w, "TCP" | "UDP" | "SCTP");
    words
        .windows(2)
        .any(|w| w == ["SERVICE", "HOST"] || w == ["SERVICE", "PORT"])
        || words.last() == Some(&"PORT")
        || words
            .windows(3)
            .any(|w| w[0] == "PORT" && is_port(w[1]) && is_proto(w[2]))
}

/// A SIEM URL: absolute http(s), and https unless it is a loopback address (the token
/// travels with every request).
/// An https URL, or plain http to a loopback address only (secrets and identities travel
/// on it).
pub(crate) fn check_sink_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| ConfigError::key(key, format!("is not an absolute URL ({e})")))?;
    let loopback = is_loopback(&url);
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(ConfigError::key(
            key,
            "must be https (plain http only to a loopback address)",
        )),
        _ => Err(ConfigError::key(key, "must be an http(s) URL")),
    }
}

/// Whether `url` names the local machine.
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // Non-special schemes (ldap://) leave addresses as opaque host names.
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// Separates `…_FILE` variables of secret keys from the rest; returns the rest and the
/// `(dotted key, path)` pairs.
/// Environment variables as `(name, value)` pairs.
type EnvPairs = Vec<(String, String)>;

fn split_secret_files(vars: EnvPairs) -> Result<(EnvPairs, Vec<(String, PathBuf)>), ConfigError> {
    let mut plain = Vec::new();
    let mut files = Vec::new();
    for (name, value) in vars {
        let dotted = name
            .trim_start_matches("SARK_")
            .to_lowercase()
            .replace("__", ".");
        match dotted
            .strip_suffix("_file")
            .filter(|key| SECRET_KEYS.contains(key))
        {
            Some(key) => files.push((key.to_owned(), PathBuf::from(value))),
            None => plain.push((name, value)),
        }
    }
    for (key, _) in &files {
        let direct = format!("SARK_{}", key.to_uppercase().replace('.', "__"));
        if plain.iter().any(|(name, _)| *name == direct) {
            return Err(ConfigError::key(
                key,
                format!("set both {direct} and {direct}_FILE; choose one"),
            ));
        }
    }
    Ok((plain, files))
}

/// Refuses a configuration file that holds a secret and is readable by other users.
fn refuse_public_secrets(file: &Path) -> Result<(), ConfigError> {
    let mode = std::fs::metadata(file)
        .map_err(|e| ConfigError::key("--config", format!("{}: {e}", file.display())))?
        .permissions()
        .mode();
    if mode & 0o004 == 0 {
        return Ok(());
    }
    let contents = Figment::from(Toml::file_exact(file));
    for key in SECRET_KEYS {
        if contents.find_value(key).is_ok() {
            return Err(ConfigError::key(
                key,
                format!(
                    "is set in {}, which other users can read; chmod o-r it or use {key}_file",
                    file.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a secret file, refusing one that other users can read.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ConfigError::key(
            &format!("{key}_file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(ConfigError::key(
            &format!("{key}_file"),
            format!(
                "{} is readable by other users; chmod o-r it",
                path.display()
            ),
        ));
    }
    let value = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::key(
            &format!("{key}_file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(ConfigError::key(
            &format!("{key}_file"),
            format!("{} is empty", path.display()),
        ));
    }
    Ok(value)
}

/// Turns figment's error into one line naming the key and where the bad value came from.
fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| {
                    let profile = e.profile.clone().unwrap_or_default();
                    match &m.source {
                        Some(source) => format!(" (in {} {source})", m.name),
                        None => format!(" (in {} {})", m.name, m.interpolate(&profile, &e.path)),
                    }
                })
                .unwrap_or_default();
            format!("`{key}`: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let config = Config::load(None, env(&[]), json!({})).unwrap();
        assert_eq!(config.http.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./sark-data"));
        assert_eq!(
            config.database_kind().unwrap(),
            DatabaseKind::Sqlite(PathBuf::from("./sark-data/sark.db"))
        );
        assert_eq!(config.http.body_limit_bytes, 1024 * 1024);
        assert_eq!(config.rate_limit.unauthenticated_per_minute, 100);
        assert_eq!(config.auth.access_token_seconds, 900);
    }

    #[test]
    fn layers_apply_in_order_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sark.toml");
        std::fs::write(&file, "[http]\nbind = \"127.0.0.1:9000\"\nrequest_timeout_seconds = 7\n[rate_limit]\nauthenticated_per_minute = 5\n").unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("SARK_HTTP__BIND", "127.0.0.1:9001"),
                ("SARK_DATABASE__URL", "postgres://u:p@h/db"),
                ("OTHER", "x"),
            ]),
            json!({"http": {"bind": "127.0.0.1:9002"}}),
        )
        .unwrap();
        assert_eq!(config.http.bind.to_string(), "127.0.0.1:9002");
        assert_eq!(config.http.request_timeout_seconds, 7);
        assert_eq!(config.rate_limit.authenticated_per_minute, 5);
        assert_eq!(config.database_kind().unwrap(), DatabaseKind::Postgres);
    }

    #[test]
    fn comma_separated_lists_come_from_the_environment() {
        let config = Config::load(
            None,
            env(&[
                ("SARK_HTTP__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
                (
                    "SARK_AUTH__ALLOWED_REDIRECTS",
                    "https://app.example/cb,https://b.example/",
                ),
            ]),
            json!({}),
        )
        .unwrap();
        assert_eq!(config.http.trusted_proxies.len(), 2);
        assert_eq!(
            config.auth.allowed_redirects,
            vec!["https://app.example/cb", "https://b.example/"]
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("SARK_HTTP__BIND", "not-an-address")], "http.bind"),
            (&[("SARK_HTTP__BINDD", "127.0.0.1:1")], "bindd"),
            (
                &[("SARK_HTTP__MANAGEMENT_BIND", "127.0.0.1:8080")],
                "http.management_bind",
            ),
            (
                &[("SARK_HTTP__MANAGEMENT_BIND", "everywhere")],
                "http.management_bind",
            ),
            (
                &[("SARK_AUTH__PASSWORD_HASH_CONCURRENCY", "0")],
                "auth.password_hash_concurrency",
            ),
            (&[("SARK_DATABASE__URL", "mysql://x")], "database.url"),
            (
                &[("SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE", "0")],
                "rate_limit.authenticated_per_minute",
            ),
            (
                &[("SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE", "lots")],
                "rate_limit.authenticated_per_minute",
            ),
            (
                &[("SARK_HTTP__TLS_CERT_FILE", "/nonexistent.pem")],
                "http.tls_key_file",
            ),
            (
                &[("SARK_CLUSTER__SEEDS", "10.0.0.2:7400")],
                "cluster.cookie",
            ),
            (&[("SARK_SECRETS__KEY", "short")], "secrets.key"),
            (
                &[(
                    "SARK_SECRETS__PREVIOUS_KEYS",
                    "abababababababababababababababababababababababababababababababab",
                )],
                "secrets.previous_keys",
            ),
            (
                &[
                    (
                        "SARK_SECRETS__KEY",
                        "abababababababababababababababababababababababababababababababab",
                    ),
                    (
                        "SARK_SECRETS__PREVIOUS_KEYS",
                        "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd,short",
                    ),
                ],
                "secrets.previous_keys",
            ),
            (
                &[
                    (
                        "SARK_SECRETS__KEY",
                        "abababababababababababababababababababababababababababababababab",
                    ),
                    (
                        "SARK_SECRETS__PREVIOUS_KEYS",
                        "abababababababababababababababababababababababababababababababab",
                    ),
                ],
                "secrets.previous_keys",
            ),
            (
                &[("SARK_HTTP__TRUSTED_PROXIES", "not-a-cidr")],
                "http.trusted_proxies",
            ),
            (
                &[("SARK_BOOTSTRAP_ADMIN_PASSWORD", "short")],
                "bootstrap_admin_password",
            ),
        ];
        for (vars, key) in cases {
            let err = Config::load(None, env(vars), json!({}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{vars:?}: `{err}` does not name {key}");
        }
    }

    #[test]
    fn secrets_come_from_private_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "correct horse battery staple\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let vars = env(&[("SARK_BOOTSTRAP_ADMIN_PASSWORD_FILE", file.to_str().unwrap())]);
        let config = Config::load(None, vars.clone(), json!({})).unwrap();
        assert_eq!(
            config.bootstrap_admin_password.unwrap().expose(),
            "correct horse battery staple"
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(None, vars, json!({})).unwrap_err().to_string();
        assert!(
            err.contains("bootstrap_admin_password_file")
                && err.contains("readable by other users"),
            "{err}"
        );

        let both = env(&[
            ("SARK_BOOTSTRAP_ADMIN_PASSWORD_FILE", file.to_str().unwrap()),
            ("SARK_BOOTSTRAP_ADMIN_PASSWORD", "another long password"),
        ]);
        let err = Config::load(None, both, json!({})).unwrap_err().to_string();
        assert!(err.contains("choose one"), "{err}");
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        let links = [
            ("SARK_SERVICE_HOST", "10.0.0.1"),
            ("SARK_SERVICE_PORT", "80"),
            ("SARK_SERVICE_PORT_HTTP", "80"),
            ("SARK_PORT", "tcp://10.0.0.1:80"),
            ("SARK_PORT_80_TCP", "tcp://10.0.0.1:80"),
            ("SARK_PORT_80_TCP_ADDR", "10.0.0.1"),
            ("SARK_PORT_80_TCP_PORT", "80"),
            ("SARK_PORT_80_TCP_PROTO", "tcp"),
            ("SARK_HEADLESS_SERVICE_HOST", "10.0.0.2"),
            ("SARK_HEADLESS_PORT_7400_TCP_ADDR", "10.0.0.2"),
        ];
        let config = Config::load(None, env(&links), json!({})).unwrap();
        assert_eq!(config.http.bind.to_string(), "127.0.0.1:8080");
        assert!(!is_service_link("SARK_HTTP__BIND"));
        assert!(!is_service_link("SARK_DATA_DIR"));
        assert!(!is_service_link("SARK_BOOTSTRAP_ADMIN_PASSWORD"));
        // A typo in a real key still fails.
        assert!(Config::load(None, env(&[("SARK_DATA_DIRR", "/x")]), json!({})).is_err());
    }

    #[test]
    fn environment_values_are_taken_verbatim() {
        let config = Config::load(
            None,
            env(&[
                ("SARK_BOOTSTRAP_ADMIN_PASSWORD", "0001234567890123"),
                ("SARK_CLUSTER__NODE_NAME", "42"),
                ("SARK_SECRETS__KEY", "\"quoted\"-is-not-a-key"),
            ]),
            json!({}),
        );
        let err = config.unwrap_err().to_string();
        assert!(err.contains("secrets.key"), "{err}");
        let config = Config::load(
            None,
            env(&[
                ("SARK_BOOTSTRAP_ADMIN_PASSWORD", "0001234567890123"),
                ("SARK_CLUSTER__NODE_NAME", "42"),
            ]),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            config.bootstrap_admin_password.unwrap().expose(),
            "0001234567890123"
        );
        assert_eq!(config.cluster.node_name.as_deref(), Some("42"));
    }

    #[test]
    fn a_readable_config_file_may_not_hold_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sark.toml");
        std::fs::write(&file, "[database]\nurl = \"postgres://u:pw@h/db\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(Some(&file), env(&[]), json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database.url") && err.contains("other users"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Config::load(Some(&file), env(&[]), json!({})).is_ok());
        std::fs::write(&file, "[http]\nbind = \"127.0.0.1:9\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Config::load(Some(&file), env(&[]), json!({})).is_ok(),
            "no secret, no restriction"
        );
    }

    #[test]
    fn a_numeric_secret_stays_a_string() {
        let config = Config::load(
            None,
            env(&[("SARK_BOOTSTRAP_ADMIN_PASSWORD", "123456789012345")]),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            config.bootstrap_admin_password.unwrap().expose(),
            "123456789012345"
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = Config::load(
            None,
            env(&[("SARK_BOOTSTRAP_ADMIN_PASSWORD", "hunter2hunter2hunter2")]),
            json!({}),
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
