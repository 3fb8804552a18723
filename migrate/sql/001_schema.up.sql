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
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'skipped')),
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
    -- Flow control: the run's concurrency slots go to the runs waiting for
    -- them, and it stops waiting for any (two index probes when it holds
    -- and waits for none, as most runs).
    IF EXISTS (SELECT 1 FROM {{schema}}.durable_slot WHERE run_id = p_run_id)
       OR EXISTS (SELECT 1 FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id) THEN
        PERFORM {{schema}}.durable_release(p_run_id, p_channel);
    END IF;
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

-- Flow control (FunctionOpts Concurrency, Throttle, RateLimit, Debounce,
-- Batch, Singleton; internal/executor/gate.go and internal/router/flow.go).
--
-- A gate is a named limit an attempt must pass before it runs:
-- 'c:<function>:<key>' (Concurrency, per function), 's:<key>' (Concurrency,
-- ScopeShared), 't:<function>:<key>' (Throttle). Each gate's decisions are
-- made under a transaction-level advisory lock on its name (two keys:
-- hashtext of the quoted schema || '/gate', hashtext of the gate). Lock
-- order, everywhere: the run row, then gate locks in gate-name order, then
-- durable_slot / durable_gate_wait rows, then river_job rows. Promotion
-- never locks another run's row (only its River job).
--
-- A concurrency slot held by an executing attempt (worker set) or reserved
-- for a promoted run whose attempt has not started yet (worker NULL). A
-- slot counts while its worker's heartbeat is younger than recover_secs
-- (the holder's Config.RecoverAfter), a reservation for recover_secs after
-- it was made: a dead process's slots lapse by themselves, and the
-- maintenance loop (durable_reap_slots) hands them to waiters.
CREATE TABLE {{schema}}.durable_slot (
    gate         text NOT NULL,
    run_id       text NOT NULL,
    worker       text,
    recover_secs float8 NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gate, run_id)
);
CREATE INDEX durable_slot_run_idx ON {{schema}}.durable_slot (run_id);

-- Runs waiting at a gate, in start order: order_at is the run's creation
-- time minus its Priority. lim is the waiting function's own limit
-- (ScopeShared gates are shared by functions with different limits); 0 for
-- a throttle gate. A waiting run's River job is scheduled far ahead (a
-- concurrency gate's promotion makes it available) or at its estimated
-- turn (a throttle gate's).
CREATE TABLE {{schema}}.durable_gate_wait (
    gate         text NOT NULL,
    run_id       text NOT NULL,
    order_at     timestamptz NOT NULL,
    lim          integer NOT NULL,
    recover_secs float8 NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gate, run_id)
);
CREATE INDEX durable_gate_wait_order_idx ON {{schema}}.durable_gate_wait (gate, order_at, run_id);
CREATE INDEX durable_gate_wait_run_idx ON {{schema}}.durable_gate_wait (run_id);

