package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/store"
)

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
			rs.mu.Lock()
			rs.noteFailedStep(key)
			rs.mu.Unlock()
			return nil, &failure.StepFailed{StepID: key, Attempts: max(row.Attempts, 1), Message: failure.Message(store.Deref(row.Error))}
		case stepTimedOut:
			return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, failure.ErrEventTimeout)
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
	e := rs.e
	msg := "timed out"
	var claimed bool
	if err := e.pool.QueryRow(ctx, e.q.ClaimTimeout, rs.runID, key, msg).Scan(&claimed); err != nil {
		rs.stop(ctx, err)
	}
	if claimed {
		rs.setMemo(&stepRow{Key: key, Kind: kind, Status: stepTimedOut, Attempts: 1, Error: &msg})
		return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, failure.ErrEventTimeout)
	}
	var status string
	var out []byte
	var errText *string
	var attempts int
	if err := e.pool.QueryRow(ctx, e.q.GetStep, rs.runID, key).Scan(&status, &out, &errText, &attempts); err != nil {
		rs.stop(ctx, err)
	}
	rs.setMemo(&stepRow{Key: key, Kind: kind, Status: status, Attempts: attempts, Output: out, Error: errText})
	switch status {
	case stepCompleted:
		return out, nil
	case stepTimedOut:
		return nil, fmt.Errorf("durable: %s %q timed out: %w", kind, key, failure.ErrEventTimeout)
	default:
		rs.mu.Lock()
		rs.noteFailedStep(key)
		rs.mu.Unlock()
		return nil, &failure.StepFailed{StepID: key, Attempts: max(attempts, 1), Message: failure.Message(store.Deref(errText))}
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
func (rs *runState) startChild(ctx context.Context, tx pgx.Tx, row *stepRow, function string, data any) error {
	id, err := rs.e.router.Invoke(ctx, tx, function, data, rs.e.cfg.MaxEventSize, rs.runID, row.Key)
	if err != nil {
		err = fmt.Errorf("durable: invoke %q of %q: could not start the run: %w", row.Key, function, err)
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
func (rs *runState) registerWait(ctx context.Context, tx pgx.Tx, row *stepRow, w wait, snapshot string, began, wake time.Time) (bool, error) {
	ex := rs.e
	if _, err := tx.Exec(ctx, ex.q.LockEventName, []string{w.event}); err != nil {
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
		rows, err := tx.Query(ctx, ex.q.EventsSince, w.event, snapshot, began, afterAt, afterID, page)
		if err != nil {
			return false, err
		}
		n := 0
		var out []byte
		for rows.Next() {
			var ev store.Event
			if err := rows.Scan(&ev.ID, &ev.Name, &ev.Data, &ev.TS, &afterAt); err != nil {
				rows.Close()
				return false, err
			}
			n, afterID = n+1, ev.ID
			ok := true
			if w.ifExpr != "" {
				if ok, err = ex.router.EvalWait(w.ifExpr, trigger, ev.AsMap()); err != nil {
					ok = false
				}
			}
			if ok {
				if out, err = json.Marshal(ev); err != nil {
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
	return false, ex.router.InsertWait(ctx, tx, rs.runID, row.Key, w.event, w.ifExpr, rs.trigger, wake)
}
