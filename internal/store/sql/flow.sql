-- Flow control decided when runs are created (internal/router/flow.go):
-- RateLimit, Singleton, Debounce and Batch. (Concurrency and Throttle are
-- gates an attempt passes: durable_admit in the migration.)
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: RateLimitTake
-- GCRA: $2 is the emission interval (Period/Limit), $3 the tolerance
-- (Period - $2, so that Limit events pass at once after an idle spell).
-- Returns a row when the event is admitted; none when it is over the limit.
INSERT INTO {{schema}}.durable_gcra AS d (gate, tat) VALUES ($1, now() + $2::interval)
ON CONFLICT (gate) DO UPDATE SET tat = greatest(d.tat, now()) + $2::interval, updated_at = now()
WHERE d.tat - $3::interval <= now()
RETURNING 1;

-- name: InsertSkippedRun
-- A run flow control turned away: recorded, ended, with no job.
INSERT INTO {{schema}}.durable_run (id, function_id, status, event_id, event_ids, events, error,
    parent_run_id, parent_step, started_at, ended_at)
VALUES ($1, $2, 'skipped', $3, ARRAY[$3], $4, $5, $6, $7, NULL, now());

-- name: SingletonHolder
-- The run holding a Singleton key, locked; with its status.
SELECT s.run_id, coalesce(r.status, '') FROM {{schema}}.durable_singleton s
LEFT JOIN {{schema}}.durable_run r ON r.id = s.run_id
WHERE s.function_id = $1 AND s.key = $2
FOR UPDATE OF s;

-- name: SingletonTake
-- Makes $3 the key's run; returns nothing when another transaction took a
-- new key first (the caller reads the holder again).
INSERT INTO {{schema}}.durable_singleton AS s (function_id, key, run_id) VALUES ($1, $2, $3)
ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id
WHERE $4::boolean
RETURNING 1;

-- name: CollectLock
-- The run collecting a key's events (Debounce, Batch), locked; run_id is
-- '' when none collects. The key's row is created first when missing, so
-- that there is always a row to lock: two senders of a new key's first
-- events serialize on it instead of each starting a collecting run.
WITH ins AS (
    INSERT INTO {{schema}}.durable_collect (function_id, key, run_id, size) VALUES ($1, $2, '', 0)
    ON CONFLICT (function_id, key) DO NOTHING
)
SELECT 1;

-- name: CollectRead
SELECT run_id, size, first_at FROM {{schema}}.durable_collect
WHERE function_id = $1 AND key = $2
FOR UPDATE;

-- name: CollectBatch
-- Appends an event to a collecting batch run while it is still queued
-- (its claim moved it to running under this row lock otherwise); returns
-- the run's job and its size.
UPDATE {{schema}}.durable_run SET events = events || jsonb_build_array($2::jsonb), event_ids = event_ids || $3::text,
    updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING cardinality(event_ids);

-- name: CollectDebounce
-- Folds an event into a debounced run while it is still queued: the run
-- keeps the latest event by timestamp ($4); an older one is only noted.
UPDATE {{schema}}.durable_run SET
    events = CASE WHEN $4::timestamptz >= (events -> 0 ->> 'ts')::timestamptz THEN jsonb_build_array($2::jsonb) ELSE events END,
    event_ids = event_ids || $3::text, updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING cardinality(event_ids);

-- name: NoteRunEvent
INSERT INTO {{schema}}.durable_run_event (event_id, run_id) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: CollectSet
-- The key's collecting run (a new one, or the size of the current one).
INSERT INTO {{schema}}.durable_collect AS c (function_id, key, run_id, size) VALUES ($1, $2, $3, $4)
ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, size = excluded.size,
    first_at = CASE WHEN c.run_id = excluded.run_id THEN c.first_at ELSE now() END;

-- name: CollectDone
-- The key's batch is full: no run collects (the row stays, to be locked).
UPDATE {{schema}}.durable_collect SET run_id = '', size = 0 WHERE function_id = $1 AND key = $2;

-- name: ScheduleJob
-- Moves the job of a queued run ($1) to $2: available now when $2 is not in
-- the future (the producers are told), else scheduled then. A job already
-- running is left alone. (clock_timestamp: now() is when the transaction
-- began, before the caller took $2.)
WITH j AS (
    UPDATE {{schema}}.river_job SET
        state = CASE WHEN $2::timestamptz <= clock_timestamp() THEN 'available' ELSE 'scheduled' END::{{schema}}.river_job_state,
        scheduled_at = CASE WHEN $2::timestamptz <= clock_timestamp() THEN now() ELSE $2::timestamptz END
    WHERE id = (SELECT job_id FROM {{schema}}.durable_run WHERE id = $1) AND state IN ('available', 'scheduled')
    RETURNING queue, state
)
SELECT count(pg_notify($3, json_build_object('queue', j.queue)::text)) FROM j WHERE j.state = 'available';

-- name: Enqueue
-- Passes the gates of a transaction's new runs (durable_enqueue_many):
-- $1 run IDs, $2 their concurrency gates joined by chr(31), $3 their limits
-- joined by commas, $4 priorities, $5 RecoverAfter in seconds, $6..$8
-- throttle gates (NULL for none), emission intervals and bursts.
SELECT {{schema}}.durable_enqueue_many($1::text[], $2::text[], $3::text[], $4::int[], $5::float8, $6::text[], $7::interval[], $8::int[]);
