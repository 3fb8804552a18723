-- Queries of the durable package. Each starts with "-- name: X"; {{schema}}
-- is replaced by the quoted schema name when the client is built.

-- name: UpsertFunction
INSERT INTO {{schema}}.durable_function (id, name, retries, config, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (id) DO UPDATE SET name = excluded.name, retries = excluded.retries, config = excluded.config, updated_at = now();

-- name: DeleteTriggers
DELETE FROM {{schema}}.durable_function_trigger WHERE function_id = $1;

-- name: InsertTriggers
INSERT INTO {{schema}}.durable_function_trigger (function_id, idx, event_name, if_expr, cron)
SELECT $1, t.idx, nullif(t.event_name, ''), t.if_expr, t.cron
FROM unnest($2::int[], $3::text[], $4::text[], $5::text[]) AS t(idx, event_name, if_expr, cron);

-- name: FunctionConfig
SELECT config FROM {{schema}}.durable_function WHERE id = $1;

-- name: InsertEvents
-- An event ID seen in the last 24 hours is a duplicate: the conflict makes
-- the row invisible to RETURNING, so only new events fan out to runs.
INSERT INTO {{schema}}.durable_event (id, name, data, ts)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
ON CONFLICT (id) DO UPDATE
    SET name = excluded.name, data = excluded.data, ts = excluded.ts, received_at = now(),
        xid = pg_current_xact_id(), routed = true
    WHERE durable_event.received_at < now() - interval '24 hours'
RETURNING id;

-- name: MatchTriggers
SELECT t.function_id, t.event_name, t.if_expr, f.config
FROM {{schema}}.durable_function_trigger t
JOIN {{schema}}.durable_function f ON f.id = t.function_id
WHERE t.event_name = ANY($1::text[])
ORDER BY t.function_id, t.idx;

-- name: ClaimIdempotencyKeys
-- One run per function per key per 24 hours: a key held by a run created
-- less than 24 hours ago makes the conflict invisible to RETURNING.
INSERT INTO {{schema}}.durable_idempotency (function_id, key, run_id, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
ON CONFLICT (function_id, key) DO UPDATE
    SET run_id = excluded.run_id, expires_at = excluded.expires_at
    WHERE durable_idempotency.expires_at < now()
RETURNING run_id;

-- name: InsertWaits
INSERT INTO {{schema}}.durable_wait (run_id, kind, step_key, event_name, match_path, match_value, if_expr, run_event, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[]);

-- name: InsertRuns
-- Runs and their River jobs in one statement (the job carries only the run
-- ID); the producers are told by NOTIFY, here when $14 (in the caller's
-- transaction, for SendTx) or after the commit (Send).
WITH j AS (
    INSERT INTO {{schema}}.river_job (args, kind, max_attempts, queue, state, scheduled_at)
    SELECT jsonb_build_object('run_id', r.id), $10, $11, $12, 'available', now()
    FROM unnest($1::text[]) AS r(id)
    RETURNING id, args ->> 'run_id' AS run_id
), ins AS (
    INSERT INTO {{schema}}.durable_run (id, function_id, status, event_id, event_ids, events, job_id,
        parent_run_id, parent_step, start_deadline, finish_timeout)
    SELECT r.id, r.function_id, 'queued', r.event_id, ARRAY[r.event_id], r.events, j.id,
        r.parent_run_id, r.parent_step, now() + r.start_timeout, r.finish_timeout
    FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[], $7::interval[], $8::interval[])
        AS r(id, function_id, event_id, events, parent_run_id, parent_step, start_timeout, finish_timeout)
    JOIN j ON j.run_id = r.id
    RETURNING 1
), n AS (
    SELECT pg_notify($13, $9) WHERE $14::boolean
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM n);

-- name: NotifyInsert
SELECT pg_notify($1, $2);

-- name: LoadRun
SELECT r.function_id, r.status, r.events, r.owner, r.epoch, r.fn_attempts, r.wake_at, r.error,
    r.start_deadline < now() AS start_expired, r.finish_deadline < now() AS finish_expired,
    coalesce(w.heartbeat_at > now() - make_interval(secs => $2::float8), false) AS owner_alive,
    r.log_lines,
    coalesce((
        SELECT json_agg(json_build_object(
            'key', s.key, 'seq', s.seq, 'kind', s.kind, 'status', s.status,
            'attempts', s.attempts, 'output', s.output, 'error', s.error, 'wake_at', s.wake_at)
            ORDER BY s.seq)
        FROM {{schema}}.durable_step s WHERE s.run_id = r.id), '[]'::json) AS steps
FROM {{schema}}.durable_run r
LEFT JOIN {{schema}}.durable_worker w ON w.id = split_part(r.owner, '|', 1)
WHERE r.id = $1;

-- name: Commit
-- The fenced write of an attempt's claim, suspension or end: checked and
-- bumped on the run's epoch, it records steps and moves the run; a
-- suspension ($18) also completes the attempt's River job, the run
-- continuing in a new job ($20) inserted in the same transaction; an end
-- does what ends entail (durable_end_run). One statement: one commit, or
-- part of a StepTx's.
WITH r AS (
    UPDATE {{schema}}.durable_run SET
        owner       = $2,
        epoch       = epoch + 1,
        status      = $4,
        output      = $5,
        error       = $6,
        fn_attempts = $7,
        wake_at     = $8,
        job_id      = coalesce($20, job_id),
        started_at  = coalesce(started_at, now()),
        start_deadline = NULL,
        finish_deadline = CASE WHEN $4 IN ('completed', 'failed', 'cancelled') THEN NULL
            ELSE coalesce(finish_deadline, now() + finish_timeout) END,
        ended_at    = CASE WHEN $4 IN ('completed', 'failed', 'cancelled') THEN now() END,
        log_lines   = greatest(log_lines, $22),
        updated_at  = now()
    WHERE id = $1 AND epoch = $3 AND status IN ('queued', 'running')
    RETURNING id
), x AS (
    -- A failed run shows no step still sleeping, waiting or retrying (the
    -- steps this statement writes are left to s).
    UPDATE {{schema}}.durable_step SET status = 'cancelled', wake_at = NULL, updated_at = now()
    FROM r
    WHERE $4 = 'failed' AND durable_step.run_id = r.id AND durable_step.status IN ('sleeping', 'waiting', 'retrying')
      AND durable_step.key <> ALL($9::text[])
    RETURNING 1
), s AS (
    INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id)
    SELECT r.id, u.key, u.seq, u.kind, u.status, u.attempts, u.output, u.error, u.wake_at, u.child
    FROM r, unnest($9::text[], $10::int[], $11::text[], $12::text[], $13::int[], $14::jsonb[], $15::text[], $16::timestamptz[], $21::text[])
        AS u(key, seq, kind, status, attempts, output, error, wake_at, child)
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, output = excluded.output,
        error = excluded.error, wake_at = excluded.wake_at, child_run_id = coalesce(excluded.child_run_id, st.child_run_id),
        updated_at = now()
    RETURNING 1
), j AS (
    UPDATE {{schema}}.river_job SET state = 'completed', finalized_at = now()
    WHERE id = $17 AND $18::boolean AND EXISTS (SELECT 1 FROM r)
    RETURNING 1
), e AS (
    SELECT {{schema}}.durable_end_run(r.id, $4, $5, $6, $19) AS events
    FROM r WHERE $4 IN ('completed', 'failed')
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM j), (SELECT coalesce(sum(events), 0) FROM e);

