//! Storage ports: the traits through which actors and the HTTP front door reach durable state.
//!
//! The `sark` crate implements every port once for SQLite and once for PostgreSQL; the same
//! contract tests run against both. Nothing here names a database type, so actors stay
//! independent of the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a storage call failed, in terms callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the connection; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (the named thing already exists).
    #[error("{0} already exists")]
    Conflict(String),
    /// A conditional write lost a race (the row changed underneath the caller).
    #[error("concurrent update of {0}")]
    Contended(String),
    /// The database refused a value (e.g. a NUL character in text, on PostgreSQL).
    #[error("invalid value: {0}")]
    Invalid(String),
    /// A stored row could not be decoded into its record.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Internal(String),
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user's role; the built-in authorization policy grants rights by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May do everything.
    Admin,
    /// May read and write servers and read policies.
    Operator,
    /// May read servers.
    Viewer,
}

impl Role {
    /// The role's name as stored and as shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role `{other}` (expected admin, operator or viewer)"
            )),
        }
    }
}

/// A stored account, local or provisioned from an external identity provider. Its
/// `Debug` leaves the password hash out.
#[derive(Clone, PartialEq)]
pub struct User {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique login name.
    pub username: String,
    /// Contact address, if known.
    pub email: Option<String>,
    /// Role used by the authorization policy.
    pub role: Role,
    /// Team names, passed to policies.
    pub teams: Vec<String>,
    /// PHC-format argon2id hash; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Disabled accounts cannot log in and their credentials are revoked.
    pub is_active: bool,
    /// Whether a second factor is required at login.
    pub mfa_enabled: bool,
    /// Identity provider that owns the account (`local`, or an external provider id).
    pub provider: String,
    /// Subject at the external provider; `None` for local accounts.
    pub subject: Option<String>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// A new, active local account without a second factor, created `now`.
    pub fn local(
        username: String,
        role: Role,
        password_hash: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            username,
            email: None,
            role,
            teams: Vec::new(),
            password_hash,
            is_active: true,
            mfa_enabled: false,
            provider: "local".into(),
            subject: None,
            created_at: now,
            updated_at: now,
        }
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("is_active", &self.is_active)
            .field("mfa_enabled", &self.mfa_enabled)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// Changes to apply to a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    /// New email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// New role.
    pub role: Option<Role>,
    /// New team list (replaces the old one).
    pub teams: Option<Vec<String>>,
    /// Enable or disable the account.
    pub is_active: Option<bool>,
    /// New password hash.
    pub password_hash: Option<String>,
    /// Turn MFA on or off.
    pub mfa_enabled: Option<bool>,
}

/// What a credential change revokes with it.
#[derive(Clone, Copy, Debug)]
pub struct CredentialRevocation<'a> {
    /// Recorded as each credential's revocation reason.
    pub reason: &'a str,
    /// A session that stays (the one that changed its own password).
    pub keep: Option<Uuid>,
    /// Whether the user's API keys go too.
    pub api_keys: bool,
}

/// A user after a credential change, and the credentials it revoked.
#[derive(Clone, Debug, PartialEq)]
pub struct RevokingUpdate {
    /// The user as it is now.
    pub user: User,
    /// Sessions revoked with the change.
    pub revoked_sessions: Vec<Uuid>,
    /// API keys revoked with the change.
    pub revoked_api_keys: Vec<Uuid>,
}

/// A deleted user and the credentials its deletion revoked.
#[derive(Clone, Debug, PartialEq)]
pub struct DeletedUser {
    /// The user as it was.
    pub user: User,
    /// Sessions revoked by the deletion.
    pub revoked_sessions: Vec<Uuid>,
    /// API keys revoked by the deletion.
    pub revoked_api_keys: Vec<Uuid>,
}

/// One page of a keyset-paginated listing, ordered by a unique key.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// Return rows strictly after this key.
    pub after: Option<String>,
    /// Maximum rows to return.
    pub limit: u32,
}

