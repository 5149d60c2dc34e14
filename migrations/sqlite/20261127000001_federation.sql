-- Logins at external identity providers (OIDC, SAML).

-- A login that was sent to a provider and has not come back yet. `id` is the SHA-256 of
-- the value the provider echoes (the OIDC state); it is taken once, by whichever node the
-- callback lands on.
CREATE TABLE auth_requests (
    id           TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    data         TEXT NOT NULL,
    redirect_uri TEXT,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);

-- One-time login codes handed to an allow-listed redirect, exchanged for the token
-- response by POST /api/v1/auth/exchange. Only the code's SHA-256 is kept.
CREATE TABLE login_codes (
    code_hash   TEXT PRIMARY KEY,
    user_id     BLOB NOT NULL,
    auth_method TEXT NOT NULL,
    ip          TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
