-- Events: storing, deduplicating, routing system events, and what waits see.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: InsertEvents
-- An event ID seen in the last 24 hours is a duplicate: the conflict makes
-- the row invisible to RETURNING, so only new events fan out to runs. $5 is
-- the trace context of the sender (one per call, NULL when not traced).
INSERT INTO {{schema}}.durable_event (id, name, data, ts, trace)
SELECT u.*, $5::jsonb FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[]) AS u
ON CONFLICT (id) DO UPDATE
    SET name = excluded.name, data = excluded.data, ts = excluded.ts, received_at = now(),
        xid = pg_current_xact_id(), routed = true, trace = excluded.trace
    WHERE durable_event.received_at < now() - interval '24 hours'
RETURNING id;

-- name: ClaimIdempotencyKeys
-- One run per function per key per 24 hours: a key held by a run created
-- less than 24 hours ago makes the conflict invisible to RETURNING.
INSERT INTO {{schema}}.durable_idempotency (function_id, key, run_id, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
ON CONFLICT (function_id, key) DO UPDATE
    SET run_id = excluded.run_id, expires_at = excluded.expires_at
    WHERE durable_idempotency.expires_at < now()
RETURNING run_id;

-- name: LockEventName
SELECT pg_advisory_xact_lock(hashtext('{{schema}}'), hashtext(n)) FROM unnest($1::text[]) AS n ORDER BY n;

-- name: LockEventNameShared
SELECT pg_advisory_xact_lock_shared(hashtext('{{schema}}'), hashtext(n)) FROM unnest($1::text[]) AS n ORDER BY n;

-- name: ListenName
INSERT INTO {{schema}}.durable_listened_name (name) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: UnroutedEvents
SELECT id, name, data, ts FROM {{schema}}.durable_event
WHERE NOT routed
ORDER BY received_at
LIMIT 100
FOR UPDATE SKIP LOCKED;

-- name: MarkRouted
UPDATE {{schema}}.durable_event SET routed = true WHERE id = ANY($1::text[]);

-- name: EventsSince
-- Events of a name committed after the snapshot $2 was taken (when a wait
-- began): still in progress then, or begun later. received_at only bounds
-- the index scan (a sending transaction open for more than an hour before
-- the wait began would be missed). One page of at most $6 events, those
-- after the key ($4, $5) in (received_at, id) order: the caller pages on
-- from the last one it got (the plain received_at >= $4 starts the index
-- range there).
SELECT id, name, data, ts, received_at FROM {{schema}}.durable_event
WHERE name = $1 AND received_at > $3::timestamptz - interval '1 hour'
  AND received_at >= $4::timestamptz AND (received_at, id) > ($4::timestamptz, $5::text)
  AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
ORDER BY received_at, id
LIMIT $6;

-- name: WaitBegins
SELECT pg_current_snapshot()::text, now();