/// Accounts.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user; `Conflict` if the username is taken.
    async fn create_user(&self, user: &User) -> StoreResult<()>;
    /// Inserts a user unless the username is taken; returns whether it was inserted.
    /// Safe when several nodes race to create the same account.
    async fn create_user_if_absent(&self, user: &User) -> StoreResult<bool>;
    /// Looks a user up by username.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>>;
    /// Lists users ordered by username.
    async fn list_users(&self, page: &PageRequest) -> StoreResult<Vec<User>>;
    /// Applies a patch; returns the updated user, or `None` if there is no such user.
    async fn update_user(
        &self,
        username: &str,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;
    /// Applies a patch and, in the same transaction, revokes the user's live sessions
    /// (except `revoke.keep`) and, with `revoke.api_keys`, their API keys: a credential
    /// change and the revocations it causes are stored together or not at all. `None` if
    /// there is no such user.
    async fn update_user_revoking(
        &self,
        username: &str,
        patch: &UserPatch,
        revoke: &CredentialRevocation<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<RevokingUpdate>>;
    /// Deletes a user and, in the same transaction, revokes their live sessions and API keys
    /// (the rows stay until they expire, so nodes keep refusing them). `None` if there is
    /// no such user.
    async fn delete_user(
        &self,
        username: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<DeletedUser>>;
}

/// A login session; the database row is the source of truth for its session actor.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// Session id (carried as `sid` in access tokens).
    pub id: Uuid,
    /// Owner of the session.
    pub user_id: Uuid,
    /// Hash of the current refresh token; rotated on every use.
    pub refresh_hash: String,
    /// How the user authenticated (`password`, `ldap`, `oidc`, `saml`).
    pub auth_method: String,
    /// Client address at login.
    pub ip: Option<String>,
    /// Whether the second factor was verified for this session.
    pub mfa_verified: bool,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// Last time the session was used.
    pub last_seen_at: DateTime<Utc>,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Node that owns the session's actor.
    pub node_id: String,
}

impl SessionRecord {
    /// Whether the session can be used at `now`: not revoked, before its absolute expiry,
    /// and used within the last `idle` (both limits are exclusive: at the instant a limit
    /// is reached, the session is over).
    pub fn live(&self, idle: chrono::Duration, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now && self.last_seen_at + idle > now
    }
}

/// Outcome of presenting a refresh token for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current and has been replaced.
    Rotated,
    /// The token was this session's before and has been rotated away: a reuse.
    Reused,
    /// No live session issued this token.
    NotFound,
}