-- name: EventsSince
-- Events of a name committed after the snapshot $2 was taken (when a wait
-- began): still in progress then, or begun later. received_at only bounds
-- the index scan (a sending transaction open for more than an hour before
-- the wait began would be missed). One page of at most $6 events, those
-- after the key ($4, $5) in (received_at, id) order: the caller pages on
-- from the last one it got (the plain received_at >= $4 starts the index
-- range there).
SELECT id, name, data, ts, received_at FROM {{schema}}.durable_event
WHERE name = $1 AND received_at > $3::timestamptz - interval '1 hour'
  AND received_at >= $4::timestamptz AND (received_at, id) > ($4::timestamptz, $5::text)
  AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
ORDER BY received_at, id
LIMIT $6;

-- name: ListenName
INSERT INTO {{schema}}.durable_listened_name (name) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: WaitBegins
SELECT pg_current_snapshot()::text, now();

-- name: LockEventName
SELECT pg_advisory_xact_lock(hashtext($1 || ':' || n)) FROM unnest($2::text[]) AS n ORDER BY n;

-- name: LockEventNameShared
SELECT pg_advisory_xact_lock_shared(hashtext($1 || ':' || n)) FROM unnest($2::text[]) AS n ORDER BY n;

-- name: ClaimTimeout
-- A waiting step whose timeout passed ends as timed out, unless an event
-- or a child's result was delivered first (then nothing changes).
SELECT {{schema}}.durable_claim_timeout($1, $2, $3);

