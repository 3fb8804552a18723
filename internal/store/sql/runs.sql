-- Runs and steps: an attempt's load, claim and fenced writes, and the runs API.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: ClaimLoad
-- The usual attempt's load and claim in one statement. When the run is
-- plainly this attempt's to take (queued or running, due, not past a
-- timeout, of a function this process runs without flow-control gates
-- (@functions) or with one concurrency gate where the run holds its
-- reservation (@reserved: it passed the gate when it was created or
-- promoted; the slot becomes this attempt's), held by no live process but
-- this one (@worker)), it is claimed as ClaimRun does and returned with
-- claimed = true (status is then the one before the claim, epoch the one
-- after). Otherwise it is only read (claimed = false; with empty
-- @functions and @reserved, always), and the attempt decides
-- (durable_admit for gated functions).
WITH c AS (
    UPDATE {{schema}}.durable_run r SET
        owner_worker = @worker, owner_token = @token, epoch = r.epoch + 1, status = 'running',
        started_at = coalesce(r.started_at, now()), start_deadline = NULL,
        finish_deadline = coalesce(r.finish_deadline, now() + r.finish_timeout),
        updated_at = now()
    WHERE r.id = @run_id AND r.status IN ('queued', 'running')
      AND (r.function_id = ANY (@functions::text[])
           OR (r.function_id = ANY (@reserved::text[])
               AND EXISTS (SELECT 1 FROM {{schema}}.durable_slot s WHERE s.run_id = r.id)))
      AND (r.wake_at IS NULL OR r.wake_at <= now() + interval '5 milliseconds')
      AND NOT (r.status = 'queued' AND coalesce(r.start_deadline < now(), false))
      AND NOT coalesce(r.finish_deadline < now(), false)
      AND (r.owner_worker IS NULL OR r.owner_worker = @worker OR NOT EXISTS (
          SELECT 1 FROM {{schema}}.durable_worker w
          WHERE w.id = r.owner_worker AND w.heartbeat_at > now() - make_interval(secs => @recover::float8)))
    RETURNING r.id, r.events, r.epoch, r.fn_attempts, r.wake_at, r.error, r.log_lines, r.started_at = now() AS first
), sl AS (
    UPDATE {{schema}}.durable_slot s SET worker = @worker, recover_secs = @recover::float8, acquired_at = now()
    FROM c WHERE s.run_id = c.id
    RETURNING 1
)
-- r is the row as the statement found it; what the claim changed comes
-- from c (its events too: an event may have joined a collecting run
-- while the claim waited for the row).
SELECT c.id IS NOT NULL, r.function_id,
    CASE WHEN c.id IS NULL THEN r.status WHEN c.first THEN 'queued' ELSE 'running' END,
    coalesce(c.events, r.events),
    CASE WHEN c.id IS NULL THEN r.owner_worker END,
    coalesce(c.epoch, r.epoch), coalesce(c.fn_attempts, r.fn_attempts),
    CASE WHEN c.id IS NULL THEN r.wake_at ELSE c.wake_at END,
    CASE WHEN c.id IS NULL THEN r.error ELSE c.error END,
    c.id IS NULL AND r.start_deadline < now(), c.id IS NULL AND r.finish_deadline < now(),
    c.id IS NULL AND coalesce(w.heartbeat_at > now() - make_interval(secs => @recover::float8), false),
    coalesce(c.log_lines, r.log_lines), extract(epoch FROM now() - r.created_at)::float8,
    coalesce((
        SELECT json_agg(json_build_object(
            'key', s.key, 'seq', s.seq, 'kind', s.kind, 'status', s.status,
            'attempts', s.attempts, 'output', s.output, 'error', s.error, 'wake_at', s.wake_at)
            ORDER BY s.seq)
        FROM {{schema}}.durable_step s WHERE s.run_id = r.id), '[]'::json)
FROM {{schema}}.durable_run r
LEFT JOIN c ON true
LEFT JOIN {{schema}}.durable_worker w ON w.id = r.owner_worker
WHERE r.id = @run_id;

