package main

// Functions of the flow-control tests (flow_test.go), each selected by its
// ID in -functions. They record into tables the tests create:
//
//   - <schema>.outcomes and <schema>.marks, as the coordination functions
//     (see coordination.go): outcomes in a StepTx's transaction, marks
//     through a separate connection (autocommit).
//   - <schema>.batch_effects (event_id UNIQUE, run_id, worker, pos): one row
//     per event of a batch, written in the StepTx's transaction.
//
// The functions:
//
//   - "slotted" (trigger "slot/start", Concurrency Limit 1): StepTx "work"
//     writes the mark "enter", holds for event.data.hold_ms (the run's first
//     entry into "work") or event.data.rehold_ms (any later entry, e.g. on
//     another worker after a crash; default 0), writes the mark "exit" and
//     returns; then StepTx "done" records an outcome (fn "slotted", step
//     "done"). Returns "done".
//   - "batcher" (trigger "batch/item", Batch MaxSize 5, Timeout 300 ms):
//     StepTx "record" writes the mark "record-enter", inserts one
//     batch_effects row per event of in.Events (pos: its index), then holds
//     for the first event's data.hold_ms. A unique violation (an event
//     recorded twice) fails the run at once (NonRetriable). Returns the
//     number of events.
//   - "buffered" (trigger "buffer/start", Checkpointing BufferedSteps 5):
//     eight plain Steps "s0".."s7", each writing the mark "s<i>" (so a
//     re-executed step shows twice); "s7" then holds for event.data.hold_ms
//     on its first execution (the test kills the process there). Returns 8.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgdurable/durable"
)

func flowFunctions(o coordOpts) map[string]durable.Function {
	outcomes := pgx.Identifier{o.schema, "outcomes"}.Sanitize()
	marks := pgx.Identifier{o.schema, "marks"}.Sanitize()
	batchEffects := pgx.Identifier{o.schema, "batch_effects"}.Sanitize()
	mark := func(ctx context.Context, runID, what string) error {
		_, err := o.pool.Exec(ctx, "INSERT INTO "+marks+" (run_id, what, worker) VALUES ($1, $2, $3)", runID, what, o.worker)
		return err
	}
	hold := func(ctx context.Context, ms float64) error {
		if ms <= 0 {
			return nil
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	type M = map[string]any
	fns := map[string]durable.Function{}

	fns["slotted"] = durable.NewFunction(durable.FunctionOpts{
		ID:          "slotted",
		Triggers:    []durable.Trigger{{Event: "slot/start"}},
		Concurrency: []durable.Concurrency{{Limit: 1}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		if _, err := durable.StepTx(ctx, "work", func(ctx context.Context, tx pgx.Tx) (string, error) {
			var before int
			if err := o.pool.QueryRow(ctx, "SELECT count(*) FROM "+marks+" WHERE run_id = $1 AND what = 'enter'", in.RunID).Scan(&before); err != nil {
				return "", err
			}
			if err := mark(ctx, in.RunID, "enter"); err != nil {
				return "", err
			}
			ms, _ := in.Event.Data["hold_ms"].(float64)
			if before > 0 {
				ms, _ = in.Event.Data["rehold_ms"].(float64)
			}
			if err := hold(ctx, ms); err != nil {
				return "", err
			}
			return o.worker, mark(ctx, in.RunID, "exit")
		}); err != nil {
			return "", err
		}
		if _, err := durable.StepTx(ctx, "done", func(ctx context.Context, tx pgx.Tx) (string, error) {
			_, err := tx.Exec(ctx, "INSERT INTO "+outcomes+" (run_id, fn, step, worker, detail) VALUES ($1, $2, $3, $4, $5)",
				in.RunID, "slotted", "done", o.worker, "")
			return o.worker, err
		}); err != nil {
			return "", err
		}
		return "done", nil
	})

	fns["batcher"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "batcher",
		Triggers: []durable.Trigger{{Event: "batch/item"}},
		Batch:    &durable.Batch{MaxSize: 5, Timeout: 300 * time.Millisecond},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		return durable.StepTx(ctx, "record", func(ctx context.Context, tx pgx.Tx) (int, error) {
			if err := mark(ctx, in.RunID, "record-enter"); err != nil {
				return 0, err
			}
			for i, ev := range in.Events {
				_, err := tx.Exec(ctx, "INSERT INTO "+batchEffects+" (event_id, run_id, worker, pos) VALUES ($1, $2, $3, $4)",
					ev.ID, in.RunID, o.worker, i)
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "23505" {
					return 0, durable.NonRetriable(fmt.Errorf("batcher: event %s recorded twice: %w", ev.ID, err))
				}
				if err != nil {
					return 0, err
				}
			}
			ms, _ := in.Event.Data["hold_ms"].(float64)
			return len(in.Events), hold(ctx, ms)
		})
	})
	fns["buffered"] = durable.NewFunction(durable.FunctionOpts{
		ID:            "buffered",
		Triggers:      []durable.Trigger{{Event: "buffer/start"}},
		Checkpointing: &durable.Checkpointing{BufferedSteps: 5},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		for i := 0; i < 8; i++ {
			key := fmt.Sprintf("s%d", i)
			if _, err := durable.Step(ctx, key, func(ctx context.Context) (int, error) {
				var before int
				if err := o.pool.QueryRow(ctx, "SELECT count(*) FROM "+marks+" WHERE run_id = $1 AND what = $2", in.RunID, key).Scan(&before); err != nil {
					return 0, err
				}
				if err := mark(ctx, in.RunID, key); err != nil {
					return 0, err
				}
				if i == 7 && before == 0 {
					ms, _ := in.Event.Data["hold_ms"].(float64)
					if err := hold(ctx, ms); err != nil {
						return 0, err
					}
				}
				return i, nil
			}); err != nil {
				return 0, err
			}
		}
		return 8, nil
	})
	return fns
}
