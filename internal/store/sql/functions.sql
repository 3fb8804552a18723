-- Functions and their triggers: the registry that routes events.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: LockRegistry
-- Registrations run one at a time per schema: two processes starting
-- together upsert the same functions and replace the same triggers, and
-- without it could take those rows in different orders (a deadlock seen
-- in CI). The key is a reserved name no event can have.
SELECT pg_advisory_xact_lock(hashtext('{{schema}}'), hashtext('durable/registry'));

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

-- name: MatchTriggers
SELECT t.function_id, t.event_name, t.if_expr, f.config
FROM {{schema}}.durable_function_trigger t
JOIN {{schema}}.durable_function f ON f.id = t.function_id
WHERE t.event_name = ANY($1::text[])
ORDER BY t.function_id, t.idx;

-- name: RecordFunctionWorkers
-- The functions a starting process has ($2: its River client ID).
INSERT INTO {{schema}}.durable_function_worker (function_id, worker_id)
SELECT f, $2 FROM unnest($1::text[]) AS f
ON CONFLICT (function_id, worker_id) DO UPDATE SET seen_at = now();

-- name: ListFunctions
-- The registry: every function with its triggers and the processes that
-- have it, each with its heartbeat ($1: RecoverAfter in seconds, below
-- which a heartbeat is live).
SELECT f.id, f.name, f.retries, f.config, f.updated_at,
    coalesce((SELECT json_agg(json_build_object('event', coalesce(t.event_name, ''), 'if', t.if_expr, 'cron', t.cron) ORDER BY t.idx)
        FROM {{schema}}.durable_function_trigger t WHERE t.function_id = f.id), '[]'::json),
    coalesce((SELECT json_agg(json_build_object('id', fw.worker_id, 'hostname', coalesce(w.hostname, ''), 'pid', coalesce(w.pid, 0),
            'last_seen', coalesce(w.heartbeat_at, fw.seen_at),
            'live', coalesce(w.heartbeat_at > now() - make_interval(secs => $1::float8), false)) ORDER BY fw.worker_id)
        FROM {{schema}}.durable_function_worker fw
        LEFT JOIN {{schema}}.durable_worker w ON w.id = fw.worker_id
        WHERE fw.function_id = f.id), '[]'::json)
FROM {{schema}}.durable_function f
ORDER BY f.id;

-- name: UnregisterFunction
-- Forgets a function: its triggers (and process records) go with it, so
-- events stop starting its runs; runs already created are kept.
DELETE FROM {{schema}}.durable_function WHERE id = $1;

-- name: PruneFunctionWorkers
-- Records of processes gone for a day.
DELETE FROM {{schema}}.durable_function_worker fw
WHERE fw.seen_at < now() - interval '1 day'
  AND NOT EXISTS (SELECT 1 FROM {{schema}}.durable_worker w WHERE w.id = fw.worker_id);