/// Sessions and their refresh-token families.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Inserts a new session if its user exists and is active; returns whether it did.
    /// The user's row is locked meanwhile, so a session can never slip in beside a
    /// concurrent deletion or disabling of its user.
    async fn create_session(&self, session: &SessionRecord) -> StoreResult<bool>;
    /// Looks a session up by id (revoked and expired ones included).
    async fn session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>>;
    /// Replaces the refresh hash only if `old_hash` is still current, by a conditional
    /// write, so two nodes can never both accept the same refresh token.
    async fn rotate_refresh(
        &self,
        id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<RotateOutcome>;
    /// Records that the session was used.
    async fn touch_session(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()>;
    /// Revokes one session; returns whether it was live before.
    async fn revoke_session(&self, id: Uuid, reason: &str, now: DateTime<Utc>)
    -> StoreResult<bool>;
    /// Revokes every live session of a user except `keep`; returns the revoked ids.
    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>>;
    /// Live sessions of a user.
    async fn user_sessions(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionRecord>>;
    /// Ids of revoked sessions that would otherwise still be valid at `now`.
    async fn revoked_session_ids(&self, now: DateTime<Utc>) -> StoreResult<Vec<Uuid>>;
    /// Number of live sessions.
    async fn count_active_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

/// A server in the inventory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Absolute http(s) URL.
    pub endpoint: String,
    /// Free text.
    pub description: Option<String>,
    /// Key/value tags.
    pub tags: BTreeMap<String, String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Who registered it.
    pub created_by: String,
}

/// Filters for listing servers.
#[derive(Clone, Debug, Default)]
pub struct ServerQuery {
    /// Every tag here must match.
    pub tags: Vec<(String, String)>,
    /// Name must start with this.
    pub name_prefix: Option<String>,
    /// Keyset position: names strictly after this one, and the page size.
    pub page: PageRequest,
}

/// Changes to a server; `None` leaves a field unchanged.
#[derive(Clone, Debug, Default)]
pub struct ServerPatch {
    /// New endpoint.
    pub endpoint: Option<String>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New tags (replace the old set).
    pub tags: Option<BTreeMap<String, String>>,
}

/// The server inventory.
#[async_trait]
pub trait ServerStore: Send + Sync {
    /// Inserts a server; `Conflict` if the name is taken.
    async fn create_server(&self, server: &Server) -> StoreResult<()>;
    /// Looks a server up by name.
    async fn server(&self, name: &str) -> StoreResult<Option<Server>>;
    /// Lists servers ordered by name.
    async fn list_servers(&self, query: &ServerQuery) -> StoreResult<Vec<Server>>;
    /// Applies a patch; `None` if there is no such server.
    async fn update_server(
        &self,
        name: &str,
        patch: &ServerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Server>>;
    /// Deletes a server; returns whether one was deleted.
    async fn delete_server(&self, name: &str) -> StoreResult<bool>;
    /// Number of servers.
    async fn count_servers(&self) -> StoreResult<u64>;
}

/// One stored version of a policy bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyVersion {
    /// Bundle name (`authorization`, `rate_limiting`, …).
    pub bundle: String,
    /// Version number, 1-based, increasing per bundle.
    pub version: i64,
    /// Rego source.
    pub source: String,
    /// Hex SHA-256 of the source.
    pub sha256: String,
    /// Free text.
    pub description: Option<String>,
    /// When this version was stored.
    pub created_at: DateTime<Utc>,
    /// Who stored it.
    pub created_by: String,
}

/// A policy version to store.
#[derive(Clone, Debug)]
pub struct NewPolicyVersion<'a> {
    /// Bundle name.
    pub bundle: &'a str,
    /// Rego source.
    pub source: &'a str,
    /// Hex SHA-256 of the source.
    pub sha256: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// Who stores it.
    pub created_by: &'a str,
    /// When.
    pub now: DateTime<Utc>,
}

/// Policy bundles and their version history.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Stores a new version and makes it active, atomically bumping the bundle's version.
    async fn add_policy_version(&self, new: &NewPolicyVersion<'_>) -> StoreResult<PolicyVersion>;
    /// Stores version 1 of a bundle only if the bundle does not exist yet; returns whether it
    /// did. Safe when several nodes seed the built-in bundles at once.
    async fn seed_policy(&self, new: &NewPolicyVersion<'_>) -> StoreResult<bool>;
    /// The active version of a bundle.
    async fn active_policy(&self, bundle: &str) -> StoreResult<Option<PolicyVersion>>;
    /// The active version of every bundle.
    async fn active_policies(&self) -> StoreResult<Vec<PolicyVersion>>;
    /// One stored version.
    async fn policy_version(
        &self,
        bundle: &str,
        version: i64,
    ) -> StoreResult<Option<PolicyVersion>>;
    /// Every stored version of a bundle, newest first.
    async fn policy_versions(&self, bundle: &str) -> StoreResult<Vec<PolicyVersion>>;
}

/// An audit event before it is placed on a chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable id; also the SIEM event id.
    pub id: Uuid,
    /// When it happened (microsecond precision).
    pub timestamp: DateTime<Utc>,
    /// What happened (`login_succeeded`, `server_registered`, …).
    pub event_type: String,
    /// Who did it.
    pub actor: Option<String>,
    /// From where.
    pub ip: Option<String>,
    /// To what.
    pub resource: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Event-specific fields.
    pub details: serde_json::Value,
    /// Node that recorded it.
    pub node_id: String,
}

impl AuditEvent {
    /// Names who did it.
    #[must_use]
    pub fn by(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Names where it came from, when known.
    #[must_use]
    pub fn from_ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.ip = ip.map(|ip| ip.to_string());
        self
    }

    /// Names what it was done to (`user:alice`, `server:web-1`, …).
    #[must_use]
    pub fn on(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Sets the event-specific fields.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// An audit event placed on its writer's hash chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainedEvent {
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The writer's chain name.
    pub chain: String,
    /// Position on the chain, from 1.
    pub seq: i64,
    /// Hash of the previous event on the chain (all zeros for the first).
    pub prev_hash: String,
    /// HMAC over this event's canonical encoding and `prev_hash`.
    pub hash: String,
}

/// Filters for listing audit events, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Not before.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Keyset position: events strictly older than this (timestamp, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: u32,
}

/// A recorded position on an audit chain (its head, or its retention checkpoint), with the
/// seal that authenticates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedPosition {
    /// Sequence number of the event at the position.
    pub seq: i64,
    /// That event's chain hash.
    pub hash: String,
    /// When the position was recorded (microsecond precision).
    pub at: DateTime<Utc>,
    /// The seal over chain, kind, `seq`, `hash` and `at`; `None` on rows written before
    /// positions were sealed.
    pub mac: Option<String>,
}

