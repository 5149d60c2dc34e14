-- Forwarders claim due rows in (next_attempt_at, id) order. With id in the index, a claim
-- reads only the rows it takes; without it, every claim sorted all the due rows.
DROP INDEX siem_outbox_due;
CREATE INDEX siem_outbox_due ON siem_outbox (sink, next_attempt_at, id) WHERE delivered_at IS NULL;
