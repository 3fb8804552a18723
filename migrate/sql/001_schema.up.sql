-- pgdurable's tables and functions, in the schema given to migrate.Up
-- (beside River's). One migration: 001 to 004 were never released and are
-- folded here.
--
-- Lock order, for every writer of a run: the run row, then its waits, then
-- its steps. Advisory locks on event names (two-key form: hashtext of the
-- quoted schema, hashtext of the name) are taken before any row lock.

-- Functions registered by worker processes (or Client.Register), so that
-- any process (even one with no functions, such as an API server) routes
-- events to them. config holds the settings a process creating a run needs:
-- idempotency key, cancellation listeners, timeouts.
CREATE TABLE {{schema}}.durable_function (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    retries     integer NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {{schema}}.durable_function_trigger (
    function_id text NOT NULL REFERENCES {{schema}}.durable_function (id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    event_name  text,
    if_expr     text NOT NULL DEFAULT '',
    cron        text NOT NULL DEFAULT '',
    PRIMARY KEY (function_id, idx)
);
CREATE INDEX durable_function_trigger_event_name_idx
    ON {{schema}}.durable_function_trigger (event_name) WHERE event_name IS NOT NULL;

-- Events. The primary key is the user-visible event ID, which makes
-- deduplication a unique-constraint decision. xid is the inserting
-- transaction's ID: a wait compares it with the snapshot taken when it
-- began. Events the library emits itself (system events) are stored in the
-- transaction that ends a run and routed right after by any live process
-- (routed = false until then).
CREATE TABLE {{schema}}.durable_event (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    routed      boolean NOT NULL DEFAULT true,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- The sender's W3C trace context ({"traceparent": ..., "tracestate": ...})
    -- when its client traces (Config.TracerProvider); the runs it starts
    -- keep it in their events and their spans link to it.
    trace       jsonb
);
CREATE INDEX durable_event_unrouted_idx ON {{schema}}.durable_event (received_at) WHERE NOT routed;
CREATE INDEX durable_event_name_received_idx ON {{schema}}.durable_event (name, received_at);

-- One row per run. An attempt owns the run while owner_worker (the River
-- client working its job, whose heartbeat says it is alive) and
-- owner_token (the attempt's own) are set; epoch is the fencing version:
-- every attempt's claim and every write that changes the run's state
-- checks and bumps it (the owner alone cannot fence once released to NULL).
CREATE TABLE {{schema}}.durable_run (
    id              text PRIMARY KEY,
    function_id     text NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    event_id        text NOT NULL,
    event_ids       text[] NOT NULL,
    events          jsonb NOT NULL,
    job_id          bigint,
    owner_worker    text,
    owner_token     text,
    epoch           bigint NOT NULL DEFAULT 0,
    fn_attempts     integer NOT NULL DEFAULT 0,
    wake_at         timestamptz,
    output          jsonb,
    error           text,
    parent_run_id   text,
    parent_step     text,
    -- The run this one reruns (Client.Rerun), if any.
    rerun_of        text,
    start_deadline  timestamptz,
    finish_timeout  interval,
    finish_deadline timestamptz,
    -- Lines the function logged through durable.Logger (outside step
    -- bodies) in earlier attempts: a replay skips as many.
    log_lines       bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    ended_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80); -- room on each page for the hot path's HOT updates
CREATE INDEX durable_run_event_id_idx ON {{schema}}.durable_run (event_id);
-- (The indexes that list runs newest first, by function or not, are at
-- the end of this file.)
CREATE INDEX durable_run_parent_idx ON {{schema}}.durable_run (parent_run_id) WHERE parent_run_id IS NOT NULL;
-- No index predicate mentions status: updating status must stay a HOT
-- update (the hot path updates the run row at every attempt).
CREATE INDEX durable_run_start_deadline_idx ON {{schema}}.durable_run (start_deadline)
    WHERE start_deadline IS NOT NULL;
CREATE INDEX durable_run_finish_deadline_idx ON {{schema}}.durable_run (finish_deadline)
    WHERE finish_deadline IS NOT NULL;

-- Memoized steps, keyed by (run, step key with counter suffix).
-- child_run_id is the run an "invoke" step waits for.
CREATE TABLE {{schema}}.durable_step (
    run_id       text NOT NULL REFERENCES {{schema}}.durable_run (id) ON DELETE CASCADE,
    key          text NOT NULL,
    seq          integer NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    output       jsonb,
    error        text,
    wake_at      timestamptz,
    child_run_id text,
    -- Every failed attempt, oldest first: [{"attempt", "error", "at"}]
    -- (error holds only the last), for the run browser's timeline.
    failures     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, key)
);

-- Liveness of worker processes. A River job left running by a process whose
-- heartbeat is older than RecoverAfter is handed to another process.
CREATE TABLE {{schema}}.durable_worker (
    id            text PRIMARY KEY,
    hostname      text NOT NULL DEFAULT '',
    pid           integer NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- Open waits (WaitForEvent) and cancellation listeners (CancelOn). An
-- incoming event finds its candidates by (event_name, match_path,
-- match_value) when the condition has an indexable equality, else by
-- event_name with match_path NULL; the full condition is then evaluated.
CREATE TABLE {{schema}}.durable_wait (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL REFERENCES {{schema}}.durable_run (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('wait', 'cancel')),
    step_key    text,
    event_name  text NOT NULL,
    match_path  text,
    match_value text,
    if_expr     text NOT NULL DEFAULT '',
    run_event   jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX durable_wait_match_idx ON {{schema}}.durable_wait (event_name, match_path, match_value);
CREATE INDEX durable_wait_run_idx ON {{schema}}.durable_wait (run_id);
CREATE UNIQUE INDEX durable_wait_step_idx ON {{schema}}.durable_wait (run_id, step_key) WHERE kind = 'wait';

-- Idempotency keys: one run per function per key per 24 hours.
CREATE TABLE {{schema}}.durable_idempotency (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);

-- Cron ticks: the primary key makes each tick start exactly one run,
-- whichever process gets there first.
CREATE TABLE {{schema}}.durable_cron_tick (
    function_id text NOT NULL,
    tick        timestamptz NOT NULL,
    run_id      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function_id, tick)
);

-- Which executing processes (River client IDs, see durable_worker) have
-- which functions, written when a client starts: the function registry
-- shows the live ones by their heartbeats.
CREATE TABLE {{schema}}.durable_function_worker (
    function_id text NOT NULL REFERENCES {{schema}}.durable_function (id) ON DELETE CASCADE,
    worker_id   text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function_id, worker_id)
);

-- System event names some WaitForEvent waited on: from then on those
-- events are always stored (a waiter registers the name, under the name's
-- exclusive lock, before its wait begins).
CREATE TABLE {{schema}}.durable_listened_name (
    name text PRIMARY KEY
);

-- Bounded upkeep: indexes that keep the every-second loops' queries to
-- index ranges, however much work waits.

-- The waker (query Wake) reads the scheduled jobs of its queue that are
-- due and the next one due soon. Jobs scheduled far ahead (an Invoke
-- without timeout waits ten years) pile up at the end of this index and
-- are never read. Only scheduled jobs have entries: the hot path's
-- available, running and completed jobs never write to it.
CREATE INDEX durable_river_job_scheduled_idx ON {{schema}}.river_job (queue, scheduled_at)
    WHERE state = 'scheduled';

-- durable_deliver completes a waiting step (a wait's event, an invoked
-- child's result) and wakes its run: the step must still be waiting (a
-- timeout claimed first wins), and the run's job, scheduled for the
-- timeout, is made available at once and the producers told. Returns
-- whether the step was delivered.
CREATE FUNCTION {{schema}}.durable_deliver(p_run_id text, p_step text, p_status text, p_output jsonb, p_error text, p_channel text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    job bigint;
    q text;
BEGIN
    -- Lock the run first: the order every writer of a run follows.
    PERFORM 1 FROM {{schema}}.durable_run WHERE id = p_run_id FOR UPDATE;
    UPDATE {{schema}}.durable_step SET
        status = p_status, output = p_output, error = p_error, wake_at = NULL, updated_at = now()
    WHERE run_id = p_run_id AND key = p_step AND status = 'waiting';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE {{schema}}.durable_run SET wake_at = NULL, updated_at = now()
    WHERE id = p_run_id AND status IN ('queued', 'running')
    RETURNING job_id INTO job;
    IF job IS NOT NULL THEN
        UPDATE {{schema}}.river_job SET state = 'available', scheduled_at = now()
        WHERE id = job AND state IN ('scheduled', 'retryable', 'available')
        RETURNING queue INTO q;
        IF q IS NOT NULL THEN
            PERFORM pg_notify(p_channel, json_build_object('queue', q)::text);
        END IF;
    END IF;
    RETURN true;
END;
$$;

-- durable_take_wait delivers an event to a wait, exactly once: the run,
-- then the wait, then the step are locked in that order, the order every
-- path follows (durable_claim_timeout too), so that a delivery and a
-- timeout racing for the same wait never deadlock.
CREATE FUNCTION {{schema}}.durable_take_wait(p_wait_id bigint, p_run_id text, p_output jsonb, p_channel text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    step text;
BEGIN
    PERFORM 1 FROM {{schema}}.durable_run WHERE id = p_run_id FOR UPDATE;
    DELETE FROM {{schema}}.durable_wait WHERE id = p_wait_id RETURNING step_key INTO step;
    IF NOT FOUND THEN
        RETURN false; -- another event, or the timeout, took it first
    END IF;
    RETURN {{schema}}.durable_deliver(p_run_id, step, 'completed', p_output, NULL, p_channel);
END;
$$;

-- durable_claim_timeout ends a waiting step whose timeout passed, unless
-- what it waited for was delivered first; it returns whether it did.
CREATE FUNCTION {{schema}}.durable_claim_timeout(p_run_id text, p_step text, p_error text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {{schema}}.durable_run WHERE id = p_run_id FOR UPDATE;
    DELETE FROM {{schema}}.durable_wait WHERE run_id = p_run_id AND step_key = p_step AND kind = 'wait';
    UPDATE {{schema}}.durable_step SET status = 'timed_out', error = p_error, wake_at = NULL, updated_at = now()
    WHERE run_id = p_run_id AND key = p_step AND status = 'waiting';
    RETURN FOUND;
END;
$$;

-- durable_end_run does what every end of a run entails, in the transaction
-- that ends it: it emits the system events (exactly once: their IDs derive
-- from the run's), hands a child's result to its waiting parent, and drops
-- the run's waits and cancellation listeners. It returns the number of
-- events emitted.
CREATE FUNCTION {{schema}}.durable_end_run(p_run_id text, p_status text, p_output jsonb, p_error text, p_channel text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    data jsonb;
    n integer;
BEGIN
    SELECT function_id, events, parent_run_id, parent_step INTO r
    FROM {{schema}}.durable_run WHERE id = p_run_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    -- (The event's trace context, kept in the run's events, is not data.)
    data := jsonb_build_object('function_id', r.function_id, 'run_id', p_run_id, 'event', (r.events -> 0) - 'trace');
    IF p_status = 'completed' THEN
        data := data || jsonb_build_object('result', coalesce(p_output, 'null'::jsonb));
    ELSE
        data := data || jsonb_build_object('error', coalesce(p_error, p_status));
    END IF;
    -- An event is stored (and routed right after, by any live process) only
    -- when something listens to it: a trigger, a wait or cancellation
    -- listener, or a name some WaitForEvent ever waited on (a wait being
    -- registered may need the event; the shared lock orders this check
    -- with the waiter's exclusive one, see durable_listened_name).
    PERFORM pg_advisory_xact_lock_shared(hashtext('{{schema}}'), hashtext('durable/function.' || e.suffix))
    FROM unnest(CASE p_status
        WHEN 'completed' THEN ARRAY['finished']
        WHEN 'failed' THEN ARRAY['failed', 'finished']
        ELSE ARRAY['cancelled'] END) AS e(suffix)
    ORDER BY e.suffix;
    INSERT INTO {{schema}}.durable_event (id, name, data, ts, routed)
    SELECT p_run_id || '/' || e.suffix, 'durable/function.' || e.suffix, data, now(), false
    FROM unnest(CASE p_status
        WHEN 'completed' THEN ARRAY['finished']
        WHEN 'failed' THEN ARRAY['failed', 'finished']
        ELSE ARRAY['cancelled'] END) AS e(suffix)
    WHERE EXISTS (SELECT 1 FROM {{schema}}.durable_function_trigger t WHERE t.event_name = 'durable/function.' || e.suffix)
       OR EXISTS (SELECT 1 FROM {{schema}}.durable_wait w WHERE w.event_name = 'durable/function.' || e.suffix)
       OR EXISTS (SELECT 1 FROM {{schema}}.durable_listened_name l WHERE l.name = 'durable/function.' || e.suffix)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;

    IF r.parent_run_id IS NOT NULL THEN
        IF p_status = 'completed' THEN
            PERFORM {{schema}}.durable_deliver(r.parent_run_id, r.parent_step, 'completed',
                coalesce(p_output, 'null'::jsonb), NULL, p_channel);
        ELSE
            PERFORM {{schema}}.durable_deliver(r.parent_run_id, r.parent_step, 'failed', NULL,
                'invoked run ' || p_run_id || ' ' || p_status || coalesce(': ' || p_error, ''), p_channel);
        END IF;
    END IF;

    DELETE FROM {{schema}}.durable_wait WHERE run_id = p_run_id;
    -- A cancelled run shows no step still sleeping, waiting or retrying.
    -- (A failed run's end does the same in its own statement, which also
    -- writes steps: see the Commit query.)
    IF p_status = 'cancelled' THEN
        UPDATE {{schema}}.durable_step SET status = 'cancelled', wake_at = NULL, updated_at = now()
        WHERE run_id = p_run_id AND status IN ('sleeping', 'waiting', 'retrying');
    END IF;
    RETURN n;
END;
$$;

-- Listing runs (Client.ListRuns, store/sql/list.sql): newest first, a page
-- at a time, by keyset on (created_at, id), with or without a function.
-- CancelCandidates reads the function's index backwards. Neither index
-- holds status, and no predicate mentions it (status changes must stay
-- HOT updates): a status filter is applied while scanning, bounded. The
-- cost: one index entry more per run created (durable_run_created_idx);
-- no column of either ever changes.
CREATE INDEX durable_run_created_idx ON {{schema}}.durable_run (created_at DESC, id DESC);
CREATE INDEX durable_run_function_created_idx ON {{schema}}.durable_run (function_id, created_at DESC, id DESC);

-- Retention (Config.Retention; internal/maintenance/retention.go, queries
-- in store/sql/retention.sql): every sweep reads index ranges in key
-- order, a bounded page at a time, never a sequential scan.
--
-- Ended runs by (ended_at, id). The cost, paid once per run: the update
-- that ends a run (Commit, CancelRun) sets ended_at, which this index
-- holds, so it is no longer a HOT update: it writes a new entry in each of
-- durable_run's indexes (instead of none) and leaves dead ones for vacuum.
-- Every update before the end (claims, suspensions, hand-backs) leaves
-- ended_at NULL and stays HOT-eligible, and a step's commit does not update
-- the run at all. The predicate keeps live runs out of the index. status
-- is not in it (nor in its predicate): the claim's queued -> running
-- change stays HOT.
CREATE INDEX durable_run_ended_idx ON {{schema}}.durable_run (ended_at, id)
    WHERE ended_at IS NOT NULL;
-- Events by (received_at, id): one more index entry per event stored (an
-- event's received_at changes only when a resent ID is accepted again,
-- which durable_event_name_received_idx already makes a non-HOT update).
CREATE INDEX durable_event_received_idx ON {{schema}}.durable_event (received_at, id);
-- Idempotency keys by expiry: one entry per key claimed (a claim of an
-- expired key rewrites expires_at: rare, once a day per key at most).
CREATE INDEX durable_idempotency_expires_idx ON {{schema}}.durable_idempotency (expires_at);
-- Cron ticks by time (written once per tick).
CREATE INDEX durable_cron_tick_tick_idx ON {{schema}}.durable_cron_tick (tick);