-- name: GetStep
SELECT status, output, error, attempts FROM {{schema}}.durable_step WHERE run_id = $1 AND key = $2;

-- name: MatchWaits
-- Candidate waits and cancellation listeners of an event: by index when
-- they store an equality key, else by name; the caller evaluates each
-- condition fully.
SELECT w.id, w.run_id, w.kind, w.step_key, w.if_expr, w.run_event
FROM {{schema}}.durable_wait w
JOIN unnest($2::text[], $3::text[]) AS k(path, value) ON w.match_path = k.path AND w.match_value = k.value
WHERE w.event_name = $1 AND (w.expires_at IS NULL OR w.expires_at > now())
UNION ALL
SELECT w.id, w.run_id, w.kind, w.step_key, w.if_expr, w.run_event
FROM {{schema}}.durable_wait w
WHERE w.event_name = $1 AND w.match_path IS NULL AND (w.expires_at IS NULL OR w.expires_at > now());

-- name: TakeWait
SELECT {{schema}}.durable_take_wait($1, $2, $3, $4);

-- name: ExpiredRuns
SELECT id, CASE WHEN status = 'queued' AND start_deadline < now() THEN 'start' ELSE 'finish' END
FROM {{schema}}.durable_run
WHERE status IN ('queued', 'running')
  AND ((start_deadline < now() AND status = 'queued'
        -- a first attempt in progress has started, though it records so
        -- only at its first step boundary
        AND NOT EXISTS (SELECT 1 FROM {{schema}}.river_job j WHERE j.id = job_id AND j.state = 'running'))
       OR finish_deadline < now())
LIMIT $1;

-- name: LockRun
SELECT 1 FROM {{schema}}.durable_run WHERE id = $1 FOR UPDATE;

-- name: DeliveredSince
-- Which of the steps this attempt found waiting got their event or child
-- result meanwhile (the run row is locked by the caller).
SELECT count(*) FROM {{schema}}.durable_step
WHERE run_id = $1 AND key = ANY($2::text[]) AND status <> 'waiting';

-- name: CancelCandidates
-- One page of at most $6 live runs of a function, those after the key
-- ($4, $5) in (created_at, id) order (runs created in one transaction
-- share created_at): the caller pages on from the last one it got.
SELECT id, events -> 0, created_at FROM {{schema}}.durable_run
WHERE function_id = $1 AND status IN ('queued', 'running')
  AND ($2::timestamptz IS NULL OR created_at > $2)
  AND ($3::timestamptz IS NULL OR created_at < $3)
  AND created_at >= $4::timestamptz AND (created_at, id) > ($4::timestamptz, $5::text)
ORDER BY created_at, id
LIMIT $6;

-- name: ClaimCronTick
INSERT INTO {{schema}}.durable_cron_tick (function_id, tick, run_id) VALUES ($1, $2, '')
ON CONFLICT DO NOTHING;

