-- chatetl state of a Parquet warehouse, in <root>/_chatetl/state.db. Instants are integer
-- microseconds since the Unix epoch (UTC), so they sort and compare as numbers.

-- One row per job: what its history was loaded with, and how far it is loaded.
CREATE TABLE jobs (
    job              TEXT PRIMARY KEY,
    -- sha256 of the job's definition when its history was (re)built ('' after a reset)
    definition_hash  TEXT NOT NULL,
    -- the canonical definition document behind that hash (JSON), when kept
    definition       TEXT,
    -- value columns added since the history was (re)built (JSON array of names)
    added_columns    TEXT NOT NULL DEFAULT '[]',
    history_start    INTEGER NOT NULL,
    -- every window ending at or before this instant is loaded (NULL: none yet)
    watermark        INTEGER,
    updated_at       INTEGER NOT NULL
);

-- The last successful, complete load of each window.
CREATE TABLE window_loads (
    job              TEXT NOT NULL,
    window_start     INTEGER NOT NULL,
    window_end       INTEGER NOT NULL,
    rows             INTEGER NOT NULL,
    requests         INTEGER NOT NULL,
    run_id           TEXT NOT NULL,
    definition_hash  TEXT NOT NULL,
    loaded_at        INTEGER NOT NULL,
    PRIMARY KEY (job, window_start)
) WITHOUT ROWID;

-- Windows whose last load attempt failed; deleted by the window's next complete load.
CREATE TABLE window_failures (
    job              TEXT NOT NULL,
    window_start     INTEGER NOT NULL,
    window_end       INTEGER NOT NULL,
    run_id           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    error            TEXT NOT NULL,
    failed_at        INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    PRIMARY KEY (job, window_start)
) WITHOUT ROWID;

-- Run history: the newest 1,000 runs of each job.
CREATE TABLE runs (
    run_id           TEXT PRIMARY KEY,
    job              TEXT NOT NULL,
    kind             TEXT NOT NULL,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    status           TEXT NOT NULL,
    windows_planned  INTEGER NOT NULL,
    windows_loaded   INTEGER NOT NULL,
    windows_skipped  INTEGER NOT NULL,
    windows_failed   INTEGER NOT NULL,
    rows             INTEGER NOT NULL,
    requests         INTEGER NOT NULL,
    retries          INTEGER NOT NULL,
    error            TEXT,
    error_kind       TEXT
);
CREATE INDEX runs_job_started ON runs (job, started_at DESC);

-- A rebuild's promotion in progress: recorded before the live and shadow folders are
-- exchanged, with the id written in a marker file inside the shadow folder, so opening the
-- warehouse can tell whether the exchange happened and finish the promotion. `moved`: the state
-- has moved too; only the old folder is left to delete.
CREATE TABLE promotions (
    live_job         TEXT PRIMARY KEY,
    shadow_job       TEXT NOT NULL,
    live_table       TEXT NOT NULL,
    shadow_table     TEXT NOT NULL,
    id               TEXT NOT NULL,
    moved            INTEGER NOT NULL DEFAULT 0,
    started_at       INTEGER NOT NULL
);
