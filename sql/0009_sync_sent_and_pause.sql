-- 0009: sync-queue knows which claimed items were actually sent, and where a 429 pause started.
-- `sent_at` is set just before an item's request leaves and cleared when its answer is recorded
-- (or the item is given back): after a process dies, only the items with `sent_at` had a request
-- in flight (unknown outcome); the others were claimed but never sent, and go back untouched.
-- From this version `unknown_outcome` (0004) also marks a create answered a fault that may have
-- come after the CRM committed it (5xx, timeout, reset); a lookup by natural key clears it.
-- `paused_from_ms` is when the current 429 pause began (its answer arrived): an answer to a
-- request sent before that instant was in flight when the pause began, and does not extend it;
-- and no 429 pauses for more than `[sync] max_retry_after_secs` after its arrival.
ALTER TABLE sync_queue ADD COLUMN sent_at TEXT;  -- the request of this item left at; NULL: none in flight
ALTER TABLE rate_limits ADD COLUMN paused_from_ms INTEGER NOT NULL DEFAULT 0;  -- Unix ms (real clock)

-- Items a process of an earlier version left `processing` may have been sent: treat them so.
UPDATE sync_queue SET sent_at = COALESCE(claimed_at, updated_at, created_at) WHERE status = 'processing';
-- Pauses stored before this version were not capped (one `Retry-After: 86400000` stalled every
-- later run): they are dropped; at worst the next request meets a 429 again.
UPDATE rate_limits SET paused_until_ms = 0;
