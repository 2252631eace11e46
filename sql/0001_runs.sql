-- 0001: run history, shared by every job.
-- One row per start of a job. A process that dies leaves its row `running`; the next start of
-- the same job (which then holds the job's lock, so the old process is gone) marks it
-- `interrupted`. All instants are RFC 3339 UTC text.

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    job             TEXT    NOT NULL,               -- subcommand, e.g. 'fetch-invoices'
    origin          TEXT    NOT NULL,               -- manual | automatic | safra | individual | retry
    args            TEXT    NOT NULL DEFAULT '[]',  -- JSON array: the command line, secrets never included
    safra           TEXT,                           -- YYYY-MM when the run was limited to one safra
    pid             INTEGER NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    duration_ms     INTEGER,
    status          TEXT    NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'success', 'partial', 'failed', 'interrupted')),
    items_total     INTEGER NOT NULL DEFAULT 0,     -- items the run tried (contracts for fetch-invoices)
    items_ok        INTEGER NOT NULL DEFAULT 0,
    items_failed    INTEGER NOT NULL DEFAULT 0,
    items_skipped   INTEGER NOT NULL DEFAULT 0,
    counters        TEXT    NOT NULL DEFAULT '{}',  -- JSON object of job-specific counts
    item_ms_min     INTEGER,                        -- per-item durations (an invoice for fetch-invoices)
    item_ms_avg     INTEGER,
    item_ms_max     INTEGER,
    error           TEXT,                           -- why the run stopped, when it did
    log             TEXT    NOT NULL DEFAULT '[]'   -- JSON array of notable events {at, level, message}
);

CREATE INDEX runs_job_started ON runs (job, started_at);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
