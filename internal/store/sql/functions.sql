-- Functions and their triggers: the registry that routes events.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

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
