-- Upkeep: heartbeats and cron ticks.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: Heartbeat
INSERT INTO {{schema}}.durable_worker (id, hostname, pid, heartbeat_at)
SELECT w.id, $2, $3, now() FROM unnest($1::text[]) AS w(id)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: DeleteWorker
DELETE FROM {{schema}}.durable_worker WHERE id = ANY($1::text[]);

-- name: PruneWorkers
DELETE FROM {{schema}}.durable_worker WHERE heartbeat_at < now() - interval '1 day';

-- name: ClaimCronTick
INSERT INTO {{schema}}.durable_cron_tick (function_id, tick, run_id) VALUES ($1, $2, '')
ON CONFLICT DO NOTHING;

-- name: SetCronTickRun
UPDATE {{schema}}.durable_cron_tick SET run_id = $3 WHERE function_id = $1 AND tick = $2;
