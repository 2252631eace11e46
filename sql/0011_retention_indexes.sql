-- 0011: every rule of `cleanup` finds its rows through an index on the column it compares with
-- its cutoff (issue 15): a rule reads the rows it removes or changes, not the whole table, so
-- that a store of millions of rows, old and recent interleaved, is cleaned in seconds and the
-- rows it keeps are not read at all. `sync_log (at)` (0004) already was one.

-- `queue_done` and `queue_failed`: the status first, so that a rule never steps over the rows
-- of the other (failed items are kept longer than done ones).
CREATE INDEX sync_queue_status_finished ON sync_queue (status, finished_at) WHERE finished_at IS NOT NULL;
-- `runs`: the runs still `running` (one per job at most) are stepped over.
CREATE INDEX runs_started ON runs (started_at);
-- `job_skips`.
CREATE INDEX job_skips_at ON job_skips (at);
-- `email_outbox`: only `sent` and `failed` emails are removed.
CREATE INDEX email_outbox_status_created ON email_outbox (status, created_at);
-- `sessions`: a session leaves this index when it is soft-deleted.
CREATE INDEX sessions_to_expire ON sessions (expires_at) WHERE deleted_at IS NULL;
-- `payments`: a payment leaves this index when it is cancelled (or no longer pending).
CREATE INDEX payments_pending ON payments (created_at) WHERE status = 'pending' AND deleted_at IS NULL;