-- GCRA state of Throttle gates ('t:...') and RateLimit keys ('r:...'): the
-- theoretical arrival time of the next admission.
CREATE TABLE {{schema}}.durable_gcra (
    gate       text PRIMARY KEY,
    tat        timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Singleton: the run that last took each key; a newcomer finds it under
-- this row's lock and skips or cancels it while it is active.
CREATE TABLE {{schema}}.durable_singleton (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      text NOT NULL,
    PRIMARY KEY (function_id, key)
);

-- Debounce and Batch: the queued run collecting each key's events. An
-- event locks this row, then appends to the run only while it is still
-- queued (the claim that starts it moves it to running under its row
-- lock): an event is in exactly one run, whatever crashes.
CREATE TABLE {{schema}}.durable_collect (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      text NOT NULL,
    first_at    timestamptz NOT NULL DEFAULT now(),
    size        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (function_id, key)
);

-- Events folded into a run after its first (Debounce, Batch), for
-- RunsForEvent and to keep them from being pruned while the run lives.
CREATE TABLE {{schema}}.durable_run_event (
    event_id text NOT NULL,
    run_id   text NOT NULL REFERENCES {{schema}}.durable_run (id) ON DELETE CASCADE,
    PRIMARY KEY (event_id, run_id)
);
CREATE INDEX durable_run_event_run_idx ON {{schema}}.durable_run_event (run_id);

-- durable_slot_live: whether a slot still counts.
CREATE FUNCTION {{schema}}.durable_slot_live(p_worker text, p_acquired timestamptz, p_recover float8)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_worker IS NULL THEN p_acquired > now() - make_interval(secs => p_recover)
        ELSE EXISTS (SELECT 1 FROM {{schema}}.durable_worker w
                     WHERE w.id = p_worker AND w.heartbeat_at > now() - make_interval(secs => p_recover)) END
$$;

-- durable_gate_lock takes the advisory locks of gates, in name order.
CREATE FUNCTION {{schema}}.durable_gate_lock(p_gates text[])
RETURNS void LANGUAGE sql AS $$
    SELECT count(pg_advisory_xact_lock(hashtext('{{schema}}' || '/gate'), hashtext(g)))
    FROM (SELECT DISTINCT g FROM unnest(p_gates) AS g ORDER BY g) x;
$$;

-- durable_promote hands free slots of a concurrency gate to its waiting
-- runs, oldest (by order_at) first: each gets a reservation and its job is
-- made available, the producers told. The caller holds the gate's lock.
-- Returns how many it promoted.
CREATE FUNCTION {{schema}}.durable_promote(p_gate text, p_channel text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    w record;
    n integer := 0;
    q text;
BEGIN
    LOOP
        SELECT gw.run_id, gw.order_at, gw.lim, gw.recover_secs INTO w FROM {{schema}}.durable_gate_wait gw
        WHERE gw.gate = p_gate ORDER BY gw.order_at, gw.run_id LIMIT 1;
        EXIT WHEN NOT FOUND OR w.lim = 0;
        EXIT WHEN NOT {{schema}}.durable_gate_fits(p_gate, w.run_id, w.order_at, w.lim);
        DELETE FROM {{schema}}.durable_gate_wait WHERE gate = p_gate AND run_id = w.run_id;
        INSERT INTO {{schema}}.durable_slot (gate, run_id, worker, recover_secs)
        VALUES (p_gate, w.run_id, NULL, w.recover_secs)
        ON CONFLICT (gate, run_id) DO UPDATE SET worker = NULL, acquired_at = now();
        q := NULL;
        UPDATE {{schema}}.river_job SET state = 'available', scheduled_at = now()
        WHERE id = (SELECT job_id FROM {{schema}}.durable_run WHERE id = w.run_id)
          AND state IN ('scheduled', 'retryable', 'available')
        RETURNING queue INTO q;
        IF q IS NOT NULL THEN
            PERFORM pg_notify(p_channel, json_build_object('queue', q)::text);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- durable_release gives back a run's slots and takes it out of every gate
-- queue (its attempt ended, or the run did), promoting the runs waiting
-- at those gates. The caller holds the run's row lock.
CREATE FUNCTION {{schema}}.durable_release(p_run_id text, p_channel text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    gates text[];
    g text;
    n integer := 0;
BEGIN
    SELECT array_agg(DISTINCT x.gate ORDER BY x.gate) INTO gates FROM (
        SELECT gate FROM {{schema}}.durable_slot WHERE run_id = p_run_id
        UNION ALL SELECT gate FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id) x;
    IF gates IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM {{schema}}.durable_gate_lock(gates);
    DELETE FROM {{schema}}.durable_slot WHERE run_id = p_run_id;
    DELETE FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id;
    FOREACH g IN ARRAY gates LOOP
        n := n + {{schema}}.durable_promote(g, p_channel);
    END LOOP;
    RETURN n;
END;
$$;

-- durable_gate_fits: whether a run (ordered at p_order) may take a slot at
-- a concurrency gate: fewer live slots than p_limit, and no other run
-- waiting there before it. The caller holds the gate's lock.
CREATE FUNCTION {{schema}}.durable_gate_fits(p_gate text, p_run_id text, p_order timestamptz, p_limit integer)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM {{schema}}.durable_slot s
            WHERE s.gate = p_gate AND {{schema}}.durable_slot_live(s.worker, s.acquired_at, s.recover_secs)) < p_limit
       AND NOT EXISTS (SELECT 1 FROM {{schema}}.durable_gate_wait w
            WHERE w.gate = p_gate AND w.run_id <> p_run_id AND (w.order_at, w.run_id) < (p_order, p_run_id))
$$;

-- durable_throttle_take admits a run's first start at a throttle gate
-- (GCRA: emission interval p_emission, p_burst more after an idle spell)
-- when no other run waits there before it: NULL, the gate's next admission
-- time advanced. Otherwise it returns the run's estimated turn: the next
-- admission, one emission interval later per run waiting before it (woken
-- early, because a run ahead was late, it waits again). The caller holds
-- the gate's lock.
CREATE FUNCTION {{schema}}.durable_throttle_take(p_gate text, p_run_id text, p_order timestamptz,
    p_emission interval, p_burst integer)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    v_tat timestamptz;
    tau interval := p_emission * p_burst;
    ahead integer;
BEGIN
    SELECT d.tat INTO v_tat FROM {{schema}}.durable_gcra d WHERE d.gate = p_gate FOR UPDATE;
    IF NOT FOUND THEN
        v_tat := now();
        INSERT INTO {{schema}}.durable_gcra (gate, tat) VALUES (p_gate, v_tat);
    END IF;
    SELECT count(*) INTO ahead FROM {{schema}}.durable_gate_wait w
    WHERE w.gate = p_gate AND w.run_id <> p_run_id AND (w.order_at, w.run_id) < (p_order, p_run_id);
    IF ahead = 0 AND v_tat - tau <= now() THEN
        UPDATE {{schema}}.durable_gcra d SET tat = greatest(d.tat, now()) + p_emission, updated_at = now()
        WHERE d.gate = p_gate;
        RETURN NULL;
    END IF;
    RETURN greatest(v_tat - tau, now()) + p_emission * ahead;
END;
$$;

-- durable_gate_join puts a new run in a gate's queue, its River job due at
-- p_due (far ahead for a concurrency gate, whose promotion makes it
-- available; its turn at a throttle gate).
CREATE FUNCTION {{schema}}.durable_gate_join(p_gate text, p_run_id text, p_order timestamptz, p_limit integer,
    p_recover float8, p_due timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO {{schema}}.durable_gate_wait (gate, run_id, order_at, lim, recover_secs)
    VALUES (p_gate, p_run_id, p_order, p_limit, p_recover);
    UPDATE {{schema}}.river_job SET state = 'scheduled', scheduled_at = p_due
    WHERE id = (SELECT job_id FROM {{schema}}.durable_run WHERE id = p_run_id);
$$;

-- durable_admit decides whether an attempt of a run may start: it must fit
-- every concurrency gate (p_gates, with the function's p_limits) and, on
-- the run's first start, its throttle gate (p_throttle, GCRA with emission
-- interval p_emission and p_burst extra). Admitted: the run holds a slot at
-- each concurrency gate (taken, or the reservation its promotion made) and
-- the result is NULL. Not admitted: the run holds no slot, waits at the
-- gate that refused it, and the result is when its continuation job is
-- due: now when a promotion already took it, its turn at a throttle, else
-- ten years ahead (a promotion makes the job available).
-- Locks: the run row, then the gates (durable_gate_lock).
CREATE FUNCTION {{schema}}.durable_admit(p_run_id text, p_worker text, p_gates text[], p_limits integer[],
    p_priority integer, p_throttle text, p_emission interval, p_burst integer, p_recover float8, p_channel text)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_order timestamptz;
    i integer;
    g text;
    refused text;
    refused_lim integer;
    turn timestamptz;
    due timestamptz := now() + interval '10 years';
BEGIN
    SELECT created_at, started_at INTO r FROM {{schema}}.durable_run WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_order := r.created_at - make_interval(secs => p_priority);
    -- A slot reserved for the run (by its creation or a promotion, or kept
    -- from an attempt that ended without handing it back) is taken without
    -- the gate's lock: the gate's count does not change. Only the gates
    -- where the run holds nothing (and the throttle) are locked.
    UPDATE {{schema}}.durable_slot SET worker = p_worker, recover_secs = p_recover, acquired_at = now()
    WHERE run_id = p_run_id AND gate = ANY (p_gates);
    PERFORM {{schema}}.durable_gate_lock(ARRAY(
        SELECT x.name FROM unnest(p_gates) AS x(name)
        WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.durable_slot s WHERE s.gate = x.name AND s.run_id = p_run_id)) || p_throttle);
    FOR i IN 1 .. coalesce(cardinality(p_gates), 0) LOOP
        g := p_gates[i];
        IF EXISTS (SELECT 1 FROM {{schema}}.durable_slot WHERE gate = g AND run_id = p_run_id) THEN
            CONTINUE;
        END IF;
        IF NOT {{schema}}.durable_gate_fits(g, p_run_id, v_order, p_limits[i]) THEN
            refused := g;
            refused_lim := p_limits[i];
            EXIT;
        END IF;
        INSERT INTO {{schema}}.durable_slot (gate, run_id, worker, recover_secs) VALUES (g, p_run_id, p_worker, p_recover);
    END LOOP;
    IF refused IS NULL AND p_throttle IS NOT NULL AND r.started_at IS NULL
       AND EXISTS (SELECT 1 FROM {{schema}}.durable_slot WHERE gate = p_throttle AND run_id = p_run_id) THEN
        -- Passed the throttle when it was created (durable_enqueue).
        DELETE FROM {{schema}}.durable_slot WHERE gate = p_throttle AND run_id = p_run_id;
    ELSIF refused IS NULL AND p_throttle IS NOT NULL AND r.started_at IS NULL THEN
        turn := {{schema}}.durable_throttle_take(p_throttle, p_run_id, v_order, p_emission, p_burst);
        IF turn IS NOT NULL THEN
            refused := p_throttle;
            refused_lim := 0;
            due := turn;
        END IF;
    END IF;
    IF refused IS NULL THEN
        DELETE FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id;
        RETURN NULL;
    END IF;
    -- Refused: hold nothing while waiting (no slot kept at one gate while
    -- waiting at another), and wait at the gate that refused.
    DELETE FROM {{schema}}.durable_slot WHERE run_id = p_run_id;
    DELETE FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id;
    INSERT INTO {{schema}}.durable_gate_wait (gate, run_id, order_at, lim, recover_secs)
    VALUES (refused, p_run_id, v_order, refused_lim, p_recover);
    FOREACH g IN ARRAY coalesce(p_gates, '{}') LOOP
        -- Slots this run gave back, or free slots a lapsed holder left,
        -- go to the runs waiting (maybe this one: then it goes on now).
        PERFORM {{schema}}.durable_promote(g, p_channel);
    END LOOP;
    IF refused_lim > 0 AND NOT EXISTS (SELECT 1 FROM {{schema}}.durable_gate_wait WHERE run_id = p_run_id) THEN
        due := now();
    END IF;
    RETURN due;
END;
$$;

-- durable_enqueue decides, in the transaction that creates a run of a
-- function with Concurrency or Throttle, whether it may start at once:
-- then it holds a reservation at each concurrency gate, and a pass of its
-- throttle gate (a durable_slot row of that gate, which durable_admit
-- consumes instead of a second admission), and its job stays available.
-- Else it waits: at the first concurrency gate that is full (or has runs
-- waiting before it), its job scheduled far ahead for a promotion to make
-- available; or at its throttle gate, its job scheduled at its estimated
-- turn (the next admission, one emission interval later per run waiting
-- before it). At most Limit jobs of a concurrency gate are ever
-- available, and throttled jobs wake in turn: a backlog never makes
-- attempts that would only wait. Returns whether it may start.
-- Locks: the gates (the run is new: no other transaction sees it).
CREATE FUNCTION {{schema}}.durable_enqueue(p_run_id text, p_gates text[], p_limits integer[], p_priority integer,
    p_recover float8, p_throttle text, p_emission interval, p_burst integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_order timestamptz;
    i integer;
    g text;
    turn timestamptz;
BEGIN
    SELECT created_at - make_interval(secs => p_priority) INTO v_order FROM {{schema}}.durable_run WHERE id = p_run_id;
    PERFORM {{schema}}.durable_gate_lock(p_gates || p_throttle);
    FOR i IN 1 .. coalesce(cardinality(p_gates), 0) LOOP
        g := p_gates[i];
        IF NOT {{schema}}.durable_gate_fits(g, p_run_id, v_order, p_limits[i]) THEN
            DELETE FROM {{schema}}.durable_slot WHERE run_id = p_run_id;
            PERFORM {{schema}}.durable_gate_join(g, p_run_id, v_order, p_limits[i], p_recover, now() + interval '10 years');
            RETURN false;
        END IF;
        INSERT INTO {{schema}}.durable_slot (gate, run_id, worker, recover_secs) VALUES (g, p_run_id, NULL, p_recover);
    END LOOP;
    IF p_throttle IS NOT NULL THEN
        turn := {{schema}}.durable_throttle_take(p_throttle, p_run_id, v_order, p_emission, p_burst);
        IF turn IS NULL THEN
            INSERT INTO {{schema}}.durable_slot (gate, run_id, worker, recover_secs) VALUES (p_throttle, p_run_id, NULL, p_recover);
            RETURN true;
        END IF;
        DELETE FROM {{schema}}.durable_slot WHERE run_id = p_run_id;
        PERFORM {{schema}}.durable_gate_join(p_throttle, p_run_id, v_order, 0, p_recover, turn);
        RETURN false;
    END IF;
    RETURN true;
END;
$$;

-- durable_enqueue_many passes the gates of a transaction's new runs
-- (durable_enqueue for each). A gate where runs are already waiting is a
-- backlog: a new run joins its queue without taking the gate's lock (it
-- would wait behind them whatever the count), so senders do not serialize
-- with the attempts that end and hand their slots on. If the last slot
-- frees between this read and the commit, the maintenance loop promotes
-- the run within a second (durable_reap_slots). The other gates are locked
-- first, all of them, in name order. $2 holds each run's concurrency gates
-- joined by chr(31), $3 their limits joined by commas. Returns how many
-- runs may start at once.
CREATE FUNCTION {{schema}}.durable_enqueue_many(p_ids text[], p_gates text[], p_limits text[], p_priorities integer[],
    p_recover float8, p_throttles text[], p_emissions interval[], p_bursts integer[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    all_gates text[];
    backlog text[];
    i integer;
    gs text[];
    ls integer[];
    b integer;
    v_order timestamptz;
    n integer := 0;
BEGIN
    SELECT coalesce(array_agg(DISTINCT g), '{}') INTO all_gates
    FROM unnest(p_gates) AS x(joined), unnest(string_to_array(x.joined, chr(31))) AS g;
    SELECT coalesce(array_agg(g), '{}') INTO backlog FROM unnest(all_gates) AS g
    WHERE EXISTS (SELECT 1 FROM {{schema}}.durable_gate_wait w WHERE w.gate = g);
    PERFORM {{schema}}.durable_gate_lock(
        ARRAY(SELECT g FROM unnest(all_gates) AS g WHERE g <> ALL (backlog))
        || ARRAY(SELECT t FROM unnest(p_throttles) AS t WHERE t IS NOT NULL));
    FOR i IN 1 .. cardinality(p_ids) LOOP
        gs := string_to_array(p_gates[i], chr(31));
        ls := string_to_array(p_limits[i], ',')::integer[];
        b := NULL;
        FOR j IN 1 .. coalesce(cardinality(gs), 0) LOOP
            IF gs[j] = ANY (backlog) THEN
                b := j;
                EXIT;
            END IF;
        END LOOP;
        IF b IS NOT NULL THEN
            SELECT created_at - make_interval(secs => p_priorities[i]) INTO v_order
            FROM {{schema}}.durable_run WHERE id = p_ids[i];
            PERFORM {{schema}}.durable_gate_join(gs[b], p_ids[i], v_order, ls[b], p_recover, now() + interval '10 years');
            CONTINUE;
        END IF;
        IF {{schema}}.durable_enqueue(p_ids[i], gs, ls, p_priorities[i], p_recover, p_throttles[i], p_emissions[i], p_bursts[i]) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END;
$$;

-- durable_reap_slots hands the slots of dead processes (and lapsed
-- reservations) to the runs waiting for them: the maintenance loop calls
-- it every second. Returns how many runs it promoted.
CREATE FUNCTION {{schema}}.durable_reap_slots(p_channel text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    g text;
    n integer := 0;
BEGIN
    -- Gates holding a lapsed slot, and gates whose first waiting run would
    -- fit (a run that joined the queue without the gate's lock, see
    -- durable_enqueue_many, just after the last slot freed): read without
    -- locks, then each is locked and promoted.
    FOR g IN
        SELECT DISTINCT s.gate FROM {{schema}}.durable_slot s
        WHERE NOT {{schema}}.durable_slot_live(s.worker, s.acquired_at, s.recover_secs)
        UNION
        -- One index probe per gate with a queue (a loose scan of
        -- durable_gate_wait_order_idx), not a read of every waiting run.
        SELECT h.gate FROM (
            WITH RECURSIVE q(gate) AS (
                SELECT min(gate) FROM {{schema}}.durable_gate_wait
                UNION ALL
                SELECT (SELECT min(w.gate) FROM {{schema}}.durable_gate_wait w WHERE w.gate > q.gate)
                FROM q WHERE q.gate IS NOT NULL
            )
            SELECT q.gate, f.run_id, f.order_at, f.lim
            FROM q, LATERAL (SELECT w.run_id, w.order_at, w.lim FROM {{schema}}.durable_gate_wait w
                             WHERE w.gate = q.gate ORDER BY w.order_at, w.run_id LIMIT 1) f
            WHERE q.gate IS NOT NULL
        ) h
        WHERE h.lim > 0 AND {{schema}}.durable_gate_fits(h.gate, h.run_id, h.order_at, h.lim)
        ORDER BY 1 LIMIT 1000
    LOOP
        PERFORM {{schema}}.durable_gate_lock(ARRAY[g]);
        DELETE FROM {{schema}}.durable_slot s
        WHERE s.gate = g AND NOT {{schema}}.durable_slot_live(s.worker, s.acquired_at, s.recover_secs);
        n := n + {{schema}}.durable_promote(g, p_channel);
    END LOOP;
    RETURN n;
END;
$$;