-- name: SetCronTickRun
UPDATE {{schema}}.durable_cron_tick SET run_id = $3 WHERE function_id = $1 AND tick = $2;

-- name: CommitStep
-- CommitSteps for the usual single step, with plain parameters and no CTE
-- (cheaper to plan): no row comes back when the fence fails.
INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id)
SELECT r.id, $3, $4, $5, $6, $7, $8, $9, $10, $11
FROM {{schema}}.durable_run r
WHERE r.id = $1 AND r.owner = $2 AND r.status = 'running'
FOR SHARE
ON CONFLICT (run_id, key) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, child_run_id = coalesce(excluded.child_run_id, st.child_run_id),
    updated_at = now()
RETURNING 1, 1;

-- name: CommitSteps
-- The hot path: steps finished mid-attempt, once the attempt owns the run.
-- The run row is only locked (FOR SHARE conflicts with a takeover's or a
-- cancellation's update, and re-checks owner and status after waiting), not
-- rewritten: one index entry and a row lock per step instead of a new run
-- row version.
WITH r AS (
    SELECT id FROM {{schema}}.durable_run
    WHERE id = $1 AND owner = $2 AND status = 'running'
    FOR SHARE
), s AS (
    INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id)
    SELECT r.id, u.key, u.seq, u.kind, u.status, u.attempts, u.output, u.error, u.wake_at, u.child
    FROM r, unnest($3::text[], $4::int[], $5::text[], $6::text[], $7::int[], $8::jsonb[], $9::text[], $10::timestamptz[], $11::text[])
        AS u(key, seq, kind, status, attempts, output, error, wake_at, child)
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, output = excluded.output,
        error = excluded.error, wake_at = excluded.wake_at, child_run_id = coalesce(excluded.child_run_id, st.child_run_id),
        updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM s);

-- name: RunStatus
SELECT status, owner FROM {{schema}}.durable_run WHERE id = $1;

-- name: CancelRun
WITH r AS (
    UPDATE {{schema}}.durable_run
    SET status = 'cancelled', error = $2, ended_at = now(), updated_at = now(), owner = NULL, wake_at = NULL,
        start_deadline = NULL, finish_deadline = NULL
    WHERE id = $1 AND status IN ('queued', 'running')
    RETURNING id, job_id
)
SELECT r.job_id, {{schema}}.durable_end_run(r.id, 'cancelled', NULL, $2, $3) FROM r;

-- name: UnroutedEvents
SELECT id, name, data, ts FROM {{schema}}.durable_event
WHERE NOT routed
ORDER BY received_at
LIMIT 100
FOR UPDATE SKIP LOCKED;

-- name: MarkRouted
UPDATE {{schema}}.durable_event SET routed = true WHERE id = ANY($1::text[]);

-- name: RunExists
SELECT EXISTS (SELECT 1 FROM {{schema}}.durable_run WHERE id = $1);

-- name: GetRun
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at,
    coalesce(parent_run_id, '')
FROM {{schema}}.durable_run WHERE id = $1;

-- name: GetSteps
SELECT key, kind, status, attempts, output, coalesce(error, ''), coalesce(child_run_id, '')
FROM {{schema}}.durable_step WHERE run_id = $1 ORDER BY seq;

-- name: RunsForEvent
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at,
    coalesce(parent_run_id, '')
FROM {{schema}}.durable_run WHERE event_id = $1 ORDER BY created_at, id;

-- name: Heartbeat
INSERT INTO {{schema}}.durable_worker (id, hostname, pid, heartbeat_at)
SELECT w.id, $2, $3, now() FROM unnest($1::text[]) AS w(id)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: DeleteWorker
DELETE FROM {{schema}}.durable_worker WHERE id = ANY($1::text[]);

-- name: PruneWorkers
DELETE FROM {{schema}}.durable_worker WHERE heartbeat_at < now() - interval '1 day';

