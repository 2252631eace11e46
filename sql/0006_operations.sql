-- 0006: operating the jobs. A paused job's starts exit at once, each recorded as a skip.

CREATE TABLE job_pauses (
    job             TEXT    PRIMARY KEY,            -- e.g. 'sync-queue'
    reason          TEXT,
    paused_at       TEXT    NOT NULL
);

CREATE TABLE job_skips (
    id              INTEGER PRIMARY KEY,
    job             TEXT    NOT NULL,
    at              TEXT    NOT NULL,
    reason          TEXT                            -- why it was skipped (the pause's reason)
);

-- Alert incidents: one row per problem of a job while it lasts. An email goes out when it opens
-- and when it clears (through `email_outbox`).
CREATE TABLE incidents (
    id              INTEGER PRIMARY KEY,
    job             TEXT    NOT NULL,
    kind            TEXT    NOT NULL,               -- consecutive_failures | error_rate | slow_run | stale
    detail          TEXT    NOT NULL,
    opened_at       TEXT    NOT NULL,
    cleared_at      TEXT
);

CREATE UNIQUE INDEX incidents_open ON incidents (job, kind) WHERE cleared_at IS NULL;
