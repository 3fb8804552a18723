package main

import (
	"context"
	"fmt"
	"time"
)

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
	const chunk = 100_000
	for lo := 1; lo <= ended; lo += chunk {
		hi := min(lo+chunk-1, ended)
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.table("durable_run")+`
			(id, function_id, status, event_id, event_ids, events, output, created_at, started_at, ended_at, updated_at)
			SELECT 'ended-' || g, 'bench-preloaded', 'completed', 'ended-ev-' || g, ARRAY['ended-ev-' || g], '[]', '1', t, t, t, t
			FROM generate_series($1::int, $2::int) g,
				LATERAL (SELECT now() - interval '1 day' + g * interval '10 ms') AS x(t)`, lo, hi); err != nil {
			return fmt.Errorf("preloading ended runs: %w", err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.table("durable_step")+`
			(run_id, key, seq, kind, status, attempts, output, created_at, updated_at)
			SELECT 'ended-' || g, 'step-' || k, k, 'step', 'completed', 1, '{"v": 1}', t, t
			FROM generate_series($1::int, $2::int) g, generate_series(0, 2) k,
				LATERAL (SELECT now() - interval '1 day' + g * interval '10 ms') AS x(t)`, lo, hi); err != nil {
			return fmt.Errorf("preloading steps: %w", err)
		}
	}
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
	for _, t := range []string{"durable_run", "durable_step", "river_job"} {
		if _, err := conn.Exec(ctx, "VACUUM ANALYZE "+e.table(t)); err != nil {
			return fmt.Errorf("vacuum analyze %s: %w", t, err)
		}
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
