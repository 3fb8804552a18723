package durable

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/ids"
)

// Send persists events and starts a run of every function whose trigger
// matches each new event. It returns the events' IDs, in order; an event
// whose ID was already seen in the last 24 hours is not delivered again and
// its ID is returned as it is.
//
// Calls made at the same time from one process may share a transaction
// (one commit for all of them); each returns once its events are committed.
// ctx bounds a call until its events are handed to a shared transaction;
// from then on the call waits for that transaction's outcome (at most a
// minute) so that what it returns is the truth. If the shared transaction
// fails, its calls are retried in halves down to each call alone, so a
// call gets only its own error.
func (c *Client) Send(ctx context.Context, events ...Event) ([]string, error) {
	prepared, err := prepareEvents(events, c.cfg.MaxEventSize)
	if err != nil {
		return nil, err
	}
	// In a transaction of the library's own, shared with concurrent
	// calls (see router.SendOwn).
	out, err := c.router.SendOwn(ctx, prepared)
	if err != nil {
		return nil, c.explain(err)
	}
	return out, nil
}

// SendTx is Send inside the caller's transaction: if tx rolls back, no
// event is stored and no run starts (the outbox pattern, built in).
func (c *Client) SendTx(ctx context.Context, tx pgx.Tx, events ...Event) ([]string, error) {
	if tx == nil {
		return nil, fmt.Errorf("durable: SendTx: tx is nil")
	}
	prepared, err := prepareEvents(events, c.cfg.MaxEventSize)
	if err != nil {
		return nil, err
	}
	ids, _, err := c.router.Send(ctx, tx, prepared, true)
	return ids, c.explain(err)
}

func prepareEvents(events []Event, maxEventSize int) ([]eventJSON, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("durable: Send: no events")
	}
	out := make([]eventJSON, len(events))
	for i, e := range events {
		if strings.HasPrefix(strings.TrimSpace(e.Name), ReservedPrefix) {
			return nil, fmt.Errorf("durable: event %d (%q): %w", i, e.Name, ErrReservedName)
		}
		p, err := prepareEvent(e, i, maxEventSize)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

func newID() string { return ids.New() }

// runJobMaxAttempts is the River attempt limit of run jobs: River's own
// retries only cover infrastructure failures (a step's retries are
// counted by the library), so the limit is only a backstop.
const runJobMaxAttempts = 1000

// Invoke starts a run of a function directly and returns its run ID. data
// becomes the run's event data (the event is named
// "durable/function.invoked"). The function may live in another process; an
// ID no process has registered is an error wrapping [ErrFunctionNotFound].
func (c *Client) Invoke(ctx context.Context, functionID string, data any) (string, error) {
	var runID string
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) (err error) {
		runID, err = c.router.Invoke(ctx, tx, functionID, data, c.cfg.MaxEventSize, "", "")
		return err
	})
	if err != nil {
		return "", fmt.Errorf("durable: Invoke %q: %w", functionID, c.explain(err))
	}
	c.router.NotifyProducers(ctx)
	return runID, nil
}