/// Which recorded position of a chain a seal covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionKind {
    /// The chain's last event.
    Head,
    /// The last event that retention removed.
    Checkpoint,
}

/// Computes the seal of a recorded chain position, so that the store can record one
/// without holding the audit key itself.
pub trait PositionSeal: Send + Sync {
    /// The seal of `chain`'s `kind` position at `seq` with `hash`, recorded at `at`.
    fn seal(
        &self,
        kind: PositionKind,
        chain: &str,
        seq: i64,
        hash: &str,
        at: DateTime<Utc>,
    ) -> String;
}

/// The tamper-evident audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The generation of the audit chains: 0 until the store is restored from a backup,
    /// then one more on each restore ([`RecoveryStore::next_audit_generation`]).
    async fn audit_generation(&self) -> StoreResult<u32>;
    /// Appends events that extend `chain` from the head `(prev_seq, prev_hash)`, records
    /// the last one as the chain's head sealed with `head_mac`, and queues each event for
    /// every sink in `sinks`, in one transaction. Fails with `Contended` if the chain's
    /// head moved, so two writers can never fork one chain.
    async fn append_audit(
        &self,
        chain: &str,
        prev_seq: i64,
        events: &[ChainedEvent],
        head_mac: &str,
        sinks: &[String],
    ) -> StoreResult<()>;
    /// The recorded head of a chain, or `None` for a new chain.
    async fn chain_head(&self, chain: &str) -> StoreResult<Option<SealedPosition>>;
    /// Lists events.
    async fn list_audit(&self, query: &AuditQuery) -> StoreResult<Vec<ChainedEvent>>;
    /// Every chain that has a head, a checkpoint or an event.
    async fn audit_chains(&self) -> StoreResult<Vec<String>>;
    /// Where verification of a chain starts: the last event retention removed, or `None`
    /// when nothing was removed.
    async fn audit_checkpoint(&self, chain: &str) -> StoreResult<Option<SealedPosition>>;
    /// Events of one chain with `seq > after_seq`, in order.
    async fn chain_segment(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<ChainedEvent>>;
}

/// An event waiting in the SIEM outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    /// Outbox row id.
    pub id: i64,
    /// Sink it is queued for.
    pub sink: String,
    /// The event.
    pub event: ChainedEvent,
    /// Delivery attempts so far.
    pub attempts: i32,
}

/// Queue depth of one sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutboxStats {
    /// Events not yet delivered.
    pub queued: u64,
    /// Timestamp of the oldest undelivered event.
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

