-- Several `chatetl schedule` daemons (and one-shot runs) on one PostgreSQL warehouse share each
-- vendor account's budget (`requests_per_second`, `concurrency`) and each tick of a job
-- (`src/budget.rs` and `src/scheduler.rs` say why this is correct). Account keys are sha256
-- hashes: no credential is stored.

CREATE TABLE chatetl.source_budgets (
    account  text PRIMARY KEY,
    source   text NOT NULL,
    next_at  timestamptz NOT NULL
);
COMMENT ON TABLE chatetl.source_budgets IS 'chatetl: one request-rate budget (GCRA) per vendor account, shared by every process on this database';
COMMENT ON COLUMN chatetl.source_budgets.account IS 'sha256 of the source kind, base URL, organization and credential identity (never the credential itself)';
COMMENT ON COLUMN chatetl.source_budgets.source IS 'the chatetl.yaml name of the source that last took a slot (for operators; not part of the key)';
COMMENT ON COLUMN chatetl.source_budgets.next_at IS 'earliest instant (PostgreSQL clock) of the next request slot; each slot is 1.05/requests_per_second after the previous one';

CREATE TABLE chatetl.source_slots (
    account     text NOT NULL,
    slot        integer NOT NULL,
    holder      text,
    expires_at  timestamptz,
    PRIMARY KEY (account, slot)
);
COMMENT ON TABLE chatetl.source_slots IS 'chatetl: concurrency leases per vendor account, one row per slot (0 .. concurrency - 1); a request holds one while in flight';
COMMENT ON COLUMN chatetl.source_slots.account IS 'the account key of chatetl.source_budgets';
COMMENT ON COLUMN chatetl.source_slots.slot IS 'slot number; a source with concurrency n uses slots 0 .. n - 1';
COMMENT ON COLUMN chatetl.source_slots.holder IS 'the process and request holding the slot (host:pid:id#n; NULL: free)';
COMMENT ON COLUMN chatetl.source_slots.expires_at IS 'when a lease nobody released (its process died) stops counting: the request timeout plus concurrency * 1.05/requests_per_second plus 30 s after it was taken (a process that stops releases its leases itself)';

CREATE TABLE chatetl.ticks (
    target      text NOT NULL,
    job         text NOT NULL,
    fire_at     timestamptz NOT NULL,
    daemon      text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    done_at     timestamptz,
    PRIMARY KEY (target, job, fire_at)
);
CREATE INDEX ticks_claimed_at ON chatetl.ticks (claimed_at);
COMMENT ON TABLE chatetl.ticks IS 'chatetl: which daemon runs each scheduled tick of a job; the first to insert a row runs it, the others skip it; a daemon that claimed a tick and did not run it deletes its row; rows older than 7 days are deleted';
COMMENT ON COLUMN chatetl.ticks.target IS 'the warehouse target the job loads into (as chatetl describes it: postgres schema <name>)';
COMMENT ON COLUMN chatetl.ticks.job IS 'job name';
COMMENT ON COLUMN chatetl.ticks.fire_at IS 'the fire time of the tick (from the job schedule; the catch-up at start claims the latest fire time at or before the start)';
COMMENT ON COLUMN chatetl.ticks.daemon IS 'the daemon that claimed it (host:pid:id)';
COMMENT ON COLUMN chatetl.ticks.claimed_at IS 'when it was claimed (PostgreSQL clock)';
COMMENT ON COLUMN chatetl.ticks.done_at IS 'when its run ended, whatever the outcome (PostgreSQL clock); NULL: not run to its end (its daemon died, or runs it now): a daemon catching up at start takes the claim over';
