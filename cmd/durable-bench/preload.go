package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// endedRuns describes ended runs loaded with SQL: IDs prefix1, prefix2, ...
// (their events prefix + "ev-" + N), of function fn, each with three
// completed steps, the first ended ago back and each next one spacing
// later; mixed makes one run in 20 failed and one in 20 cancelled.
type endedRuns struct {
	prefix, fn   string
	ago, spacing time.Duration
	mixed        bool
}

// insertEndedRuns inserts n such runs with their steps, in chunks.
func (e *env) insertEndedRuns(ctx context.Context, conn *pgx.Conn, n int, r endedRuns) error {
	const chunk = 100_000
	// The run's status and end time, from its number g ($4 mixed, $5 ago,
	// $6 spacing).
	const lateral = `LATERAL (SELECT CASE WHEN $4 AND g % 20 = 0 THEN 'failed' WHEN $4 AND g % 20 = 1 THEN 'cancelled' ELSE 'completed' END,
		now() - $5::interval + g * $6::interval) AS x(s, t)`
	for lo := 1; lo <= n; lo += chunk {
		hi := min(lo+chunk-1, n)
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.table("durable_run")+`
			(id, function_id, status, event_id, event_ids, events, output, error, created_at, started_at, ended_at, updated_at)
			SELECT $3 || g, $7, s, $3 || 'ev-' || g, ARRAY[$3 || 'ev-' || g], '[]',
				CASE WHEN s = 'completed' THEN '1'::jsonb END, CASE WHEN s <> 'completed' THEN 'bench' END, t, t, t, t
			FROM generate_series($1::int, $2::int) g, `+lateral, lo, hi, r.prefix, r.mixed, r.ago, r.spacing, r.fn); err != nil {
			return fmt.Errorf("loading ended runs: %w", err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.table("durable_step")+`
			(run_id, key, seq, kind, status, attempts, output, created_at, updated_at)
			SELECT $3 || g, 'step-' || k, k, 'step', 'completed', 1, '{"v": 1}', t, t
			FROM generate_series($1::int, $2::int) g, generate_series(0, 2) k, `+lateral,
			lo, hi, r.prefix, r.mixed, r.ago, r.spacing); err != nil {
			return fmt.Errorf("loading steps: %w", err)
		}
	}
	return nil
}

// vacuumAnalyze vacuums and analyzes the bench schema's tables.
func (e *env) vacuumAnalyze(ctx context.Context, conn *pgx.Conn, tables ...string) error {
	for _, t := range tables {
		if _, err := conn.Exec(ctx, "VACUUM ANALYZE "+e.table(t)); err != nil {
			return fmt.Errorf("vacuum analyze %s: %w", t, err)
		}
	}
	return nil
}

// preload fills the bench schema, before the engine phases, with
// -preload-ended ended runs (three steps each, ended within the last day,
// so that retention keeps them) and -preload-sleeping runs asleep for a
// day (a sleeping step and a scheduled River job each, in the engine's
// shape, of a function no process has): run the bench with and without
// them to see whether the figures stay flat as the tables grow.
func (e *env) preload(ctx context.Context) error {
	ended, sleeping := e.o.PreloadEnded, e.o.PreloadSleeping
	if ended == 0 && sleeping == 0 {
		return nil
	}
	conn, err := e.conn(ctx, "preload")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	t0 := time.Now()
	if err := e.insertEndedRuns(ctx, conn, ended, endedRuns{prefix: "ended-", fn: "bench-preloaded",
		ago: 24 * time.Hour, spacing: 10 * time.Millisecond}); err != nil {
		return fmt.Errorf("preloading: %w", err)
	}
	const chunk = 100_000
	for lo := 1; lo <= sleeping; lo += chunk {
		hi := min(lo+chunk-1, sleeping)
		if _, err := conn.Exec(ctx, `WITH j AS (
				INSERT INTO `+e.table("river_job")+` (args, kind, max_attempts, queue, state, scheduled_at)
				SELECT jsonb_build_object('run_id', 'asleep-' || g), 'durable_run', 1000, 'durable', 'scheduled', now() + interval '1 day'
				FROM generate_series($1::int, $2::int) g
				RETURNING id, args ->> 'run_id' AS run_id
			), r AS (
				INSERT INTO `+e.table("durable_run")+`
					(id, function_id, status, event_id, event_ids, events, job_id, wake_at, started_at)
				SELECT j.run_id, 'bench-asleep', 'running', j.run_id || '-ev', ARRAY[j.run_id || '-ev'], '[]', j.id, now() + interval '1 day', now()
				FROM j
				RETURNING id
			)
			INSERT INTO `+e.table("durable_step")+` (run_id, key, seq, kind, status, attempts, wake_at)
			SELECT r.id, 'nap', 0, 'sleep', 'sleeping', 0, now() + interval '1 day' FROM r`, lo, hi); err != nil {
			return fmt.Errorf("preloading sleeping runs: %w", err)
		}
	}
	if err := e.vacuumAnalyze(ctx, conn, "durable_run", "durable_step", "river_job"); err != nil {
		return err
	}
	// Flush what the load dirtied now, not during the first phases (a
	// checkpoint of a million rows makes every commit wait). It needs a
	// privileged role; without one, the note says so.
	note := ""
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		note = fmt.Sprintf(" (CHECKPOINT refused: %v; the first phases may pay for the load's writes)", err)
	}
	e.printf("preloaded: %d ended runs (3 steps each) and %d sleeping runs (a scheduled River job each) in %s%s\n",
		ended, sleeping, time.Since(t0).Round(100*time.Millisecond), note)
	return nil
}
