-- State belongs to its target: every state row names the schema its job's table lives in, so a
-- demo (`chatetl_demo`) and a production configuration (`analytics`) on one database keep their
-- own watermarks, window loads, failures and runs.
--
-- Rows written before this migration get target NULL ("legacy"): the release that wrote them kept
-- one state per job name. `claim_legacy_state` (sink::postgres) gives them to the first target
-- whose schema holds the job's table.
--
-- The keys are (target, job[, window_start]). They are UNIQUE NULLS NOT DISTINCT rather than
-- PRIMARY KEY on jobs and window_loads because a primary key's columns are NOT NULL and legacy
-- rows have no target; NULLS NOT DISTINCT keeps the old guarantee (one legacy row per job name).
-- window_failures is new, so it never holds legacy rows: its target is NOT NULL, its key primary.

ALTER TABLE chatetl.window_loads DROP CONSTRAINT window_loads_job_fkey;
ALTER TABLE chatetl.window_loads DROP CONSTRAINT window_loads_pkey;
ALTER TABLE chatetl.jobs DROP CONSTRAINT jobs_pkey;

ALTER TABLE chatetl.jobs
    ADD COLUMN target text,
    ADD COLUMN definition jsonb,
    ADD COLUMN added_columns text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT jobs_key UNIQUE NULLS NOT DISTINCT (target, job);

ALTER TABLE chatetl.window_loads
    ADD COLUMN target text,
    ADD CONSTRAINT window_loads_key UNIQUE NULLS NOT DISTINCT (target, job, window_start),
    ADD CONSTRAINT window_loads_job_fkey FOREIGN KEY (target, job)
        REFERENCES chatetl.jobs (target, job) ON DELETE CASCADE;

ALTER TABLE chatetl.runs ADD COLUMN target text;
-- `status` reads a job's latest runs.
DROP INDEX chatetl.runs_job_started;
CREATE INDEX runs_target_job_started ON chatetl.runs (target, job, started_at DESC);

CREATE TABLE chatetl.window_failures (
    target        text NOT NULL,
    job           text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    run_id        text NOT NULL,
    kind          text NOT NULL,
    error         text NOT NULL,
    failed_at     timestamptz NOT NULL,
    attempts      integer NOT NULL,
    PRIMARY KEY (target, job, window_start),
    FOREIGN KEY (target, job) REFERENCES chatetl.jobs (target, job) ON DELETE CASCADE
);

COMMENT ON TABLE chatetl.jobs IS 'chatetl: one row per job and target; the watermark moves only past committed windows';
COMMENT ON COLUMN chatetl.jobs.target IS 'the schema the job''s table lives in (NULL: written by a release that kept one state per job name, not yet claimed)';
COMMENT ON COLUMN chatetl.jobs.job IS 'the job''s name (a rebuild in progress: <name>~rebuild)';
COMMENT ON COLUMN chatetl.jobs.definition_hash IS 'sha256 of the job''s definition when its history was (re)built or its columns added';
COMMENT ON COLUMN chatetl.jobs.definition IS 'the canonical definition document behind definition_hash (NULL: kept before documents were)';
COMMENT ON COLUMN chatetl.jobs.added_columns IS 'value columns added in place since the history was (re)built; windows loaded before hold NULL there until run --outdated';
COMMENT ON COLUMN chatetl.jobs.watermark IS 'every window ending at or before this instant is loaded (NULL: none yet)';
COMMENT ON COLUMN chatetl.jobs.history_start IS 'where the job''s history starts: the watermark walks from here';
COMMENT ON COLUMN chatetl.jobs.updated_at IS 'when this row last changed';

COMMENT ON TABLE chatetl.window_loads IS 'chatetl: the last successful load of each window of each job and target';
COMMENT ON COLUMN chatetl.window_loads.target IS 'the schema the job''s table lives in (NULL: legacy, see chatetl.jobs.target)';
COMMENT ON COLUMN chatetl.window_loads.job IS 'the job''s name';
COMMENT ON COLUMN chatetl.window_loads.window_start IS 'start of the window, UTC instant (inclusive)';
COMMENT ON COLUMN chatetl.window_loads.window_end IS 'end of the window, UTC instant (exclusive)';
COMMENT ON COLUMN chatetl.window_loads.rows IS 'rows the load wrote';
COMMENT ON COLUMN chatetl.window_loads.requests IS 'requests made for the chunk of windows this one was loaded with';
COMMENT ON COLUMN chatetl.window_loads.run_id IS 'the run that loaded it (chatetl.runs.run_id)';
COMMENT ON COLUMN chatetl.window_loads.definition_hash IS 'the job''s definition hash when loaded: differs from chatetl.jobs.definition_hash for windows loaded before columns were added';
COMMENT ON COLUMN chatetl.window_loads.loaded_at IS 'when it was committed';

COMMENT ON TABLE chatetl.runs IS 'chatetl: run history, one row per job run';
COMMENT ON COLUMN chatetl.runs.target IS 'the schema the job''s table lives in (NULL: legacy, see chatetl.jobs.target)';
COMMENT ON COLUMN chatetl.runs.run_id IS 'the run''s id (a UUID)';
COMMENT ON COLUMN chatetl.runs.job IS 'the job''s name';
COMMENT ON COLUMN chatetl.runs.kind IS 'why it ran: run, run-range, backfill, demo, schedule, rebuild, run-failed or run-outdated';
COMMENT ON COLUMN chatetl.runs.started_at IS 'when it started';
COMMENT ON COLUMN chatetl.runs.finished_at IS 'when it finished (NULL: running)';
COMMENT ON COLUMN chatetl.runs.status IS 'running, succeeded, partial, failed, interrupted or died (its process ended before it finished)';
COMMENT ON COLUMN chatetl.runs.windows_planned IS 'windows the run was asked to load';
COMMENT ON COLUMN chatetl.runs.windows_loaded IS 'windows it committed';
COMMENT ON COLUMN chatetl.runs.windows_skipped IS 'windows skipped as already loaded with the same definition';
COMMENT ON COLUMN chatetl.runs.windows_failed IS 'windows whose load failed (they keep their old rows)';
COMMENT ON COLUMN chatetl.runs.rows IS 'rows written';
COMMENT ON COLUMN chatetl.runs.requests IS 'requests sent upstream';
COMMENT ON COLUMN chatetl.runs.retries IS 'requests retried';
COMMENT ON COLUMN chatetl.runs.error IS 'the message of the first failure (NULL: none)';

COMMENT ON TABLE chatetl.window_failures IS 'chatetl: windows whose last load attempt failed; run --failed reloads them, a load removes them';
COMMENT ON COLUMN chatetl.window_failures.target IS 'the schema the job''s table lives in';
COMMENT ON COLUMN chatetl.window_failures.job IS 'the job''s name';
COMMENT ON COLUMN chatetl.window_failures.window_start IS 'start of the window, UTC instant (inclusive)';
COMMENT ON COLUMN chatetl.window_failures.window_end IS 'end of the window, UTC instant (exclusive)';
COMMENT ON COLUMN chatetl.window_failures.run_id IS 'the run of the latest failed attempt';
COMMENT ON COLUMN chatetl.window_failures.kind IS 'kind of the latest failure: credentials, bad_request, upstream_unavailable, bad_response, warehouse or configuration';
COMMENT ON COLUMN chatetl.window_failures.error IS 'the latest failure''s message';
COMMENT ON COLUMN chatetl.window_failures.failed_at IS 'when the latest attempt failed';
COMMENT ON COLUMN chatetl.window_failures.attempts IS 'failed attempts since the window was last loaded';