-- name: ClaimRun
-- An attempt takes the run before calling the function: from then on the
-- run shows as running (with its start time), and every write of the
-- attempt is fenced on its owner token.
UPDATE {{schema}}.durable_run SET
    owner_worker = $2, owner_token = $4, epoch = epoch + 1, status = 'running',
    started_at = coalesce(started_at, now()), start_deadline = NULL,
    finish_deadline = coalesce(finish_deadline, now() + finish_timeout),
    updated_at = now()
WHERE id = $1 AND epoch = $3 AND status IN ('queued', 'running');

-- name: Admit
-- Flow control's decision for an attempt (see durable_admit): NULL when it
-- may start, else when its continuation job is due.
SELECT {{schema}}.durable_admit(@run_id, @worker, @gates::text[], @limits::int[], @priority::int,
    @throttle::text, @emission::interval, @burst::int, @recover::float8, @channel);

-- name: ReapSlots
SELECT {{schema}}.durable_reap_slots($1);

-- name: ClaimedEvents
-- The events of a run that collects them (Debounce, Batch), read once its
-- claim has closed the collection.
SELECT events FROM {{schema}}.durable_run WHERE id = $1;

-- name: CommitStep
-- CommitSteps for the usual single step, with scalar parameters and no
-- CTE (cheaper to plan): no row comes back when the fence fails.
INSERT INTO {{schema}}.durable_step AS st (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id, failures)
SELECT r.id, @key, @seq, @kind, @status, @attempts, @output, @error, @wake_at, @child,
    CASE WHEN @status IN ('retrying', 'failed') THEN jsonb_build_array(jsonb_build_object('attempt', @attempts::int, 'error', @error::text, 'at', now())) END
FROM {{schema}}.durable_run r
WHERE r.id = @run_id AND r.owner_worker = @owner_worker AND r.owner_token = @owner_token AND r.status = 'running'
FOR SHARE
ON CONFLICT (run_id, key) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, child_run_id = coalesce(excluded.child_run_id, st.child_run_id),
        failures = CASE WHEN excluded.failures IS NULL THEN st.failures ELSE coalesce(st.failures, '[]') || excluded.failures END,
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
    WHERE id = @run_id AND owner_worker = @owner_worker AND owner_token = @owner_token AND status = 'running'
    FOR SHARE
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
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM s);

-- name: RunStatus
SELECT status FROM {{schema}}.durable_run WHERE id = $1;

-- name: LockRun
SELECT 1 FROM {{schema}}.durable_run WHERE id = $1 FOR UPDATE;

-- name: CheckJSON
-- Whether Postgres stores a step's output as jsonb (it refuses \u0000, say):
-- finds which step of a refused commit is to blame.
SELECT 1 FROM (SELECT $1::jsonb) AS x;

-- name: GetRun
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at,
    coalesce(parent_run_id, ''), coalesce(rerun_of, '')
FROM {{schema}}.durable_run WHERE id = $1;

-- name: GetSteps
SELECT key, kind, status, attempts, output, coalesce(error, ''), coalesce(child_run_id, ''),
    created_at, updated_at, wake_at, coalesce(failures, '[]')
FROM {{schema}}.durable_step WHERE run_id = $1 ORDER BY seq;

-- name: RunsForEvent
SELECT id, function_id, status, event_ids, output, coalesce(error, ''), created_at, started_at, ended_at,
    coalesce(parent_run_id, ''), coalesce(rerun_of, '')
FROM {{schema}}.durable_run
-- By its first event (durable_run_event_id_idx), or an event folded into it
-- after its first (Debounce, Batch): a UNION of the two index lookups (an
-- OR of them is planned as a sequential scan of durable_run).
WHERE id IN (
    SELECT r.id FROM {{schema}}.durable_run r WHERE r.event_id = $1
    UNION
    SELECT e.run_id FROM {{schema}}.durable_run_event e WHERE e.event_id = $1)
ORDER BY created_at, id;

-- name: RunExists
SELECT EXISTS (SELECT 1 FROM {{schema}}.durable_run WHERE id = $1);

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

