-- Retention: pruning ended runs (with their steps), old events, expired
-- idempotency keys and old cron ticks, from one process at a time, in
-- bounded batches (see internal/maintenance/retention.go). River's own job
-- rows are River's (its job cleaner prunes them): nothing here reads them.
-- Each query starts with "-- name: X" (X is a field of store.Queries);
-- {{schema}} is replaced by the quoted schema when the store is loaded.

-- name: RetentionLock
-- A sweep runs while its process holds this session lock (two-key form,
-- like the event-name locks; "durable/" names are the library's, so no
-- event shares the key); another process finding it taken skips its
-- sweep. now() is the database's clock: every cutoff of the sweep is
-- computed from it.
SELECT pg_try_advisory_lock(hashtext('{{schema}}'), hashtext('durable/retention')), now();

-- name: RetentionUnlock
SELECT pg_advisory_unlock(hashtext('{{schema}}'), hashtext('durable/retention'));

-- name: RetentionTimeout
-- The statement timeout of one batch's transaction (SET LOCAL: it ends
-- with the transaction, never left on a pooled connection).
SELECT set_config('statement_timeout', $1, true);

-- name: PruneRuns
-- One page of ended runs in (ended_at, id) order, after the key ($3, $4)
-- and before the cutoff $2: at most $5 entries of durable_run_ended_idx
-- are read, whatever their status, so a page costs the same however many
-- runs of other statuses are kept; those of the statuses $1 are deleted
-- with their steps (an ended run has no waits left; the foreign keys'
-- cascade would take them). Runs are locked first (SKIP LOCKED: a run
-- someone holds is left for a later sweep), then their steps: the order
-- every writer of a run follows. Only ended statuses are ever passed, and
-- checked again on the locked row: a queued or running run (sleeping,
-- waiting and retrying included) is never deleted.
-- Returns the entries read, the page's last key, and the runs and steps
-- deleted.
WITH page AS (
    SELECT id, status, ended_at FROM {{schema}}.durable_run
    WHERE ended_at IS NOT NULL AND ended_at < $2 AND (ended_at, id) > ($3::timestamptz, $4::text)
    ORDER BY ended_at, id
    LIMIT $5
), doomed AS (
    SELECT r.id FROM {{schema}}.durable_run r
    WHERE r.id = ANY (ARRAY(SELECT id FROM page WHERE status = ANY ($1::text[])))
      AND r.status = ANY ($1::text[]) AND r.ended_at < $2
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM {{schema}}.durable_step WHERE run_id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING 1
), runs AS (
    DELETE FROM {{schema}}.durable_run WHERE id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING 1
), last AS (
    SELECT ended_at, id FROM page ORDER BY ended_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM page), (SELECT ended_at FROM last), (SELECT id FROM last),
    (SELECT count(*) FROM runs), (SELECT count(*) FROM steps);

-- name: PruneEvents
-- One page of events in (received_at, id) order, after the key ($2, $3)
-- and received before the cutoff $1: at most $4 entries of
-- durable_event_received_idx are read. Deleted are those no one needs: a
-- system event not yet routed (routed = false) is kept, and so is the
-- trigger event of a queued or running run (found by durable_run's
-- event_id index; the run itself executes from its own copy, but the
-- event stays findable while the run lives). Open waits never read stored
-- events (an event finds them when sent); a wait being registered reads
-- events received up to an hour before it began, which the caller's
-- cutoff (at least MinEventAge) leaves alone.
-- Returns the entries read, the page's last key, and the events deleted.
WITH page AS (
    SELECT id, received_at, routed FROM {{schema}}.durable_event
    WHERE received_at < $1 AND (received_at, id) > ($2::timestamptz, $3::text)
    ORDER BY received_at, id
    LIMIT $4
), doomed AS (
    SELECT e.id FROM {{schema}}.durable_event e
    WHERE e.id = ANY (ARRAY(SELECT id FROM page WHERE routed))
      AND e.routed AND e.received_at < $1
      AND NOT EXISTS (SELECT 1 FROM {{schema}}.durable_run r
                      WHERE r.event_id = e.id AND r.status IN ('queued', 'running'))
      AND NOT EXISTS (SELECT 1 FROM {{schema}}.durable_run_event re
                      JOIN {{schema}}.durable_run r ON r.id = re.run_id
                      WHERE re.event_id = e.id AND r.status IN ('queued', 'running'))
    FOR UPDATE OF e SKIP LOCKED
), del AS (
    DELETE FROM {{schema}}.durable_event WHERE id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING 1
), last AS (
    SELECT received_at, id FROM page ORDER BY received_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM page), (SELECT received_at FROM last), (SELECT id FROM last),
    (SELECT count(*) FROM del);

-- name: PruneIdempotencyKeys
-- Expired keys ($1 is the sweep's now), at most $2, by
-- durable_idempotency_expires_idx. A key not yet expired is kept even when
-- its run was pruned: it still makes its function start one run per key
-- per 24 hours. A key being claimed again (locked) is left to it. The
-- locked rows are deleted by ctid (a TID scan: a join on the two-column
-- key may be planned as a hash join over the whole table).
WITH doomed AS (
    SELECT ctid FROM {{schema}}.durable_idempotency
    WHERE expires_at < $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {{schema}}.durable_idempotency WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed));

-- name: PruneCronTicks
-- Cron ticks before the cutoff $1, at most $2, by
-- durable_cron_tick_tick_idx. A tick's row only has to outlive the minute
-- in which processes may still fire it; the cutoff keeps it (which run a
-- tick started) as long as completed runs, and at least a week. Deleted
-- by ctid, like idempotency keys.
WITH doomed AS (
    SELECT ctid FROM {{schema}}.durable_cron_tick
    WHERE tick < $1
    ORDER BY tick
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {{schema}}.durable_cron_tick WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed));

-- name: PruneFlowState
-- Flow-control state no run needs any more, at most $2 rows of each kind:
-- GCRA state (Throttle, RateLimit) whose next admission time is an hour
-- before the cutoff $1 (a missing row admits like a past one), Singleton
-- keys whose run ended (or was pruned), and collecting keys whose run
-- started (the next event replaces them anyway). These tables hold a row
-- per key, not per run: the scans are bounded by their LIMIT.
WITH g AS (
    DELETE FROM {{schema}}.durable_gcra WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {{schema}}.durable_gcra WHERE tat < $1::timestamptz - interval '1 hour' LIMIT $2 FOR UPDATE SKIP LOCKED))
    RETURNING 1
), s AS (
    DELETE FROM {{schema}}.durable_singleton WHERE ctid = ANY (ARRAY(
        SELECT s.ctid FROM {{schema}}.durable_singleton s
        LEFT JOIN {{schema}}.durable_run r ON r.id = s.run_id
        WHERE r.id IS NULL OR r.status NOT IN ('queued', 'running')
        LIMIT $2 FOR UPDATE OF s SKIP LOCKED))
    RETURNING 1
), c AS (
    DELETE FROM {{schema}}.durable_collect WHERE ctid = ANY (ARRAY(
        SELECT c.ctid FROM {{schema}}.durable_collect c
        LEFT JOIN {{schema}}.durable_run r ON r.id = c.run_id
        WHERE r.id IS NULL OR r.status <> 'queued'
        LIMIT $2 FOR UPDATE OF c SKIP LOCKED))
    RETURNING 1
)
SELECT greatest((SELECT count(*) FROM g), (SELECT count(*) FROM s), (SELECT count(*) FROM c));
