-- Listing runs (Client.ListRuns) and rerunning them (Client.Rerun).
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: ListRuns
-- One bounded scan of runs newest first, in (created_at, id) order, after
-- the keyset position (@upper_ts, @upper_id) (exclusive; NULL: the top),
-- newer than @after (NULL: any), on durable_run_created_idx. At most
-- @scan rows are examined: the status filter cannot be in an index (status
-- changes must stay HOT updates), so it is applied here, over the scanned
-- rows, and the rows it keeps come back (at most @rows of them), each with
-- its position in the scan (rn); the row at position @scan comes back
-- even when it does not match (ok is false), so that the caller knows
-- where a scan that used up its budget stopped. The first trigger event
-- is read only for the rows returned, and only when @with_event (a CEL
-- filter needs it). The callers ask for a custom plan (the unnamed
-- statement): the time range and keyset bound the index range.
SELECT s.id, s.function_id, s.status, s.event_ids, s.output, coalesce(s.error, ''), s.created_at,
    s.started_at, s.ended_at, coalesce(s.parent_run_id, ''), coalesce(s.rerun_of, ''),
    CASE WHEN @with_event::boolean THEN s.events -> 0 END, s.ok, s.rn
FROM (
    SELECT r.*, (cardinality(@statuses::text[]) = 0 OR r.status = ANY (@statuses::text[])) AS ok,
        row_number() OVER (ORDER BY r.created_at DESC, r.id DESC) AS rn
    FROM (
        SELECT id, function_id, status, event_ids, events, output, error, created_at, started_at, ended_at,
            parent_run_id, rerun_of
        FROM {{schema}}.durable_run
        WHERE created_at > coalesce(@after::timestamptz, '-infinity')
          AND created_at <= coalesce(@upper_ts::timestamptz, 'infinity')
          AND (created_at, id) < (coalesce(@upper_ts::timestamptz, 'infinity'), @upper_id::text)
        ORDER BY created_at DESC, id DESC
        LIMIT @scan::int
    ) r
) s
WHERE s.ok OR s.rn = @scan::int
LIMIT @rows::int;

-- name: ListFunctionRuns
-- ListRuns for one function (@function_id), on
-- durable_run_function_created_idx.
SELECT s.id, s.function_id, s.status, s.event_ids, s.output, coalesce(s.error, ''), s.created_at,
    s.started_at, s.ended_at, coalesce(s.parent_run_id, ''), coalesce(s.rerun_of, ''),
    CASE WHEN @with_event::boolean THEN s.events -> 0 END, s.ok, s.rn
FROM (
    SELECT r.*, (cardinality(@statuses::text[]) = 0 OR r.status = ANY (@statuses::text[])) AS ok,
        row_number() OVER (ORDER BY r.created_at DESC, r.id DESC) AS rn
    FROM (
        SELECT id, function_id, status, event_ids, events, output, error, created_at, started_at, ended_at,
            parent_run_id, rerun_of
        FROM {{schema}}.durable_run
        WHERE function_id = @function_id::text
          AND created_at > coalesce(@after::timestamptz, '-infinity')
          AND created_at <= coalesce(@upper_ts::timestamptz, 'infinity')
          AND (created_at, id) < (coalesce(@upper_ts::timestamptz, 'infinity'), @upper_id::text)
        ORDER BY created_at DESC, id DESC
        LIMIT @scan::int
    ) r
) s
WHERE s.ok OR s.rn = @scan::int
LIMIT @rows::int;

-- name: RerunSource
-- The run a rerun copies: its function, its trigger events, and its step
-- IDs in the order they first ran.
SELECT r.function_id, r.events,
    coalesce((SELECT array_agg(s.key ORDER BY s.seq) FROM {{schema}}.durable_step s WHERE s.run_id = r.id), '{}')
FROM {{schema}}.durable_run r
WHERE r.id = $1;

-- name: MarkRerun
-- The rerun ($1) records what it reruns ($2) and carries its trigger
-- events exactly as stored (the run was created from their decoded form).
-- No indexed column changes: a HOT update of the row just inserted.
UPDATE {{schema}}.durable_run n SET rerun_of = o.id, events = o.events, event_ids = o.event_ids
FROM {{schema}}.durable_run o
WHERE n.id = $1 AND o.id = $2;

-- name: CopyRerunSteps
-- The steps of run $2 that completed and first ran before step $3 become
-- the rerun's ($1), as they are (same keys, seqs and outputs): its
-- attempts replay them instead of running their bodies. Their record
-- (times, failed attempts) is the original's: that is when they ran.
INSERT INTO {{schema}}.durable_step (run_id, key, seq, kind, status, attempts, output, error, wake_at, child_run_id,
    failures, created_at, updated_at)
SELECT $1, s.key, s.seq, s.kind, s.status, s.attempts, s.output, s.error, s.wake_at, s.child_run_id,
    s.failures, s.created_at, s.updated_at
FROM {{schema}}.durable_step s
WHERE s.run_id = $2 AND s.status = 'completed'
  AND s.seq < (SELECT f.seq FROM {{schema}}.durable_step f WHERE f.run_id = $2 AND f.key = $3);
