package durable

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// WaitOpts configures [WaitForEvent].
type WaitOpts struct {
	Event   string        // event name
	If      string        // CEL over `event` (this run's trigger) and `async` (the candidate)
	Timeout time.Duration // required
}

// InvokeOpts configures [Invoke].
type InvokeOpts struct {
	Function string // function ID
	Data     any    // becomes the invoked run's event data
	Timeout  time.Duration
}

// WaitForEvent returns the first matching event received after the wait
// began, or an error wrapping ErrEventTimeout.
//
// Not supported yet: it returns an error wrapping [ErrNotSupported].
func WaitForEvent[T any](ctx context.Context, id string, opts WaitOpts) (TypedEvent[T], error) {
	return TypedEvent[T]{}, fmt.Errorf("durable: WaitForEvent %q: %w", id, ErrNotSupported)
}

// Invoke runs another function as a step and returns its result.
//
// Not supported yet: it returns an error wrapping [ErrNotSupported].
func Invoke[T any](ctx context.Context, id string, opts InvokeOpts) (T, error) {
	var zero T
	return zero, fmt.Errorf("durable: Invoke %q: %w", id, ErrNotSupported)
}

// SendEvent sends events exactly once per run, as a step: the events are
// inserted (and their runs created) in the step's own transaction, so
// replays and crashes never send twice. It returns the events' IDs.
func SendEvent(ctx context.Context, id string, events ...Event) ([]string, error) {
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return nil, err
	}
	prepared, err := rs.c.prepareEvents(events)
	if err != nil {
		return nil, NonRetriable(fmt.Errorf("durable: SendEvent %q: %w", key, err))
	}
	raw, err := rs.step(ctx, key, "send", nil, func(ctx context.Context, tx pgx.Tx) (json.RawMessage, error) {
		ids, err := rs.c.sendPrepared(ctx, tx, prepared)
		if err != nil {
			return nil, err
		}
		return marshalStep(key, ids)
	})
	if err != nil {
		return nil, err
	}
	return unmarshalStep[[]string](key, raw)
}
