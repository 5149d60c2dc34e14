-- SARK schema for the embedded SQLite store. Times are RFC 3339 UTC text, ids are UUID blobs.

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    teams         TEXT NOT NULL DEFAULT '[]',
    password_hash TEXT,
    is_active     INTEGER NOT NULL DEFAULT 1,
    mfa_enabled   INTEGER NOT NULL DEFAULT 0,
    provider      TEXT NOT NULL DEFAULT 'local',
    subject       TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
-- External identities are keyed by (provider, subject) and never merged with local accounts.
CREATE UNIQUE INDEX users_provider_subject ON users (provider, subject) WHERE subject IS NOT NULL;

-- No foreign key to users: a deleted user's sessions stay (revoked) until they expire, so
-- every node keeps refusing their tokens after a restart.
CREATE TABLE sessions (
    id             BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL,
    refresh_hash   TEXT NOT NULL,
    auth_method    TEXT NOT NULL,
    ip             TEXT,
    mfa_verified   INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    last_seen_at   TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    revoked_reason TEXT,
    node_id        TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_revoked ON sessions (expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE servers (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    endpoint    TEXT NOT NULL,
    description TEXT,
    tags        TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);
-- Tag filters use this indexed side table (kept in step with servers.tags).
CREATE TABLE server_tags (
    server_id BLOB NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (server_id, key)
);
CREATE INDEX server_tags_key_value ON server_tags (key, value, server_id);

CREATE TABLE policy_bundles (
    name           TEXT PRIMARY KEY,
    active_version INTEGER NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE policy_versions (
    bundle      TEXT NOT NULL REFERENCES policy_bundles (name),
    version     INTEGER NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    description TEXT,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (bundle, version)
);

CREATE TABLE audit_logs (
    id         BLOB NOT NULL,
    chain      TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    timestamp  TEXT NOT NULL,
    event_type TEXT NOT NULL,
    actor      TEXT,
    ip         TEXT,
    resource   TEXT,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_logs_time ON audit_logs (timestamp, id);
CREATE INDEX audit_logs_type_time ON audit_logs (event_type, timestamp);
CREATE INDEX audit_logs_actor_time ON audit_logs (actor, timestamp);

-- The committed head of each chain; appends move it with a conditional update, so two
-- writers can never fork one chain.
CREATE TABLE audit_chain_heads (
    chain      TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE siem_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sink            TEXT NOT NULL,
    audit_id        BLOB NOT NULL,
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TEXT,
    last_error      TEXT,
    delivered_at    TEXT
);
CREATE INDEX siem_outbox_due ON siem_outbox (sink, next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE api_requests (
    timestamp   TEXT NOT NULL,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    status      INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    principal   TEXT,
    node_id     TEXT NOT NULL
);
CREATE INDEX api_requests_time ON api_requests (timestamp);

CREATE TABLE meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL
);
