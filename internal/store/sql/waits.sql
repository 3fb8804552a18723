-- Waits (WaitForEvent, Invoke, CancelOn): matching, delivering, timing out.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: InsertWaits
INSERT INTO {{schema}}.durable_wait (run_id, kind, step_key, event_name, match_path, match_value, if_expr, run_event, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[]);

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

-- name: ClaimTimeout
-- A waiting step whose timeout passed ends as timed out, unless an event
-- or a child's result was delivered first (then nothing changes).
SELECT {{schema}}.durable_claim_timeout($1, $2, $3);

-- name: DeliveredSince
-- Which of the steps this attempt found waiting got their event or child
-- result meanwhile (the run row is locked by the caller).
SELECT count(*) FROM {{schema}}.durable_step
WHERE run_id = $1 AND key = ANY($2::text[]) AND status <> 'waiting';

-- name: GetStep
SELECT status, output, error, attempts FROM {{schema}}.durable_step WHERE run_id = $1 AND key = $2;