-- name: Rescue
-- Jobs left running by a process whose heartbeat stopped more than
-- RecoverAfter ago (or that never had one) go back to the queue. A live
-- process's job is never taken, however long its step runs.
WITH dead AS (
    SELECT j.id
    FROM {{schema}}.river_job j
    WHERE j.state = 'running' AND j.kind = $2
        AND NOT EXISTS (
            SELECT 1 FROM {{schema}}.durable_worker w
            WHERE w.id = j.attempted_by[array_length(j.attempted_by, 1)]
                AND w.heartbeat_at > now() - make_interval(secs => $1::float8))
        -- A process that stopped removed its heartbeat: its jobs need not
        -- wait out RecoverAfter (the few seconds cover a process that just
        -- fetched a job and is registering its heartbeat).
        AND (j.attempted_at < now() - make_interval(secs => $1::float8)
            OR (j.attempted_at < now() - interval '5 seconds' AND NOT EXISTS (
                SELECT 1 FROM {{schema}}.durable_worker w
                WHERE w.id = j.attempted_by[array_length(j.attempted_by, 1)])))
    FOR UPDATE OF j SKIP LOCKED
), upd AS (
    UPDATE {{schema}}.river_job j SET state = 'available', scheduled_at = now()
    FROM dead WHERE j.id = dead.id
    RETURNING j.id, j.queue
), n AS (
    SELECT pg_notify($3, json_build_object('queue', q.queue)::text)
    FROM (SELECT DISTINCT queue FROM upd) q
)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n);

-- name: Wake
-- Makes scheduled jobs that are due available and tells the producers
-- (when any is due, or when $4 forces it), instead of waiting for River's
-- scheduler (every 5 s) or a producer's poll; returns the next due time if
-- it is within $5 seconds (the caller looks again by then anyway).
-- Every part reads an index range, never the jobs scheduled far ahead (an
-- Invoke without timeout waits ten years) nor a backlog of available ones:
-- scheduled jobs by durable_river_job_scheduled_idx; available jobs due
-- later (River makes a short snooze available at once, due at its end) by
-- River's fetching index, one range per priority (River allows 1 to 4);
-- the jobs made available by primary key.
WITH due AS (
    SELECT id FROM {{schema}}.river_job
    WHERE state = 'scheduled' AND queue = $1 AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), upd AS (
    -- By primary key: a join with due is planned as a hash join over a
    -- sequential scan of river_job.
    UPDATE {{schema}}.river_job j SET state = 'available'
    WHERE j.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING j.id
), n AS (
    SELECT pg_notify($2, $3) WHERE EXISTS (SELECT 1 FROM upd) OR $4::boolean
)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n),
    least(
        (SELECT min(scheduled_at) FROM {{schema}}.river_job
         WHERE state = 'scheduled' AND queue = $1
           AND scheduled_at > now() AND scheduled_at <= now() + make_interval(secs => $5::float8)),
        (SELECT min(scheduled_at) FROM {{schema}}.river_job
         WHERE state = 'available' AND queue = $1 AND priority IN (1, 2, 3, 4)
           AND scheduled_at > now() AND scheduled_at <= now() + make_interval(secs => $5::float8)));

-- name: ClaimRun
-- An attempt takes the run before calling the function: from then on the
-- run shows as running (with its start time), and every write of the
-- attempt is fenced on its owner token.
UPDATE {{schema}}.durable_run SET
    owner = $2, epoch = epoch + 1, status = 'running',
    started_at = coalesce(started_at, now()), start_deadline = NULL,
    finish_deadline = coalesce(finish_deadline, now() + finish_timeout),
    updated_at = now()
WHERE id = $1 AND epoch = $3 AND status IN ('queued', 'running');

-- name: CheckJSON
-- Whether Postgres stores a step's output as jsonb (it refuses \u0000, say):
-- finds which step of a refused commit is to blame.
SELECT 1 FROM (SELECT $1::jsonb) AS x;
