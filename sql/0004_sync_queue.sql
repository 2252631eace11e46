-- 0004: the outbox of ERP changes to the external CRM (GestãoClick), its request log, the CRM
-- ids learned for ERP records, and the rate limit shared by every process of the tool.
--
-- Host applications enqueue by inserting rows directly, with only what they know:
--   INSERT INTO sync_queue (entity, record_id, action, payload)
--   VALUES ('clientes', '123', 'upsert', '{"nome": "Maria"}');
-- crm-jobs fills in the rest: the priority by entity ([sync] priorities) when `priority` is
-- NULL, an idempotency key when `idempotency_key` is NULL, and "now" when `due_at` is NULL. A
-- newer pending change of the same record supersedes the older one (one request, the latest
-- payload), whether it came from `crm-jobs enqueue` or from an INSERT.

CREATE TABLE sync_queue (
    id              INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: idempotency keys derive from it
    entity          TEXT    NOT NULL,               -- clientes | produtos | vendas | atividades ([crm.resources])
    record_id       TEXT    NOT NULL,               -- the ERP's id of the record
    action          TEXT    NOT NULL CHECK (action IN ('create', 'update', 'delete', 'upsert')),
    payload         TEXT    NOT NULL DEFAULT '{}',  -- JSON object sent as the body (ERP ids in references)
    priority        INTEGER,                        -- higher first; NULL: by entity, filled in at the next run
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'processing', 'done', 'failed', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,     -- requests that failed transiently
    due_at          TEXT,                           -- not before this instant (backoff, deferral); NULL: now
    idempotency_key TEXT    UNIQUE,                 -- sent as Idempotency-Key; stable for the item
    claimed_run     INTEGER,                        -- the run that holds it while `processing`
    claimed_at      TEXT,
    unknown_outcome INTEGER NOT NULL DEFAULT 0,     -- 1: a request was in flight when its process died
    waiting_for     TEXT,                           -- 'clientes:123': deferred until that record has a CRM id
    external_id     TEXT,                           -- the CRM's id, once known
    last_status     INTEGER,                        -- HTTP status of the last answer
    last_error      TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT,
    finished_at     TEXT                            -- when it became done, failed or superseded
);

-- Claims walk pending items by priority, then age, without sorting the queue.
CREATE INDEX sync_queue_claim ON sync_queue (status, priority DESC, id);
CREATE INDEX sync_queue_record ON sync_queue (entity, record_id, status);
CREATE INDEX sync_queue_waiting ON sync_queue (waiting_for) WHERE waiting_for IS NOT NULL;
CREATE INDEX sync_queue_finished ON sync_queue (finished_at) WHERE finished_at IS NOT NULL;

-- The CRM's id of each ERP record synced so far: references are translated through it.
CREATE TABLE external_ids (
    entity          TEXT    NOT NULL,
    record_id       TEXT    NOT NULL,
    external_id     TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    PRIMARY KEY (entity, record_id)
);

-- One row per request sent (or not sent, for a deferral): what, answer, duration, error.
CREATE TABLE sync_log (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL,
    run_id          INTEGER,
    at              TEXT    NOT NULL,
    request         TEXT    NOT NULL,               -- e.g. 'POST /clientes' (never the credentials)
    status          INTEGER,                        -- HTTP status; NULL when no answer
    duration_ms     INTEGER,
    error           TEXT
);

CREATE INDEX sync_log_at ON sync_log (at);

-- Token buckets shared by every process: the CRM's per-minute limit is global to the tool.
-- Times are Unix milliseconds of the real clock.
CREATE TABLE rate_limits (
    name            TEXT    PRIMARY KEY,
    tokens          REAL    NOT NULL,
    updated_ms      INTEGER NOT NULL,
    paused_until_ms INTEGER NOT NULL DEFAULT 0      -- a 429's Retry-After, for every process
);

-- Priority by entity, written from `[sync] priorities` at every run (higher first); an item's own
-- `priority` wins.
CREATE TABLE sync_priorities (
    entity          TEXT    PRIMARY KEY,
    priority        INTEGER NOT NULL
);
