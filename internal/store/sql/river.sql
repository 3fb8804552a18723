-- Every statement that reads or writes River's tables (river_job) or
-- relies on its conventions (the insert NOTIFY): River's private ground,
-- pinned by internal/riverbridge's tests. (durable_deliver, in the
-- migration, also makes a run's job available.)
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

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

-- name: CancelRun
WITH r AS (
    UPDATE {{schema}}.durable_run
    SET status = 'cancelled', error = $2, ended_at = now(), updated_at = now(), owner_worker = NULL, owner_token = NULL, wake_at = NULL,
        start_deadline = NULL, finish_deadline = NULL
    WHERE id = $1 AND status IN ('queued', 'running')
    RETURNING id, job_id, function_id
)
SELECT r.job_id, {{schema}}.durable_end_run(r.id, 'cancelled', NULL, $2, $3), r.function_id FROM r;

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
    RETURNING j.id, j.queue, j.args ->> 'run_id' AS run_id
), n AS (
    SELECT pg_notify($3, json_build_object('queue', q.queue)::text)
    FROM (SELECT DISTINCT queue FROM upd) q
)
-- The count, and (for the log) the IDs of at most 20 of the runs.
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n),
    coalesce((SELECT array_agg(u.run_id ORDER BY u.run_id) FROM (SELECT run_id FROM upd LIMIT 20) u), '{}');

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

-- name: Commit
-- The fenced write of an attempt's suspension, hand-back or end (named
-- arguments, see store.CommitArgs): checked and bumped on the run's epoch,
-- it records steps and moves the run; a suspension (@complete_job) also
-- completes the attempt's River job, the run continuing in a new job
-- (@new_job_id) inserted in the same transaction; an end does what ends
-- entail (durable_end_run). One statement: one commit, or part of a
-- StepTx's.
WITH r AS (
    UPDATE {{schema}}.durable_run SET
        owner_worker = @owner_worker,
        owner_token = @owner_token,
        epoch       = epoch + 1,
        status      = @status,
        output      = @output,
        error       = @error,
        fn_attempts = @fn_attempts,
        wake_at     = @wake_at,
        job_id      = coalesce(@new_job_id, job_id),
        -- A run that waits at a flow-control gate before its first start
        -- stays queued, not started.
        started_at  = CASE WHEN @status = 'queued' THEN started_at ELSE coalesce(started_at, now()) END,
        start_deadline = CASE WHEN @status = 'queued' THEN start_deadline END,
        finish_deadline = CASE WHEN @status IN ('completed', 'failed', 'cancelled') THEN NULL
            WHEN @status = 'queued' THEN finish_deadline
            ELSE coalesce(finish_deadline, now() + finish_timeout) END,
        ended_at    = CASE WHEN @status IN ('completed', 'failed', 'cancelled') THEN now() END,
        log_lines   = greatest(log_lines, @log_lines),
        updated_at  = now()
    WHERE id = @run_id AND epoch = @epoch AND status IN ('queued', 'running')
    RETURNING id
), x AS (
    -- A failed run shows no step still sleeping, waiting or retrying (the
    -- steps this statement writes are left to s).
    UPDATE {{schema}}.durable_step SET status = 'cancelled', wake_at = NULL, updated_at = now()
    FROM r
    WHERE @status = 'failed' AND durable_step.run_id = r.id AND durable_step.status IN ('sleeping', 'waiting', 'retrying')
      AND durable_step.key <> ALL(@keys::text[])
    RETURNING 1
), s AS (
    INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id, failures)
    SELECT r.id, u.key, u.seq, u.kind, u.status, u.attempts, u.output, u.error, u.wake_at, u.child,
        CASE WHEN u.status IN ('retrying', 'failed') THEN jsonb_build_array(jsonb_build_object('attempt', u.attempts, 'error', u.error, 'at', now())) END
    FROM r, unnest(@keys::text[], @seqs::int[], @kinds::text[], @statuses::text[], @attempts::int[], @outputs::jsonb[], @errors::text[], @wakes::timestamptz[], @children::text[])
        AS u(key, seq, kind, status, attempts, output, error, wake_at, child)
    ON CONFLICT (run_id, key) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, output = excluded.output,
        error = excluded.error, wake_at = excluded.wake_at, child_run_id = coalesce(excluded.child_run_id, st.child_run_id),
        failures = CASE WHEN excluded.failures IS NULL THEN st.failures ELSE coalesce(st.failures, '[]') || excluded.failures END,
        updated_at = now()
    RETURNING 1
), j AS (
    UPDATE {{schema}}.river_job SET state = 'completed', finalized_at = now()
    WHERE id = @job_id AND @complete_job::boolean AND EXISTS (SELECT 1 FROM r)
    RETURNING 1
), e AS (
    SELECT {{schema}}.durable_end_run(r.id, @status, @output, @error, @channel) AS events
    FROM r WHERE @status IN ('completed', 'failed')
), g AS (
    -- A flow-controlled run's attempt that suspends or hands the run back
    -- gives its concurrency slots to the runs waiting (an end does it in
    -- durable_end_run).
    SELECT {{schema}}.durable_release(r.id, @channel) FROM r WHERE @gated::boolean AND @status NOT IN ('completed', 'failed')
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM j), (SELECT coalesce(sum(events), 0) FROM e), (SELECT count(*) FROM g);

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

-- name: Backlog
-- Runs created and not started yet (status queued), per registered
-- function (0 for none), with the age in seconds of the oldest: the
-- backlog gauges, read every 15 s by one maintenance loop per process.
-- The runs are found through their River jobs in the queue $1, on index
-- ranges only: River's fetch index for available, running and retryable
-- jobs, the scheduled-jobs index for those due within a minute (as the
-- job of a run that a process without its function put back is); never
-- by scanning durable_run, whose status is indexed nowhere (status
-- updates must stay HOT). Read-only on River's table.
WITH j AS (
    SELECT args FROM {{schema}}.river_job
    WHERE state IN ('available', 'running', 'retryable') AND queue = $1
    UNION ALL
    SELECT args FROM {{schema}}.river_job
    WHERE state = 'scheduled' AND queue = $1 AND scheduled_at < now() + interval '1 minute'
), b AS (
    SELECT r.function_id, r.created_at
    FROM j JOIN {{schema}}.durable_run r ON r.id = j.args ->> 'run_id'
    WHERE r.status = 'queued'
)
SELECT f.id, count(b.function_id), coalesce(extract(epoch FROM now() - min(b.created_at)), 0)::float8
FROM {{schema}}.durable_function f
LEFT JOIN b ON b.function_id = f.id
GROUP BY f.id
ORDER BY f.id;