/// The durable outbox that SIEM forwarders drain.
#[async_trait]
pub trait SiemOutbox: Send + Sync {
    /// Leases up to `limit` due, undelivered entries of `sink` to `owner` until `lease_until`.
    /// An entry leased by another owner whose lease has not expired is never returned.
    async fn claim_outbox(
        &self,
        sink: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEntry>>;
    /// Marks entries delivered (only those still leased by `owner`) and clears their error.
    async fn complete_outbox(
        &self,
        owner: &str,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Marks `delivered` as [`complete_outbox`](Self::complete_outbox) does, then claims
    /// as [`claim_outbox`](Self::claim_outbox) does, in one transaction: a forwarder
    /// settles one batch and takes the next with one round trip and one commit.
    async fn complete_and_claim_outbox(
        &self,
        owner: &str,
        delivered: &[i64],
        sink: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEntry>>;
    /// Returns entries to the queue after a failed attempt, due again at `retry_at`.
    async fn release_outbox(
        &self,
        owner: &str,
        ids: &[i64],
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Gives up every lease `owner` still holds, without counting an attempt, so other
    /// nodes take the rows at once (a stopping node hands its batches over); returns how
    /// many rows were handed over.
    async fn hand_over_outbox(&self, owner: &str) -> StoreResult<u64>;
    /// Sets aside an entry the sink refuses on its own: it is no longer sent, and it keeps
    /// `error` as the reason (the audit row itself is untouched).
    async fn set_aside_outbox(
        &self,
        owner: &str,
        id: i64,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Queue depth of a sink.
    async fn outbox_stats(&self, sink: &str) -> StoreResult<OutboxStats>;
    /// Deletes delivered entries delivered before `delivered_before` and set-aside entries
    /// set aside before `set_aside_before`; returns how many went.
    async fn prune_outbox(
        &self,
        delivered_before: DateTime<Utc>,
        set_aside_before: DateTime<Utc>,
    ) -> StoreResult<u64>;
}

/// Small node-wide settings shared through the store (key fingerprints, signing keys).
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Reads a value.
    async fn meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// Stores `value` unless the key exists; returns the value now stored. Safe under races.
    async fn put_meta_if_absent(&self, key: &str, value: &str) -> StoreResult<String>;
    /// Stores `value` under `key`, replacing what was there.
    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()>;
}

/// A member of the cluster's voting membership, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMember {
    /// The member's node id.
    pub node_id: String,
    /// Its cluster address.
    pub addr: String,
    /// When it last recorded itself.
    pub last_seen_at: DateTime<Utc>,
}

/// The voting membership of the cluster: the members that count toward a majority.
#[async_trait]
pub trait MembershipStore: Send + Sync {
    /// Records that `node_id`, at `addr`, runs at `now`: adds it to the membership if it is
    /// not there (again, after it was forgotten).
    async fn record_member(&self, node_id: &str, addr: &str, now: DateTime<Utc>)
    -> StoreResult<()>;
    /// The members, by node id.
    async fn cluster_members(&self) -> StoreResult<Vec<StoredMember>>;
    /// Removes `node_id` when it was last seen before `seen_before` (`None`: whenever it
    /// was); `true` when it was removed.
    async fn remove_member(
        &self,
        node_id: &str,
        seen_before: Option<DateTime<Utc>>,
    ) -> StoreResult<bool>;
}

/// A JWT signing key as stored; the private key arrives encrypted by the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct SigningKeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// JWS algorithm (`EdDSA`).
    pub algorithm: String,
    /// The private key, encrypted with a key derived from the secrets key.
    pub private_key: String,
    /// The public key (base64url).
    pub public_key: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a newer key replaced it; `None` for the active key.
    pub retired_at: Option<DateTime<Utc>>,
}

/// The keys that sign and verify access tokens.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// Every stored key, active first, then retired ones newest first.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Makes `key` the active key unless one is active already; returns the active key.
    /// Safe when several nodes create the first key at once.
    async fn insert_first_signing_key(
        &self,
        key: &SigningKeyRecord,
    ) -> StoreResult<SigningKeyRecord>;
    /// Retires the active key at `now` and makes `key` active, in one transaction.
    async fn rotate_signing_key(
        &self,
        key: &SigningKeyRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Deletes keys retired before `cutoff` (their tokens have all expired).
    async fn prune_signing_keys(&self, cutoff: DateTime<Utc>) -> StoreResult<u64>;
}

/// An API key as stored (only a hash of its secret).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKeyRecord {
    /// Key id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Name given by its owner.
    pub name: String,
    /// Public prefix by which the key is found.
    pub prefix: String,
    /// Hex SHA-256 of the secret part.
    pub key_hash: String,
    /// Scopes (`read:servers`, …, or `admin`).
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful use (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
}

/// API keys.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Inserts a key for a user that exists and is active; returns whether it did.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> StoreResult<bool>;
    /// Looks a key up by its public prefix.
    async fn api_key_by_prefix(&self, prefix: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// Looks a key up by id.
    async fn api_key(&self, id: Uuid) -> StoreResult<Option<ApiKeyRecord>>;
    /// Keys of one user, or of everyone with `None`, newest first.
    async fn api_keys(&self, user_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes one key; returns whether it was live before.
    async fn revoke_api_key(&self, id: Uuid, reason: &str, now: DateTime<Utc>)
    -> StoreResult<bool>;
    /// Revokes every live key of a user; returns their ids.
    async fn revoke_user_api_keys(
        &self,
        user_id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>>;
    /// Records a use, unless one was recorded within the last minute.
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()>;
    /// Ids of revoked keys that would otherwise still be valid at `now`.
    async fn revoked_api_key_ids(&self, now: DateTime<Utc>) -> StoreResult<Vec<Uuid>>;
}

/// Failed logins of one submitted username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockState {
    /// Failures in the current window.
    pub failures: u32,
    /// Locked until then, if locked.
    pub locked_until: Option<DateTime<Utc>>,
}

/// The rule a failure is counted under.
#[derive(Clone, Copy, Debug)]
pub struct LockoutRule {
    /// Failures within `window` that lock.
    pub threshold: u32,
    /// Counting window (a new window starts at the first failure after it ends).
    pub window: chrono::Duration,
    /// How long a lock lasts.
    pub lock_for: chrono::Duration,
}

/// Lockout counters, kept by submitted username so they survive restarts and are shared
/// by every node.
#[async_trait]
pub trait LockoutStore: Send + Sync {
    /// Counts a failure atomically and returns the state after it.
    async fn record_failure(
        &self,
        username: &str,
        rule: LockoutRule,
        now: DateTime<Utc>,
    ) -> StoreResult<LockState>;
    /// The counter of a username, if any.
    async fn lock_state(&self, username: &str) -> StoreResult<Option<LockState>>;
    /// Forgets the counter (after a successful login, or an unlock); returns whether the
    /// username was locked at `now`.
    async fn clear_failures(&self, username: &str, now: DateTime<Utc>) -> StoreResult<bool>;
}

/// A user's TOTP enrolment.
#[derive(Clone, Debug, PartialEq)]
pub struct TotpRecord {
    /// Owner.
    pub user_id: Uuid,
    /// The secret, encrypted with a key derived from the secrets key.
    pub secret: String,
    /// When enrolment started.
    pub created_at: DateTime<Utc>,
    /// When it was confirmed; `None` while pending.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Highest time step accepted so far.
    pub last_step: Option<i64>,
}

/// A pending second factor.
#[derive(Clone, Debug, PartialEq)]
pub struct ChallengeRecord {
    /// Challenge id.
    pub id: Uuid,
    /// The user whose first factor succeeded.
    pub user_id: Uuid,
    /// The username that was submitted (lockout counts against it).
    pub username: String,
    /// How the first factor was proven.
    pub auth_method: String,
    /// Client address.
    pub ip: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// TOTP secrets, recovery codes and MFA challenges.
#[async_trait]
pub trait MfaStore: Send + Sync {
    /// Stores a pending TOTP secret, replacing a pending one; `Conflict` when the user has
    /// a confirmed one.
    async fn put_pending_totp(
        &self,
        user_id: Uuid,
        secret: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The user's TOTP enrolment.
    async fn totp(&self, user_id: Uuid) -> StoreResult<Option<TotpRecord>>;
    /// Confirms the pending secret, replaces the recovery codes with `recovery_hashes` and
    /// turns MFA on, in one transaction; returns whether a pending secret was confirmed.
    async fn confirm_totp(
        &self,
        user_id: Uuid,
        recovery_hashes: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Accepts time step `step` only if it is later than every step accepted before, so a
    /// code is accepted once per user, across challenges and nodes.
    async fn accept_totp_step(&self, user_id: Uuid, step: i64) -> StoreResult<bool>;
    /// Consumes an unused recovery code; returns whether it was unused.
    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Unused recovery codes left.
    async fn recovery_codes_left(&self, user_id: Uuid) -> StoreResult<u64>;
    /// Removes TOTP, recovery codes and challenges and turns MFA off; returns whether MFA
    /// was set up.
    async fn reset_mfa(&self, user_id: Uuid) -> StoreResult<bool>;
    /// Stores a challenge.
    async fn create_challenge(&self, challenge: &ChallengeRecord) -> StoreResult<()>;
    /// A live (unconsumed, unexpired) challenge.
    async fn challenge(&self, id: Uuid, now: DateTime<Utc>)
    -> StoreResult<Option<ChallengeRecord>>;
    /// Consumes a live challenge; returns whether it was live.
    async fn consume_challenge(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool>;
}

/// A login sent to an external provider that has not come back yet.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthRequestRecord {
    /// SHA-256 (hex) of the value the provider echoes back (the OIDC `state`, the SAML
    /// AuthnRequest ID).
    pub id: String,
    /// Provider id (`oidc`, `saml`).
    pub provider: String,
    /// SHA-256 (hex) of the browser-binding cookie set when the login started; empty for
    /// SAML, whose response arrives as a cross-site POST that carries no such cookie.
    pub browser_hash: String,
    /// Provider data (PKCE verifier, nonce), sealed with a key derived from the secrets key.
    pub data: String,
    /// The allow-listed URL to hand a login code to, if the login asked for one.
    pub redirect_uri: Option<String>,
    /// When the login started.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// A one-time login code: what an external login that was delivered to a redirect left
/// for `POST /api/v1/auth/exchange`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoginCodeRecord {
    /// SHA-256 (hex) of the code.
    pub code_hash: String,
    /// The user who logged in.
    pub user_id: Uuid,
    /// How (`oidc`, `saml`).
    pub auth_method: String,
    /// Client address at login.
    pub ip: Option<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// External identities and the state of logins at external providers.
#[async_trait]
pub trait FederationStore: Send + Sync {
    /// The account provisioned for `subject` at `provider`.
    async fn user_by_subject(&self, provider: &str, subject: &str) -> StoreResult<Option<User>>;
    /// Stores a pending external login.
    async fn put_auth_request(&self, request: &AuthRequestRecord) -> StoreResult<()>;
    /// Removes and returns a pending login that has not expired at `now`: it is usable once,
    /// on any node.
    async fn take_auth_request(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuthRequestRecord>>;
    /// Stores a login code.
    async fn put_login_code(&self, code: &LoginCodeRecord) -> StoreResult<()>;
    /// Removes and returns a login code that has not expired at `now`.
    async fn take_login_code(
        &self,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<LoginCodeRecord>>;
    /// Records the use of SAML assertion `id` (kept until `expires_at`); returns whether it
    /// was its first use.
    async fn use_assertion_id(&self, id: &str, expires_at: DateTime<Utc>) -> StoreResult<bool>;
}

/// Removal of rows nothing needs any more.
#[async_trait]
pub trait HousekeepingStore: Send + Sync {
    /// Deletes lockout counters whose window ended before `failures_before` and that are
    /// not locked at `now`, challenges expired an hour ago, expired external-login state and
    /// login codes, and sessions (with their used refresh tokens) that expired before
    /// `sessions_before`. Returns the rows removed.
    async fn prune_expired(
        &self,
        now: DateTime<Utc>,
        failures_before: DateTime<Utc>,
        sessions_before: DateTime<Utc>,
    ) -> StoreResult<u64>;
}

/// One API request, as kept in the request log.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiRequestRow {
    /// When it was answered.
    pub timestamp: DateTime<Utc>,
    /// HTTP method (bounded: unknown methods are `OTHER`).
    pub method: String,
    /// Route template, never the raw path.
    pub route: String,
    /// HTTP status.
    pub status: u16,
    /// Handling time.
    pub duration_us: i64,
    /// Who made it (a username), if authenticated.
    pub principal: Option<String>,
    /// The node that answered.
    pub node_id: String,
}

/// The API request log.
#[async_trait]
pub trait RequestLogStore: Send + Sync {
    /// Appends a batch of rows.
    async fn record_requests(&self, rows: &[ApiRequestRow]) -> StoreResult<()>;
    /// Rows of the last `since`, for tests and diagnostics: how many there are.
    async fn count_requests(&self, since: DateTime<Utc>) -> StoreResult<u64>;
}

/// What one retention run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit events removed (their chains keep a checkpoint).
    pub audit_events: u64,
    /// API request rows removed.
    pub api_requests: u64,
}

/// Retention of the time series.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Removes audit events and API request rows older than `before`: whole daily
    /// partitions or chunks where the backend has them, rows otherwise. Before a chain loses
    /// events, its checkpoint moves to the last removed one, sealed by `seal`, so
    /// verification starts there.
    async fn prune_time_series(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        seal: &dyn PositionSeal,
    ) -> StoreResult<Pruned>;
}

/// Which time-series layout the audit and request tables use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSeriesLayout {
    /// TimescaleDB hypertables with compression and retention policies.
    Timescaledb,
    /// Native PostgreSQL range partitions by day, with BRIN indexes.
    NativePartitions,
    /// Plain tables (SQLite).
    Plain,
}

/// The connection pools of a backend at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections handed out.
    pub in_use: u32,
    /// Connections open and waiting in the pool.
    pub idle: u32,
    /// Connections the pools may open at most.
    pub max: u32,
    /// Requests for a connection that timed out, since the process started.
    pub acquire_timeouts: u64,
}

/// The meta key of the time before which access tokens are refused.
pub const CREDENTIALS_NOT_BEFORE_META: &str = "credentials_not_before";

/// The meta key of the generation of the audit chains.
pub const AUDIT_GENERATION_META: &str = "audit_generation";

/// Credentials revoked by [`RecoveryStore::revoke_all_before`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokedAll {
    /// Live sessions revoked.
    pub sessions: u64,
    /// Live API keys revoked.
    pub api_keys: u64,
}

/// What a value sealed with the secrets key protects; the value's id and kind name its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SealedKind {
    /// A JWT signing key's private half (`signing_keys`, by `kid`).
    SigningKey,
    /// A user's TOTP secret (`mfa_totp`, by user id).
    Totp,
    /// A pending login at an external identity provider (`auth_requests`, by id).
    AuthRequest,
}

/// A value sealed with the secrets key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedValue {
    /// What it protects.
    pub kind: SealedKind,
    /// Its row: a `kid`, a user id, an auth request id.
    pub id: String,
    /// The sealed text.
    pub sealed: String,
}

/// What finishing a restore from a backup, or replacing the secrets key, takes: nothing
/// the backup cannot vouch for stays usable, audit sequence numbers are never handed out
/// twice, and what the old key sealed is sealed again with the new one.
#[async_trait]
pub trait RecoveryStore: Send + Sync {
    /// Every value sealed with the secrets key.
    async fn sealed_values(&self) -> StoreResult<Vec<SealedValue>>;
    /// Replaces `value` with `resealed` unless the row changed meanwhile (or is gone);
    /// returns whether it was replaced.
    async fn reseal(&self, value: &SealedValue, resealed: &str) -> StoreResult<bool>;
    /// In one transaction: revokes every live session and API key created before
    /// `before`, and records `before` as the time access tokens must be issued at or
    /// after ([`CREDENTIALS_NOT_BEFORE_META`]), unless a later time is recorded.
    async fn revoke_all_before(
        &self,
        before: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<RevokedAll>;
    /// The time before which access tokens are refused, if one was recorded.
    async fn credentials_not_before(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Starts the next generation of audit chains and returns it: every writer continues
    /// on a chain of its own under a new name, from sequence number 1.
    async fn next_audit_generation(&self) -> StoreResult<u32>;
}

/// Liveness and identity of the backend.
#[async_trait]
pub trait StoreHealth: Send + Sync {
    /// Round-trips a trivial query.
    async fn ping(&self) -> StoreResult<()>;
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The time-series layout chosen at start-up.
    fn time_series(&self) -> TimeSeriesLayout;
    /// The connection pools now.
    fn pool_stats(&self) -> PoolStats;
}

/// Every port at once: what a backend implements.
pub trait Store:
    UserStore
    + SessionStore
    + ServerStore
    + PolicyStore
    + AuditStore
    + SiemOutbox
    + MetaStore
    + MembershipStore
    + SigningKeyStore
    + ApiKeyStore
    + LockoutStore
    + MfaStore
    + FederationStore
    + HousekeepingStore
    + RetentionStore
    + RequestLogStore
    + RecoveryStore
    + StoreHealth
{
}

impl<T> Store for T where
    T: UserStore
        + SessionStore
        + ServerStore
        + PolicyStore
        + AuditStore
        + SiemOutbox
        + MetaStore
        + MembershipStore
        + SigningKeyStore
        + ApiKeyStore
        + LockoutStore
        + MfaStore
        + FederationStore
        + HousekeepingStore
        + RetentionStore
        + RequestLogStore
        + RecoveryStore
        + StoreHealth
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_at_revocation_absolute_expiry_or_idle_timeout_whichever_comes_first() {
        let login = DateTime::UNIX_EPOCH;
        let (idle, absolute) = (chrono::Duration::minutes(30), chrono::Duration::hours(8));
        let session = SessionRecord {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            refresh_hash: String::new(),
            auth_method: "password".into(),
            ip: None,
            mfa_verified: false,
            created_at: login,
            last_seen_at: login,
            expires_at: login + absolute,
            revoked_at: None,
            revoked_reason: None,
            node_id: "n1".into(),
        };
        let minute = chrono::Duration::minutes(1);
        assert!(session.live(idle, login));
        assert!(session.live(idle, login + idle - minute));
        assert!(
            !session.live(idle, login + idle),
            "idle for the whole timeout"
        );

        // Kept in use, it lives until its absolute expiry and not a moment longer.
        let busy = SessionRecord {
            last_seen_at: login + absolute - minute,
            ..session.clone()
        };
        assert!(busy.live(idle, login + absolute - chrono::Duration::seconds(1)));
        assert!(!busy.live(idle, login + absolute));

        let revoked = SessionRecord {
            revoked_at: Some(login),
            ..session
        };
        assert!(!revoked.live(idle, login));
    }
}
