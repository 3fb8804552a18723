-- Browsing (Client.ListEvents, Client.CountRuns): the run browser's reads
-- beyond ListRuns, every one bounded however big the tables grow.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: ListEvents
-- One bounded scan of events newest first, in (received_at, id) order,
-- strictly before the keyset position (@upper_ts, @upper_id), on
-- durable_event_received_idx. At most @scan events are examined; each
-- comes with the runs whose first trigger event it is (at most @runs of
-- them, on durable_run_event_id_idx). With @no_runs only the events that
-- started no run are kept; the event at position @scan comes back even
-- when it is not kept (ok is false), so that the caller knows where a scan
-- that used up its budget stopped. Asked for with a custom plan.
SELECT e.id, e.name, CASE WHEN e.ok THEN e.data END, e.ts, e.received_at, e.runs, e.ok, e.rn
FROM (
    SELECT x.*, r.runs, (NOT @no_runs::boolean OR r.runs = '[]'::jsonb) AS ok
    FROM (
        SELECT id, name, data, ts, received_at,
            row_number() OVER (ORDER BY received_at DESC, id DESC) AS rn
        FROM {{schema}}.durable_event
        WHERE (received_at, id) < (coalesce(@upper_ts::timestamptz, 'infinity'), @upper_id::text)
        ORDER BY received_at DESC, id DESC
        LIMIT @scan::int
    ) x
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(jsonb_build_object('id', q.id, 'function_id', q.function_id, 'status', q.status)
            ORDER BY q.created_at, q.id), '[]'::jsonb) AS runs
        FROM (
            SELECT id, function_id, status, created_at FROM {{schema}}.durable_run
            WHERE event_id = x.id ORDER BY created_at, id LIMIT @runs::int
        ) q
    ) r
) e
WHERE e.ok OR e.rn = @scan::int
ORDER BY e.rn
LIMIT @rows::int;

-- name: ListEventsByName
-- ListEvents for one event name (@name), on
-- durable_event_name_received_idx.
SELECT e.id, e.name, CASE WHEN e.ok THEN e.data END, e.ts, e.received_at, e.runs, e.ok, e.rn
FROM (
    SELECT x.*, r.runs, (NOT @no_runs::boolean OR r.runs = '[]'::jsonb) AS ok
    FROM (
        SELECT id, name, data, ts, received_at,
            row_number() OVER (ORDER BY received_at DESC, id DESC) AS rn
        FROM {{schema}}.durable_event
        WHERE name = @name::text
          AND received_at <= coalesce(@upper_ts::timestamptz, 'infinity')
          AND (received_at, id) < (coalesce(@upper_ts::timestamptz, 'infinity'), @upper_id::text)
        ORDER BY received_at DESC, id DESC
        LIMIT @scan::int
    ) x
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(jsonb_build_object('id', q.id, 'function_id', q.function_id, 'status', q.status)
            ORDER BY q.created_at, q.id), '[]'::jsonb) AS runs
        FROM (
            SELECT id, function_id, status, created_at FROM {{schema}}.durable_run
            WHERE event_id = x.id ORDER BY created_at, id LIMIT @runs::int
        ) q
    ) r
) e
WHERE e.ok OR e.rn = @scan::int
ORDER BY e.rn
LIMIT @rows::int;

-- name: CountRunsExact
-- Runs by status, of at most @limit runs matching the filter (@function_id
-- '' for any; created strictly between @after and @before, NULL for no
-- bound): when the counts add up to less than @limit they are exact. No
-- order: the plan reads whatever index or heap is cheapest. Asked for
-- with a custom plan, in a transaction with a statement_timeout.
SELECT status, count(*)
FROM (
    SELECT status FROM {{schema}}.durable_run
    WHERE (@function_id::text = '' OR function_id = @function_id::text)
      AND created_at > coalesce(@after::timestamptz, '-infinity')
      AND created_at < coalesce(@before::timestamptz, 'infinity')
    LIMIT @limit::int
) r
GROUP BY status;

-- name: CountRunsSample
-- Runs by status in a sample of about @pct percent of durable_run's
-- pages (TABLESAMPLE SYSTEM), with the same filter as CountRunsExact: the
-- caller scales the counts up.
SELECT status, count(*)
FROM {{schema}}.durable_run TABLESAMPLE SYSTEM (@pct::float8)
WHERE (@function_id::text = '' OR function_id = @function_id::text)
  AND created_at > coalesce(@after::timestamptz, '-infinity')
  AND created_at < coalesce(@before::timestamptz, 'infinity')
GROUP BY status;

-- name: RunTableSize
-- The planner's estimate of durable_run's rows (reltuples: -1 before the
-- table was first vacuumed or analyzed) and its size in pages.
SELECT c.reltuples::float8, pg_relation_size(c.oid) / current_setting('block_size')::int
FROM pg_class c
WHERE c.oid = '{{schema}}.durable_run'::regclass;

-- name: CountTimeout
-- Bounds the counting queries of one transaction.
SET LOCAL statement_timeout = '2s';

-- name: RunEvents
-- A run's trigger events, as the run got them.
SELECT events FROM {{schema}}.durable_run WHERE id = $1;
