-- Where verification of a chain starts once retention has removed its oldest events: the
-- last removed event's position and hash.
CREATE TABLE audit_checkpoints (
    chain      TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
