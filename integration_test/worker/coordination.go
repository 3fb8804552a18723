package main

// Functions of the coordination tests (waits, invokes, cancellation), each
// selected by its ID in -functions. They record what they did in two
// tables the tests create:
//
//   - <schema>.outcomes (run_id, fn, step, worker, detail): written inside a
//     StepTx's transaction, so a row exists iff the step committed; a row
//     written twice shows a step that committed twice.
//   - <schema>.marks (run_id, what, worker): written through a separate
//     connection (autocommit), so that the tests see where a worker is even
//     when it is inside a transaction that never commits.
//
// The functions:
//
//   - "race-waiter" (trigger "race/start"): waits for "race/go" with
//     If `async.data.k == event.data.k`, then StepTx "after" records the ID
//     of the event it got (detail). Returns that ID.
//   - "tmo-waiter" (trigger "tmo/start"): the same wait on "tmo/go" with
//     -wait-timeout (1 s); StepTx "after" records "event:<id>" or
//     "timeout" (detail). Returns the same string.
//   - "inv-parent" (trigger "inv/start"): Invoke "inv-child" (step "call")
//     with {"n": event.data.n}, then StepTx "post" records the child's result
//     (detail). Inside "post", after its insert, it writes the mark
//     "post-entered"; with -block-post-invoke it then blocks until its
//     context ends (the test kills the process there). Returns
//     "parent(<child result>)".
//   - "inv-child" (no trigger: invoked only): StepTx "child-tx", its last
//     step, records "child-<n>" (detail). Returns "child-<n>".
//   - "sleeper" (trigger "sleep/start"): Sleep "nap" for event.data.nap_ms,
//     then StepTx "after-nap". Returns "woke".
//   - "cleanup" (trigger durable/function.cancelled, If
//     `event.data.function_id == "sleeper"`): StepTx "cleanup-tx" records the
//     cancelled run's ID (detail). Returns that ID.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
)

type coordOpts struct {
	pool            *pgxpool.Pool
	schema, worker  string
	waitTimeout     time.Duration
	blockPostInvoke bool
}

func coordinationFunctions(o coordOpts) map[string]durable.Function {
	outcomes := pgx.Identifier{o.schema, "outcomes"}.Sanitize()
	marks := pgx.Identifier{o.schema, "marks"}.Sanitize()
	record := func(ctx context.Context, tx pgx.Tx, runID, fn, step, detail string) error {
		_, err := tx.Exec(ctx, "INSERT INTO "+outcomes+" (run_id, fn, step, worker, detail) VALUES ($1, $2, $3, $4, $5)",
			runID, fn, step, o.worker, detail)
		return err
	}
	mark := func(ctx context.Context, runID, what string) error {
		_, err := o.pool.Exec(ctx, "INSERT INTO "+marks+" (run_id, what, worker) VALUES ($1, $2, $3)", runID, what, o.worker)
		return err
	}
	type M = map[string]any
	fns := map[string]durable.Function{}

	fns["race-waiter"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "race-waiter",
		Triggers: []durable.Trigger{{Event: "race/start"}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		ev, err := durable.WaitForEvent[M](ctx, "go", durable.WaitOpts{
			Event:   "race/go",
			If:      "async.data.k == event.data.k",
			Timeout: 5 * time.Minute,
		})
		if err != nil {
			return "", durable.NonRetriable(fmt.Errorf("race-waiter: %w", err))
		}
		return durable.StepTx(ctx, "after", func(ctx context.Context, tx pgx.Tx) (string, error) {
			return ev.ID, record(ctx, tx, in.RunID, "race-waiter", "after", ev.ID)
		})
	})

	fns["tmo-waiter"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "tmo-waiter",
		Triggers: []durable.Trigger{{Event: "tmo/start"}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		ev, err := durable.WaitForEvent[M](ctx, "wait", durable.WaitOpts{
			Event:   "tmo/go",
			If:      "async.data.k == event.data.k",
			Timeout: o.waitTimeout,
		})
		var outcome string
		switch {
		case errors.Is(err, durable.ErrEventTimeout):
			outcome = "timeout"
		case err != nil:
			return "", durable.NonRetriable(fmt.Errorf("tmo-waiter: %w", err))
		default:
			outcome = "event:" + ev.ID
		}
		return durable.StepTx(ctx, "after", func(ctx context.Context, tx pgx.Tx) (string, error) {
			return outcome, record(ctx, tx, in.RunID, "tmo-waiter", "after", outcome)
		})
	})

	fns["inv-parent"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "inv-parent",
		Triggers: []durable.Trigger{{Event: "inv/start"}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		v, err := durable.Invoke[string](ctx, "call", durable.InvokeOpts{Function: "inv-child", Data: M{"n": in.Event.Data["n"]}})
		if err != nil {
			return "", durable.NonRetriable(fmt.Errorf("inv-parent: %w", err))
		}
		if _, err := durable.StepTx(ctx, "post", func(ctx context.Context, tx pgx.Tx) (string, error) {
			if err := record(ctx, tx, in.RunID, "inv-parent", "post", v); err != nil {
				return "", err
			}
			if err := mark(ctx, in.RunID, "post-entered"); err != nil {
				return "", err
			}
			if o.blockPostInvoke {
				<-ctx.Done() // the test kills the process here
				return "", ctx.Err()
			}
			return v, nil
		}); err != nil {
			return "", err
		}
		return "parent(" + v + ")", nil
	})

	fns["inv-child"] = durable.NewFunction(durable.FunctionOpts{
		ID: "inv-child",
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		res := fmt.Sprintf("child-%v", in.Event.Data["n"])
		return durable.StepTx(ctx, "child-tx", func(ctx context.Context, tx pgx.Tx) (string, error) {
			return res, record(ctx, tx, in.RunID, "inv-child", "child-tx", res)
		})
	})

	fns["sleeper"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "sleeper",
		Triggers: []durable.Trigger{{Event: "sleep/start"}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		ms, _ := in.Event.Data["nap_ms"].(float64)
		if err := durable.Sleep(ctx, "nap", time.Duration(ms)*time.Millisecond); err != nil {
			return "", err
		}
		return durable.StepTx(ctx, "after-nap", func(ctx context.Context, tx pgx.Tx) (string, error) {
			return "woke", record(ctx, tx, in.RunID, "sleeper", "after-nap", "")
		})
	})

	fns["cleanup"] = durable.NewFunction(durable.FunctionOpts{
		ID:       "cleanup",
		Triggers: []durable.Trigger{{Event: durable.EventFunctionCancelled, If: `event.data.function_id == "sleeper"`}},
	}, func(ctx context.Context, in durable.Input[M]) (string, error) {
		cancelled, _ := in.Event.Data["run_id"].(string)
		return durable.StepTx(ctx, "cleanup-tx", func(ctx context.Context, tx pgx.Tx) (string, error) {
			return cancelled, record(ctx, tx, in.RunID, "cleanup", "cleanup-tx", cancelled)
		})
	})
	return fns
}
