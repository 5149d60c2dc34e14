-- The voting membership of the cluster: who counts toward a majority. Each node records
-- itself (last_seen_at) while it runs and removes itself when it leaves gracefully; a
-- member silent longer than cluster.forget_after_seconds is removed by a node that holds
-- a valid lease, or by `sark admin forget-member`.
CREATE TABLE cluster_members (
    node_id      TEXT PRIMARY KEY,
    addr         TEXT NOT NULL,
    joined_at    TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
