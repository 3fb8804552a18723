package durable

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

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
	n, err := c.router.CancelMany(ctx, filter.FunctionID, after, before, prog, int(cancelBatch.Load()), testHookCancelBatch.Load())
	if err != nil {
		return n, fmt.Errorf("durable: CancelMany: %w", err)
	}
	return n, nil
}

// cancelBatch is how many candidate runs CancelMany reads per query
// (atomic: tests lower it).
var cancelBatch atomic.Int64

func init() { cancelBatch.Store(500) }

// testHookCancelBatch holds, for tests only, a function called with the
// size of each batch of candidates CancelMany reads.
var testHookCancelBatch atomic.Pointer[func(n int)]
