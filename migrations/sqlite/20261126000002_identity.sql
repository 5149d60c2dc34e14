-- Identity: signing keys, API keys, lockout counters, TOTP and MFA challenges.

-- JWT signing keys, shared by every node. The private key is encrypted with a key derived
-- from the secrets key. Exactly one key is active (retired_at IS NULL); retired keys keep
-- verifying until the tokens they signed have expired.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    retired_at  TEXT
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;

CREATE TABLE api_keys (
    id             BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL,
    name           TEXT NOT NULL,
    prefix         TEXT NOT NULL UNIQUE,
    key_hash       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT,
    last_used_at   TEXT,
    revoked_at     TEXT,
    revoked_reason TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- Failed first or second factors, by submitted username (existing or not).
CREATE TABLE login_failures (
    username          TEXT PRIMARY KEY,
    failures          INTEGER NOT NULL,
    window_started_at TEXT NOT NULL,
    locked_until      TEXT
);

-- One TOTP secret per user (encrypted); confirmed_at is NULL while enrolment is pending.
-- last_step is the highest time step accepted, so a code is accepted once.
CREATE TABLE mfa_totp (
    user_id      BLOB PRIMARY KEY,
    secret       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    confirmed_at TEXT,
    last_step    INTEGER
);

CREATE TABLE mfa_recovery_codes (
    user_id   BLOB NOT NULL,
    code_hash TEXT NOT NULL,
    used_at   TEXT,
    PRIMARY KEY (user_id, code_hash)
);

-- Pending second factors of logins whose first factor succeeded.
CREATE TABLE mfa_challenges (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL,
    username    TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    ip          TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    consumed_at TEXT
);

-- Hashes of refresh tokens that were rotated away. Presenting one of these is a reuse
-- (revoke the session); presenting a token never issued is merely invalid.
CREATE TABLE refresh_tokens_used (
    hash       TEXT PRIMARY KEY,
    session_id BLOB NOT NULL,
    used_at    TEXT NOT NULL
);
CREATE INDEX refresh_tokens_used_session ON refresh_tokens_used (session_id);
