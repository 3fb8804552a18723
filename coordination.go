package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/failure"
)

// testHookWaitBegan holds, for tests only, functions (by function ID)
// called when a wait has begun and before its run suspends.
var testHookWaitBegan sync.Map

// Statuses of waiting steps.
const (
	stepWaiting  = "waiting"
	stepTimedOut = "timed_out"
)

// noTimeout is how far ahead a wait without timeout schedules its run's
// job (it is woken by what it waits for).
const noTimeout = 10 * 365 * 24 * time.Hour

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
	var zero TypedEvent[T]
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return zero, err
	}
	if opts.Event == "" {
		return zero, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.Event is required", key))
	}
	if opts.Timeout <= 0 {
		return zero, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.Timeout is required", key))
	}
	if opts.If != "" {
		if err := rs.c.checkFilter(opts.If, expr.EventAndAsync); err != nil {
			return zero, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.If: %w", key, err))
		}
	}
	raw, err := rs.waitingStep(ctx, key, "wait", nil, func(row *stepRow) suspendHook {
		// A wait on an event the library emits (durable/function.*) needs
		// those events stored from before it begins.
		if strings.HasPrefix(opts.Event, "durable/") {
			if err := rs.c.router.ListenName(ctx, opts.Event); err != nil {
				rs.stop(ctx, fmt.Errorf("durable: WaitForEvent %q: %w", key, err))
			}
		}
		// The wait begins now: events committed from here on are its.
		var snapshot string
		var began time.Time
		if err := rs.c.pool.QueryRow(ctx, rs.c.q.WaitBegins).Scan(&snapshot, &began); err != nil {
			rs.stop(ctx, fmt.Errorf("durable: WaitForEvent %q: %w", key, err))
		}
		if h, ok := testHookWaitBegan.Load(rs.def.opts.ID); ok {
			h.(func(json.RawMessage))(rs.trigger.Data)
		}
		wake := *row.WakeAt
		return suspendHook{row: row, fn: func(ctx context.Context, tx pgx.Tx) (bool, error) {
			return rs.registerWait(ctx, tx, row, opts, snapshot, began, wake)
		}}
	}, opts.Timeout)
	if err != nil {
		return zero, err
	}
	var ev eventJSON
	if err := json.Unmarshal(raw, &ev); err != nil {
		return zero, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: decoding event: %w", key, err))
	}
	te, err := decodeEvent[T](ev)
	if err != nil {
		return zero, NonRetriable(fmt.Errorf("durable: WaitForEvent %q: decoding event data into %T: %w", key, te.Data, err))
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
	var zero T
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return zero, err
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = noTimeout
	}
	check := func() error {
		if opts.Function == "" {
			return NonRetriable(fmt.Errorf("durable: Invoke %q: InvokeOpts.Function is required", key))
		}
		cfg, err := rs.c.router.FunctionConfig(ctx, rs.c.pool, opts.Function)
		if err == nil && cfg.System {
			return NonRetriable(fmt.Errorf("durable: Invoke %q: %w", key, reservedFunction(opts.Function)))
		}
		if err != nil {
			if errors.Is(err, ErrFunctionNotFound) {
				// Retrying cannot make the function exist: fail now.
				return NonRetriable(fmt.Errorf("durable: Invoke %q of %q: %w", key, opts.Function, err))
			}
			return fmt.Errorf("durable: Invoke %q of %q: %w", key, opts.Function, err)
		}
		return nil
	}
	raw, err := rs.waitingStep(ctx, key, "invoke", check, func(row *stepRow) suspendHook {
		return suspendHook{row: row, fn: func(ctx context.Context, tx pgx.Tx) (bool, error) {
			return false, rs.startChild(ctx, tx, row, opts)
		}}
	}, timeout)
	if err != nil {
		return zero, err
	}
	return unmarshalStep[T](key, raw)
}

// waitingStep runs (or replays) a step that waits for something delivered
// from outside (an event, a child's result): first time, it records the
// step as waiting until the timeout and suspends the run, doing the
// step's own work (hook) in the suspending transaction.
func (rs *runState) waitingStep(ctx context.Context, key, kind string, check func() error, hook func(*stepRow) suspendHook, timeout time.Duration) (json.RawMessage, error) {
	rs.mu.Lock()
	row := rs.lookup(key)
	rs.mu.Unlock()
	if row != nil {
		switch row.Status {
		case stepCompleted:
			return row.Output, nil
		case stepFailed:
			return nil, &StepError{StepID: key, Attempts: max(row.Attempts, 1), Message: failure.Message(deref(row.Error))}
		case stepTimedOut:
			return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, ErrEventTimeout)
		case stepWaiting:
			if row.WakeAt != nil && time.Until(*row.WakeAt) > 0 {
				rs.exit(suspendOutcome(*row.WakeAt))
			}
			return rs.claimTimeout(ctx, key, kind)
		}
	}
	if err := rs.boundary(ctx, key, false); err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	wake := time.Now().Add(timeout).UTC()
	row = &stepRow{Key: key, Seq: rs.newSeq(), Kind: kind, Status: stepWaiting, Attempts: 1, WakeAt: &wake}
	h := hook(row) // outside rs.mu: it may query, and stop the attempt
	rs.addPending(row)
	rs.mu.Lock()
	rs.hooks = append(rs.hooks, h)
	rs.mu.Unlock()
	rs.exit(suspendOutcome(wake))
	return nil, nil // not reached
}

