-- chatetl state: per-job watermark and definition hash, per-window loads, run history.
-- Lives in the `chatetl` schema of the warehouse database and is committed in the same
-- transaction as the data it describes.

CREATE TABLE chatetl.jobs (
    job              text PRIMARY KEY,
    -- sha256 of the job's query definition when its history was (re)built
    definition_hash  text NOT NULL,
    -- every window ending at or before this instant is loaded (NULL: none yet)
    watermark        timestamptz,
    history_start    timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE chatetl.jobs IS 'chatetl: one row per job; the watermark moves only past committed windows';

CREATE TABLE chatetl.window_loads (
    job              text NOT NULL REFERENCES chatetl.jobs (job) ON DELETE CASCADE,
    window_start     timestamptz NOT NULL,
    window_end       timestamptz NOT NULL,
    rows             bigint NOT NULL,
    requests         integer NOT NULL,
    run_id           text NOT NULL,
    definition_hash  text NOT NULL,
    loaded_at        timestamptz NOT NULL,
    PRIMARY KEY (job, window_start)
);
COMMENT ON TABLE chatetl.window_loads IS 'chatetl: the last successful load of each window';

CREATE TABLE chatetl.runs (
    run_id           text PRIMARY KEY,
    job              text NOT NULL,
    kind             text NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    status           text NOT NULL,
    windows_planned  integer NOT NULL DEFAULT 0,
    windows_loaded   integer NOT NULL DEFAULT 0,
    windows_skipped  integer NOT NULL DEFAULT 0,
    windows_failed   integer NOT NULL DEFAULT 0,
    rows             bigint NOT NULL DEFAULT 0,
    requests         integer NOT NULL DEFAULT 0,
    retries          integer NOT NULL DEFAULT 0,
    error            text
);
CREATE INDEX runs_job_started ON chatetl.runs (job, started_at DESC);
COMMENT ON TABLE chatetl.runs IS 'chatetl: run history, one row per job run';
