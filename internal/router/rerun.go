package router

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/store"
)

// RerunArgs says what Rerun copies.
type RerunArgs struct {
	// Of is the run being rerun; FunctionID and Events are its function
	// and its trigger events (as stored).
	Of         string
	FunctionID string
	Events     []store.Event
	// FromStep, when set, is a step of Of: the steps of Of that completed
	// and first ran before it are copied into the new run.
	FromStep string
}

// Rerun creates, in tx, a new run of a.FunctionID with the trigger events
// of run a.Of, its River job and its cancellation listeners, as insertRuns
// creates every run; it records a.Of as the run it reruns and copies the
// steps a.FromStep asks for. It returns the new run's ID; the caller tells
// the producers after committing (NotifyProducers).
//
// A rerun claims no idempotency key, so the key its trigger holds (most
// often for the run being rerun) does not stop it, and it stays with the
// run that holds it. A rerun has no parent run, even when a.Of was
// invoked: the parent's step already has (or will get) a.Of's result.
func (rt *Router) Rerun(ctx context.Context, tx pgx.Tx, a RerunArgs) (string, error) {
	if len(a.Events) == 0 {
		return "", fmt.Errorf("run %s has no trigger event", a.Of)
	}
	cfg, err := rt.FunctionConfig(ctx, tx, a.FunctionID)
	if err != nil {
		return "", fmt.Errorf("function %q: %w", a.FunctionID, err)
	}
	cfg.Idempotency = ""
	ids, err := rt.insertRuns(ctx, tx, []pendingRun{{functionID: a.FunctionID, cfg: cfg, events: a.Events}}, false)
	if err != nil {
		return "", err
	}
	runID := ids[0]
	if runID == "" {
		return "", fmt.Errorf("durable: the rerun of %s was not created", a.Of) // no key was claimed: cannot happen
	}
	if _, err := tx.Exec(ctx, rt.q.MarkRerun, runID, a.Of); err != nil {
		return "", fmt.Errorf("durable: recording the rerun of %s: %w", a.Of, err)
	}
	if a.FromStep != "" {
		if _, err := tx.Exec(ctx, rt.q.CopyRerunSteps, runID, a.Of, a.FromStep); err != nil {
			return "", fmt.Errorf("durable: copying the steps of %s: %w", a.Of, err)
		}
	}
	return runID, nil
}

// CancelMany cancels the live runs of functionID created in (after,
// before) (nil: unbounded) whose trigger event matches cond (nil: all),
// and returns how many it cancelled. hook, for tests, is called with the
// size of each batch of candidates.
func (rt *Router) CancelMany(ctx context.Context, functionID string, after, before *time.Time, cond *expr.Program, batch int, hook *func(int)) (int, error) {
	// The candidates a batch at a time, keyed on (created_at, id): memory
	// and each query stay bounded however many runs match, and a run the
	// filter rejects is read once, not again by every later batch. Each
	// run is cancelled in its own transaction, as by Cancel.
	afterAt, afterID := time.Time{}, "" // before every run
	n := 0
	for {
		rows, err := rt.pool.Query(ctx, rt.q.CancelCandidates, functionID, after, before, afterAt, afterID, batch)
		if err != nil {
			return n, err
		}
		type cand struct {
			id string
			ev []byte
			at time.Time
		}
		cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (cand, error) {
			var k cand
			err := row.Scan(&k.id, &k.ev, &k.at)
			return k, err
		})
		if err != nil {
			return n, err
		}
		if hook != nil && *hook != nil {
			(*hook)(len(cands))
		}
		for _, k := range cands {
			if cond != nil {
				var ev store.Event
				if json.Unmarshal(k.ev, &ev) != nil {
					continue
				}
				if ok, err := cond.Bool(ev.AsMap(), nil); err != nil || !ok {
					continue
				}
			}
			var cancelled bool
			err := pgx.BeginFunc(ctx, rt.pool, func(tx pgx.Tx) (err error) {
				cancelled, err = rt.CancelRun(ctx, tx, k.id, "cancelled")
				return err
			})
			if err != nil {
				return n, err
			}
			if cancelled {
				n++
			}
		}
		if len(cands) < batch {
			return n, nil
		}
		last := cands[len(cands)-1]
		afterAt, afterID = last.at, last.id
	}
}
