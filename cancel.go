package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
)

// CancelFilter selects runs for [Client.CancelMany].
type CancelFilter struct {
	FunctionID    string    // required
	StartedAfter  time.Time // optional: runs created after this
	StartedBefore time.Time // optional: runs created before this
	If            string    // optional CEL over `event` (the run's trigger)
}

// CancelMany cancels the live runs that match filter and returns how many
// it cancelled. Each is cancelled as by [Client.Cancel].
func (c *Client) CancelMany(ctx context.Context, filter CancelFilter) (int, error) {
	if filter.FunctionID == "" {
		return 0, errors.New("durable: CancelMany: CancelFilter.FunctionID is required")
	}
	var prog *expr.Program
	if filter.If != "" {
		p, err := c.exprs.Compile(filter.If, expr.EventOnly)
		if err != nil {
			return 0, fmt.Errorf("durable: CancelMany: CancelFilter.If: %w", err)
		}
		prog = p
	}
	var after, before *time.Time
	if !filter.StartedAfter.IsZero() {
		after = &filter.StartedAfter
	}
	if !filter.StartedBefore.IsZero() {
		before = &filter.StartedBefore
	}
	// The candidates a batch at a time, keyed on (created_at, id): memory
	// and each query stay bounded however many runs match, and a run the
	// filter rejects is read once, not again by every later batch. Each
	// run is cancelled in its own transaction, as by Cancel.
	batch := int(cancelBatch.Load())
	afterAt, afterID := time.Time{}, "" // before every run
	n := 0
	for {
		rows, err := c.pool.Query(ctx, c.q.CancelCandidates, filter.FunctionID, after, before, afterAt, afterID, batch)
		if err != nil {
			return n, fmt.Errorf("durable: CancelMany: %w", err)
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
			return n, fmt.Errorf("durable: CancelMany: %w", err)
		}
		if h := testHookCancelBatch.Load(); h != nil && *h != nil {
			(*h)(len(cands))
		}
		for _, k := range cands {
			if prog != nil {
				var ev eventJSON
				if json.Unmarshal(k.ev, &ev) != nil {
					continue
				}
				if ok, err := prog.Bool(ev.AsMap(), nil); err != nil || !ok {
					continue
				}
			}
			var cancelled bool
			err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) (err error) {
				cancelled, err = c.router.CancelRun(ctx, tx, k.id, "cancelled")
				return err
			})
			if err != nil {
				return n, fmt.Errorf("durable: CancelMany: %w", err)
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

// cancelBatch is how many candidate runs CancelMany reads per query
// (atomic: tests lower it).
var cancelBatch atomic.Int64

func init() { cancelBatch.Store(500) }

// testHookCancelBatch holds, for tests only, a function called with the
// size of each batch of candidates CancelMany reads.
var testHookCancelBatch atomic.Pointer[func(n int)]