// claimTimeout ends a waiting step whose timeout passed, unless what it
// waited for was delivered first.
func (rs *runState) claimTimeout(ctx context.Context, key, kind string) (json.RawMessage, error) {
	c := rs.c
	msg := "timed out"
	var claimed bool
	if err := c.pool.QueryRow(ctx, c.q.ClaimTimeout, rs.runID, key, msg).Scan(&claimed); err != nil {
		rs.stop(ctx, err)
	}
	if claimed {
		rs.setMemo(&stepRow{Key: key, Kind: kind, Status: stepTimedOut, Attempts: 1, Error: &msg})
		return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, ErrEventTimeout)
	}
	var status string
	var out []byte
	var errText *string
	var attempts int
	if err := c.pool.QueryRow(ctx, c.q.GetStep, rs.runID, key).Scan(&status, &out, &errText, &attempts); err != nil {
		rs.stop(ctx, err)
	}
	rs.setMemo(&stepRow{Key: key, Kind: kind, Status: status, Attempts: attempts, Output: out, Error: errText})
	switch status {
	case stepCompleted:
		return out, nil
	case stepTimedOut:
		return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, ErrEventTimeout)
	default:
		return nil, &StepError{StepID: key, Attempts: max(attempts, 1), Message: failure.Message(deref(errText))}
	}
}

func (rs *runState) setMemo(row *stepRow) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if old := rs.memo[row.Key]; old != nil {
		row.Seq = old.Seq
	}
	rs.memo[row.Key] = row
}

// startChild creates the invoked run, in the suspending transaction.
func (rs *runState) startChild(ctx context.Context, tx pgx.Tx, row *stepRow, opts InvokeOpts) error {
	id, err := rs.c.invokeTx(ctx, tx, opts.Function, opts.Data, rs.runID, row.Key)
	if err != nil {
		err = fmt.Errorf("durable: invoke %q of %q: could not start the run: %w", row.Key, opts.Function, err)
		var pg *pgconn.PgError
		if !errors.As(err, &pg) && ctx.Err() == nil && !isConnError(err) {
			// The library's own refusal (an idempotency key taken, an
			// unknown function, data too large): the step fails.
			return &stepFailure{err: err}
		}
		return err
	}
	rs.mu.Lock()
	row.ChildRun = &id
	rs.mu.Unlock()
	return nil
}

// registerWait stores a wait, in the suspending transaction, unless a
// matching event was committed since the wait began (its snapshot). Senders
// of the event name take the same lock (shared), so an event is either
// committed before this looks (and found here) or sent after the wait is
// stored (and finds it).
func (rs *runState) registerWait(ctx context.Context, tx pgx.Tx, row *stepRow, opts WaitOpts, snapshot string, began, wake time.Time) (bool, error) {
	c := rs.c
	if _, err := tx.Exec(ctx, c.q.LockEventName, []string{opts.Event}); err != nil {
		return false, err
	}
	// The events since the wait began, a page at a time (keyset on
	// (received_at, id)) until one matches: however many others came
	// first, none is skipped, and no query reads more than a page. The
	// pages are stable: senders of the name wait for the lock held here.
	// Rows are read one by one, so only the match is kept.
	const page = 1000
	trigger := rs.trigger.AsMap()
	afterAt, afterID := began.Add(-time.Hour), ""
	for {
		rows, err := tx.Query(ctx, c.q.EventsSince, opts.Event, snapshot, began, afterAt, afterID, page)
		if err != nil {
			return false, err
		}
		n := 0
		var out []byte
		for rows.Next() {
			var e eventJSON
			if err := rows.Scan(&e.ID, &e.Name, &e.Data, &e.TS, &afterAt); err != nil {
				rows.Close()
				return false, err
			}
			n, afterID = n+1, e.ID
			ok := true
			if opts.If != "" {
				if ok, err = c.router.EvalWait(opts.If, trigger, e.AsMap()); err != nil {
					ok = false
				}
			}
			if ok {
				if out, err = json.Marshal(e); err != nil {
					rows.Close()
					return false, err
				}
				break
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return false, err
		}
		if out != nil {
			rs.mu.Lock()
			row.Status, row.Output, row.WakeAt = stepCompleted, out, nil
			rs.mu.Unlock()
			return true, nil
		}
		if n < page {
			break // no more events
		}
	}
	return false, c.router.InsertWait(ctx, tx, rs.runID, row.Key, opts.Event, opts.If, rs.trigger, wake)
}

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
		ids, _, err := rs.c.router.Send(ctx, tx, prepared, true)
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
