-- Each chain's recorded head and retention checkpoint carry a seal: an HMAC with the audit
-- key over chain, kind, seq, hash and time, so a database writer cannot move either one.
-- Rows written before this change have none, and verification reports them unsealed
-- until the chain's writer records its next event.
ALTER TABLE audit_chain_heads ADD COLUMN mac TEXT;
ALTER TABLE audit_checkpoints ADD COLUMN mac TEXT;
