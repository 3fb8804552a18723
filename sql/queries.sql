-- Queries of the durable package. Each starts with "-- name: X"; {{schema}}
-- is replaced by the quoted schema name when the client is built.

-- name: UpsertFunction
INSERT INTO {{schema}}.durable_function (id, name, retries, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (id) DO UPDATE SET name = excluded.name, retries = excluded.retries, updated_at = now();

-- name: DeleteTriggers
DELETE FROM {{schema}}.durable_function_trigger WHERE function_id = $1;

-- name: InsertTriggers
INSERT INTO {{schema}}.durable_function_trigger (function_id, idx, event_name, if_expr, cron)
SELECT $1, t.idx, nullif(t.event_name, ''), t.if_expr, t.cron
FROM unnest($2::int[], $3::text[], $4::text[], $5::text[]) AS t(idx, event_name, if_expr, cron);

-- name: FunctionExists
SELECT EXISTS (SELECT 1 FROM {{schema}}.durable_function WHERE id = $1);

-- name: InsertEvents
-- An event ID seen in the last 24 hours is a duplicate: the conflict makes
-- the row invisible to RETURNING, so only new events fan out to runs.
INSERT INTO {{schema}}.durable_event (id, name, data, ts)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
ON CONFLICT (id) DO UPDATE
    SET name = excluded.name, data = excluded.data, ts = excluded.ts, received_at = now()
    WHERE durable_event.received_at < now() - interval '24 hours'
RETURNING id;

-- name: MatchTriggers
SELECT function_id, event_name, if_expr
FROM {{schema}}.durable_function_trigger
WHERE event_name = ANY($1::text[])
ORDER BY function_id, idx;

-- name: InsertRuns
INSERT INTO {{schema}}.durable_run (id, function_id, status, event_id, event_ids, events, job_id)
SELECT r.id, r.function_id, 'queued', r.event_id, ARRAY[r.event_id], r.events, r.job_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[]) AS r(id, function_id, event_id, events, job_id);

-- name: LoadRun
SELECT r.function_id, r.status, r.events, r.owner, r.fn_attempts, r.wake_at, r.error,
    coalesce(w.heartbeat_at > now() - make_interval(secs => $2::float8), false) AS owner_alive,
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
-- The one write of an attempt: fenced on the run's owner token and live
-- status, it records steps, moves the run and completes its River job (a
-- suspended run continues in a new job, $22, inserted in the same
-- transaction), all in one statement (one commit, or part of a StepTx's).
WITH r AS (
    UPDATE {{schema}}.durable_run SET
        owner       = $2,
        status      = $4,
        output      = $5,
        error       = $6,
        fn_attempts = $7,
        wake_at     = $8,
        job_id      = coalesce($22, job_id),
        started_at  = coalesce(started_at, now()),
        ended_at    = CASE WHEN $4 IN ('completed', 'failed', 'cancelled') THEN now() END,
        updated_at  = now()
    WHERE id = $1 AND owner IS NOT DISTINCT FROM $3 AND status IN ('queued', 'running')
    RETURNING id
), s AS (
    INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at)
    SELECT r.id, u.key, u.seq, u.kind, u.status, u.attempts, u.output, u.error, u.wake_at
    FROM r, unnest($9::text[], $10::int[], $11::text[], $12::text[], $13::int[], $14::jsonb[], $15::text[], $16::timestamptz[])
        AS u(key, seq, kind, status, attempts, output, error, wake_at)
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, output = excluded.output,
        error = excluded.error, wake_at = excluded.wake_at, updated_at = now()
    RETURNING 1
), j AS (
    UPDATE {{schema}}.river_job SET
        state        = $18::text::{{schema}}.river_job_state,
        scheduled_at = coalesce($19, scheduled_at),
        attempt      = CASE WHEN $18 IN ('scheduled', 'available') THEN greatest(attempt - 1, 0) ELSE attempt END,
        finalized_at = CASE WHEN $18 IN ('completed', 'cancelled', 'discarded') THEN now() END
    WHERE id = $17 AND $18 <> '' AND EXISTS (SELECT 1 FROM r)
    RETURNING 1
), n AS (
    SELECT pg_notify($20, $21) WHERE $18 = 'available' AND EXISTS (SELECT 1 FROM r)
), e AS (
    SELECT {{schema}}.durable_end_run(r.id, $4, $5, $6, $20) AS events
    FROM r WHERE $4 IN ('completed', 'failed')
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM s), (SELECT count(*) FROM j), (SELECT count(*) FROM n),
    (SELECT coalesce(sum(events), 0) FROM e);

-- name: RunStatus
SELECT status, owner FROM {{schema}}.durable_run WHERE id = $1;

-- name: CancelRun
WITH r AS (
    UPDATE {{schema}}.durable_run
    SET status = 'cancelled', error = $2, ended_at = now(), updated_at = now(), owner = NULL, wake_at = NULL
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
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at
FROM {{schema}}.durable_run WHERE id = $1;

-- name: GetSteps
SELECT key, kind, status, attempts, output, coalesce(error, '')
FROM {{schema}}.durable_step WHERE run_id = $1 ORDER BY seq;

-- name: RunsForEvent
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at
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
        AND j.attempted_at < now() - make_interval(secs => $1::float8)
        AND NOT EXISTS (
            SELECT 1 FROM {{schema}}.durable_worker w
            WHERE w.id = j.attempted_by[array_length(j.attempted_by, 1)]
                AND w.heartbeat_at > now() - make_interval(secs => $1::float8))
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
-- scheduler (every 5 s) or a producer's poll; returns the next due time.
WITH due AS (
    SELECT id FROM {{schema}}.river_job
    WHERE state = 'scheduled' AND queue = $1 AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE {{schema}}.river_job j SET state = 'available'
    FROM due WHERE j.id = due.id
    RETURNING j.id
), n AS (
    SELECT pg_notify($2, $3) WHERE EXISTS (SELECT 1 FROM upd) OR $4::boolean
)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n),
    (SELECT min(scheduled_at) FROM {{schema}}.river_job
     WHERE state IN ('scheduled', 'available') AND queue = $1 AND scheduled_at > now());
