-- IDs of SAML assertions that were used to log in, kept until the assertion expires, so
-- an assertion is accepted once, on any node.
CREATE TABLE saml_assertions (
    id         TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
