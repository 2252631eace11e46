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
