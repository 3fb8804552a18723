package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/executor"
	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/store"
)

// The step functions are generic wrappers over internal/executor: they
// encode and decode the user's types as JSON, and turn a step's final
// failure into a *StepError.

// Step runs fn once per run and memoizes its JSON result. Reused IDs get
// automatic counters ("fetch-data", "fetch-data:1", ...).
//
// When fn fails, the step is retried (the run suspends for the backoff and
// resumes here) up to the function's Retries; once they are exhausted, or
// at once for a [NonRetriable] error, Step returns a *[StepError] the
// function may handle. The value returned is always the JSON round trip of
// fn's result, on the first run and on replays alike.
func Step[T any](ctx context.Context, id string, fn func(ctx context.Context) (T, error)) (T, error) {
	var plain func(context.Context) (json.RawMessage, error)
	if fn != nil {
		plain = func(sctx context.Context) (json.RawMessage, error) {
			v, err := fn(sctx)
			if err != nil {
				return nil, err
			}
			return marshalStep(id, v)
		}
	}
	key, raw, err := executor.Step(ctx, id, "step", plain, nil)
	return result[T](key, raw, err)
}

// StepTx runs fn inside a transaction of the client's pool; the step's result
// is recorded in the same transaction, so fn's writes and the step's
// completion commit together or not at all (exactly-once).
//
// Retries and errors behave as for [Step]; a failed attempt rolls back.
func StepTx[T any](ctx context.Context, id string, fn func(ctx context.Context, tx pgx.Tx) (T, error)) (T, error) {
	var inTx func(context.Context, pgx.Tx) (json.RawMessage, error)
	if fn != nil {
		inTx = func(sctx context.Context, tx pgx.Tx) (json.RawMessage, error) {
			v, err := fn(sctx, tx)
			if err != nil {
				return nil, err
			}
			return marshalStep(id, v)
		}
	}
	key, raw, err := executor.Step(ctx, id, "step", nil, inTx)
	return result[T](key, raw, err)
}

// Sleep suspends the run for d. The run holds no goroutine, connection or
// worker slot while it sleeps; it resumes here once d has passed (on
// replays, d counts from when the sleep first began).
func Sleep(ctx context.Context, id string, d time.Duration) error {
	return executor.SleepUntil(ctx, id, func() time.Time { return time.Now().Add(d) })
}

// SleepUntil suspends the run until t. See [Sleep].
func SleepUntil(ctx context.Context, id string, t time.Time) error {
	return executor.SleepUntil(ctx, id, func() time.Time { return t })
}

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
// The run is suspended while it waits (no goroutine, connection or worker
// slot is held). An event committed after the wait began is delivered even
// if it arrives while this process is still suspending the run.
func WaitForEvent[T any](ctx context.Context, id string, opts WaitOpts) (TypedEvent[T], error) {
	key, ev, err := executor.WaitForEvent(ctx, id, opts.Event, opts.If, opts.Timeout)
	if err != nil {
		return TypedEvent[T]{}, stepError(err)
	}
	te, err := decodeEvent[T](ev)
	if err != nil {
		return te, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: decoding event data into %T: %w", key, te.Data, err))
	}
	return te, nil
}

// Invoke runs another function as a step and returns its result. The
// invoked run is a child of this one (each shows the other in the runs
// API); this run is suspended until it ends. A failed or cancelled child
// makes Invoke return a *StepError; a timeout, an error wrapping
// ErrEventTimeout; an unknown function, an error wrapping
// ErrFunctionNotFound.
func Invoke[T any](ctx context.Context, id string, opts InvokeOpts) (T, error) {
	key, raw, err := executor.Invoke(ctx, id, opts.Function, opts.Data, opts.Timeout)
	return result[T](key, raw, err)
}

// SendEvent sends events exactly once per run, as a step: the events are
// inserted (and their runs created) in the step's own transaction, so
// replays and crashes never send twice. It returns the events' IDs.
func SendEvent(ctx context.Context, id string, events ...Event) ([]string, error) {
	key, raw, err := executor.SendEvent(ctx, id, func(maxEventSize int) ([]store.Event, error) {
		return prepareEvents(events, maxEventSize)
	})
	return result[[]string](key, raw, err)
}

// Logger returns a logger that writes nothing while the run replays code
// that already ran, so each line is logged once per run. Outside a
// function it returns the default logger.
//
// Lines logged outside steps are counted: a replay (after a sleep, a wait,
// an invoke, a retry) skips as many lines as earlier attempts logged, so
// deterministic code logs each line once. A logger obtained inside a step
// body (from the step's context) always logs: the body really runs again
// when the step is retried. A line logged after the last commit of an
// attempt that crashed may be logged again.
func Logger(ctx context.Context) *slog.Logger {
	return executor.Logger(ctx)
}

// result decodes a step's output into T, or returns its error.
func result[T any](key string, raw json.RawMessage, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, stepError(err)
	}
	return unmarshalStep[T](key, raw)
}

// stepError turns the executor's record of a step's final failure into
// the public *StepError.
func stepError(err error) error {
	var sf *failure.StepFailed
	if errors.As(err, &sf) {
		return &StepError{StepID: sf.StepID, Attempts: sf.Attempts, Message: sf.Message}
	}
	return err
}

func marshalStep(key string, v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, NonRetriable(fmt.Errorf("durable: step %q: encoding output: %w", key, err))
	}
	return b, nil
}

func unmarshalStep[T any](key string, raw json.RawMessage) (T, error) {
	var out T
	if len(raw) == 0 {
		return out, nil
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return out, NonRetriable(fmt.Errorf("durable: step %q: decoding output into %T: %w", key, out, err))
	}
	return out, nil
}
