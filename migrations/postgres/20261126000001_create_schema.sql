-- SARK schema for PostgreSQL.
--
-- audit_logs and api_requests are time series. Where the TimescaleDB extension is loaded
-- they become hypertables; otherwise they are natively range-partitioned by day with BRIN
-- indexes, and the node creates partitions ahead of time and drops expired ones. The
-- choice is recorded in meta('time_series_layout') and shown in /health/detailed.

-- Migrations may run longer than the statement timeout that request connections use.
SET LOCAL statement_timeout = 0;

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    teams         JSONB NOT NULL DEFAULT '[]',
    password_hash TEXT,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    mfa_enabled   BOOLEAN NOT NULL DEFAULT FALSE,
    provider      TEXT NOT NULL DEFAULT 'local',
    subject       TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX users_provider_subject ON users (provider, subject) WHERE subject IS NOT NULL;

-- No foreign key to users: a deleted user's sessions stay (revoked) until they expire.
CREATE TABLE sessions (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL,
    refresh_hash   TEXT NOT NULL,
    auth_method    TEXT NOT NULL,
    ip             TEXT,
    mfa_verified   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL,
    last_seen_at   TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT,
    node_id        TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_revoked ON sessions (expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE servers (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    endpoint    TEXT NOT NULL,
    description TEXT,
    tags        JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL
);
-- Tag filters are containment queries (tags @> '{"env":"prod"}') served by this index.
CREATE INDEX servers_tags ON servers USING GIN (tags jsonb_path_ops);

CREATE TABLE policy_bundles (
    name           TEXT PRIMARY KEY,
    active_version BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE policy_versions (
    bundle      TEXT NOT NULL REFERENCES policy_bundles (name),
    version     BIGINT NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (bundle, version)
);

CREATE TABLE audit_chain_heads (
    chain      TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE siem_outbox (
    id              BIGSERIAL PRIMARY KEY,
    sink            TEXT NOT NULL,
    audit_id        UUID NOT NULL,
    payload         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX siem_outbox_due ON siem_outbox (sink, next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

DO $$
DECLARE
    timescale BOOLEAN := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
        AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%';
BEGIN
    IF timescale THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        CREATE TABLE audit_logs (
            id         UUID NOT NULL,
            chain      TEXT NOT NULL,
            seq        BIGINT NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            event_type TEXT NOT NULL,
            actor      TEXT,
            ip         TEXT,
            resource   TEXT,
            outcome    TEXT NOT NULL,
            details    JSONB NOT NULL,
            node_id    TEXT NOT NULL,
            prev_hash  TEXT NOT NULL,
            hash       TEXT NOT NULL,
            PRIMARY KEY (chain, seq, "timestamp")
        );
        PERFORM create_hypertable('audit_logs', 'timestamp', chunk_time_interval => INTERVAL '1 day');
        CREATE TABLE api_requests (
            "timestamp" TIMESTAMPTZ NOT NULL,
            method      TEXT NOT NULL,
            route       TEXT NOT NULL,
            status      INTEGER NOT NULL,
            duration_us BIGINT NOT NULL,
            principal   TEXT,
            node_id     TEXT NOT NULL
        );
        PERFORM create_hypertable('api_requests', 'timestamp', chunk_time_interval => INTERVAL '1 day');
        INSERT INTO meta (key, value) VALUES ('time_series_layout', 'timescaledb');
    ELSE
        CREATE TABLE audit_logs (
            id         UUID NOT NULL,
            chain      TEXT NOT NULL,
            seq        BIGINT NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            event_type TEXT NOT NULL,
            actor      TEXT,
            ip         TEXT,
            resource   TEXT,
            outcome    TEXT NOT NULL,
            details    JSONB NOT NULL,
            node_id    TEXT NOT NULL,
            prev_hash  TEXT NOT NULL,
            hash       TEXT NOT NULL,
            PRIMARY KEY (chain, seq, "timestamp")
        ) PARTITION BY RANGE ("timestamp");
        -- Rows outside every daily partition land here rather than failing the insert.
        CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
        CREATE INDEX audit_logs_time_brin ON audit_logs USING BRIN ("timestamp");
        CREATE TABLE api_requests (
            "timestamp" TIMESTAMPTZ NOT NULL,
            method      TEXT NOT NULL,
            route       TEXT NOT NULL,
            status      INTEGER NOT NULL,
            duration_us BIGINT NOT NULL,
            principal   TEXT,
            node_id     TEXT NOT NULL
        ) PARTITION BY RANGE ("timestamp");
        CREATE TABLE api_requests_default PARTITION OF api_requests DEFAULT;
        CREATE INDEX api_requests_time_brin ON api_requests USING BRIN ("timestamp");
        INSERT INTO meta (key, value) VALUES ('time_series_layout', 'native_partitions');
    END IF;
END
$$;

CREATE INDEX audit_logs_time ON audit_logs ("timestamp" DESC, id DESC);
CREATE INDEX audit_logs_type_time ON audit_logs (event_type, "timestamp" DESC);
CREATE INDEX audit_logs_actor_time ON audit_logs (actor, "timestamp" DESC);
CREATE INDEX audit_logs_chain_seq ON audit_logs (chain, seq);
