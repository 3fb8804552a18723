package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
)

// maxStepID bounds a step ID's length.
const maxStepID = 256

func sleepUntil(ctx context.Context, id string, until func() time.Time) error {
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return err
	}
	rs.mu.Lock()
	row := rs.lookup(key)
	rs.mu.Unlock()
	if row != nil {
		switch {
		case row.Status == stepCompleted:
			return nil
		case row.Status == stepSleeping && row.WakeAt != nil && time.Until(*row.WakeAt) > 0:
			rs.exit(suspendOutcome(*row.WakeAt))
		case row.Status == stepSleeping:
			rs.addPending(&stepRow{Key: key, Seq: row.Seq, Kind: "sleep", Status: stepCompleted, Attempts: 1, WakeAt: row.WakeAt})
			return nil
		}
	}
	if err := rs.boundary(ctx, key, false); err != nil {
		return err
	}
	wake := until().UTC()
	if rs.e.hooks.skipSleeps() {
		wake = time.Now().UTC() // durabletest: sleeps resolve at once
	}
	seq := rs.newSeq()
	if time.Until(wake) <= 0 {
		rs.addPending(&stepRow{Key: key, Seq: seq, Kind: "sleep", Status: stepCompleted, Attempts: 1, WakeAt: &wake})
		return nil
	}
	rs.addPending(&stepRow{Key: key, Seq: seq, Kind: "sleep", Status: stepSleeping, WakeAt: &wake})
	rs.exit(suspendOutcome(wake))
	return nil // not reached
}

// enterStep checks that a step is called where steps may be, and returns
// the run and the step's key.
func enterStep(ctx context.Context, id string, nilFn bool) (*runState, string, error) {
	if ctx == nil {
		return nil, "", fmt.Errorf("durable: step %q: nil context", id)
	}
	rs, _ := ctx.Value(runKey{}).(*runState)
	if rs == nil {
		return nil, "", fmt.Errorf("durable: step %q called outside a durable function (pass the context the function received)", id)
	}
	if outer, ok := ctx.Value(inStepKey{}).(string); ok {
		return nil, "", failure.NonRetriable(fmt.Errorf("durable: step %q called inside step %q: steps cannot be nested", id, outer))
	}
	if id == "" {
		return nil, "", failure.NonRetriable(errors.New("durable: a step ID is required"))
	}
	if len(id) > maxStepID || !utf8.ValidString(id) || strings.ContainsRune(id, 0) {
		return nil, "", failure.NonRetriable(fmt.Errorf("durable: step %q: an ID must be valid UTF-8 without NUL, at most %d bytes", id, maxStepID))
	}
	if nilFn {
		return nil, "", failure.NonRetriable(fmt.Errorf("durable: step %q: fn is nil", id))
	}
	rs.mu.Lock()
	if rs.end != nil {
		rs.mu.Unlock()
		runtime.Goexit()
	}
	n := rs.counters[id]
	rs.counters[id] = n + 1
	rs.mu.Unlock()
	if n == 0 {
		return rs, id, nil
	}
	return rs, fmt.Sprintf("%s:%d", id, n), nil
}

// step runs (or replays) one Step or StepTx.
func (rs *runState) step(ctx context.Context, key, kind string,
	plain func(context.Context) (json.RawMessage, error),
	inTx func(context.Context, pgx.Tx) (json.RawMessage, error),
) (json.RawMessage, error) {
	rs.mu.Lock()
	row := rs.lookup(key)
	rs.mu.Unlock()
	attempts, seq := 0, -1
	if row != nil {
		switch row.Status {
		case stepCompleted:
			return row.Output, nil
		case stepFailed:
			rs.mu.Lock()
			rs.noteFailedStep(key)
			rs.mu.Unlock()
			return nil, &failure.StepFailed{StepID: key, Attempts: row.Attempts, Message: failure.Message(store.Deref(row.Error))}
		case stepRetrying:
			if row.WakeAt != nil && time.Until(*row.WakeAt) > 0 {
				rs.exit(suspendOutcome(*row.WakeAt))
			}
			attempts, seq = row.Attempts, row.Seq
		}
	}
	if err := rs.boundary(ctx, key, true); err != nil {
		return nil, err
	}
	// Input.Attempt is a value the call received: once a step executed in
	// this call, a step at another attempt restarts the call (its steps
	// replay) so that Input.Attempt is this step's inside it.
	rs.mu.Lock()
	restart := rs.executed > 0 && attempts != rs.callAttempt
	if !restart {
		rs.executed++
	}
	rs.mu.Unlock()
	if restart {
		rs.exit(suspendOutcome(time.Now()))
	}
	if seq < 0 {
		seq = rs.newSeq()
	}
	if out, ok := rs.e.hooks.stub(key); ok {
		// durabletest stubbed this step: its result, without running it.
		rs.completed(&stepRow{Key: key, Seq: seq, Kind: kind, Status: stepCompleted, Attempts: attempts + 1, Output: out})
		return out, nil
	}
	sctx := context.WithValue(ctx, inStepKey{}, key)
	var obs stepObs // telemetry of this executed attempt (telemetry.go)
	if rs.e.tel != nil {
		sctx = rs.beginStep(sctx, &obs, key, attempts+1)
		defer rs.endStep(ctx, &obs)
	}
	var out json.RawMessage
	var err error
	if inTx != nil {
		out, err = rs.runTx(sctx, key, kind, seq, attempts+1, inTx)
	} else {
		out, err = protect(func() (json.RawMessage, error) { return plain(sctx) })
		if err == nil {
			err = rs.checkOutput(key, out)
		}
		if err == nil {
			rs.completed(&stepRow{Key: key, Seq: seq, Kind: kind, Status: stepCompleted, Attempts: attempts + 1, Output: out})
			return out, nil
		}
	}
	if err == nil {
		return out, nil
	}
	obs.err = err
	return nil, rs.stepFailed(ctx, key, seq, kind, attempts+1, err)
}

// runTx runs a StepTx attempt: the user's writes, the pending steps, this
// step's row and the fence commit together. An error of fn is the step's;
// a failure of the step's own commit is the step's when Postgres refuses
// the data, and ends the attempt when it is transient.
func (rs *runState) runTx(ctx context.Context, key, kind string, seq, attempt int, fn func(context.Context, pgx.Tx) (json.RawMessage, error)) (json.RawMessage, error) {
	tx, err := rs.e.pool.Begin(ctx)
	if err != nil {
		rs.stop(ctx, fmt.Errorf("durable: step %q: begin: %w", key, err))
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	self := &router.SelfCancel{RunID: rs.runID}
	out, err := protect(func() (json.RawMessage, error) { return fn(router.WithSelfCancel(ctx, self), tx) })
	if err != nil {
		return nil, err
	}
	if err := rs.checkOutput(key, out); err != nil {
		return nil, err
	}
	row := &stepRow{Key: key, Seq: seq, Kind: kind, Status: stepCompleted, Attempts: attempt, Output: out}
	rs.mu.Lock()
	rs.pending = append(rs.pending, row)
	rs.mu.Unlock()
	res, err := rs.commitIn(ctx, tx, commitParams{status: store.RunRunning})
	if err != nil {
		rs.dropPending(row)
		if errors.Is(err, errRunCancelled) && self.Hit {
			// The step's own events cancelled its run (its CancelOn): they
			// commit, with the cancellation, and the attempt ends.
			if cerr := tx.Commit(ctx); cerr != nil {
				rs.stop(ctx, fmt.Errorf("durable: step %q: commit: %w", key, cerr))
			}
			rs.exit(cancelled(errRunCancelled))
		}
		if rs.permanent(err) {
			return nil, err
		}
		rs.stop(ctx, err)
	}
	if err := tx.Commit(ctx); err != nil {
		rs.dropPending(row)
		if rs.permanent(err) {
			return nil, fmt.Errorf("durable: step %q: commit: %w", key, err)
		}
		rs.stop(ctx, fmt.Errorf("durable: step %q: commit: %w", key, err))
	}
	rs.applyCommit(res)
	rs.mu.Lock()
	rs.stateBytes += len(out)
	rs.mu.Unlock()
	return out, nil
}

// stepFailed records a failed attempt: it suspends the run for the retry,
// or, once retries are exhausted (or for a non-retriable error), records
// the step as failed and returns the *StepError.
func (rs *runState) stepFailed(ctx context.Context, key string, seq int, kind string, attempts int, err error) error {
	if ctx.Err() != nil {
		// The attempt's context ended (cancellation, shutdown): this is
		// not the step's failure.
		rs.stop(ctx, ctx.Err())
	}
	if rs.ended() {
		runtime.Goexit()
	}
	row, at := rs.failedAttempt(key, seq, kind, attempts, err)
	rs.addPending(row)
	if row.Status == stepFailed {
		rs.mu.Lock()
		rs.noteFailedStep(key)
		rs.mu.Unlock()
		return &failure.StepFailed{StepID: key, Attempts: attempts, Message: failure.Message(*row.Error)}
	}
	rs.stepRetrying(ctx, key, attempts, err, at)
	rs.exit(suspendOutcome(at))
	return nil // not reached
}

// boundary runs before a new step executes: it enforces the step limit,
// stops at once if the run is being stopped, and commits finished steps.
//
// A step that suspends the run at once (a sleep, a wait, an invoke) passes
// flush false: its suspending commit records the finished steps too.
func (rs *runState) boundary(ctx context.Context, key string, flush bool) error {
	rs.mu.Lock()
	count := len(rs.memo) + len(rs.pending)
	_, known := rs.memo[key]
	pendingN := len(rs.pending)
	// Checkpointing: plain Step results wait, up to BufferedSteps of them
	// and at most MaxInterval, to be committed together.
	buffered := pendingN > 0 && pendingN < rs.def.BufferedSteps &&
		(rs.def.MaxInterval <= 0 || time.Since(rs.lastFlush) < rs.def.MaxInterval)
	rs.mu.Unlock()
	if !known && count >= rs.e.cfg.MaxSteps {
		return failure.NonRetriable(fmt.Errorf("durable: step %q: the run has reached the limit of %d steps (Config.MaxSteps)", key, rs.e.cfg.MaxSteps))
	}
	if ctx.Err() != nil {
		rs.stop(ctx, ctx.Err())
	}
	if rs.e.stopping.Load() {
		rs.stop(ctx, errShutdown)
	}
	if d := rs.def.MaxRuntime; d > 0 && time.Since(rs.began) >= d {
		// Checkpointing.MaxRuntime: hand the run (and its concurrency
		// slots) back; it continues in a new attempt, queued behind the
		// runs waiting at its gates.
		rs.mu.Lock()
		rs.handoff = true
		rs.mu.Unlock()
		rs.exit(suspendOutcome(time.Now()))
	}
	if pendingN > 0 && flush && !buffered {
		if err := rs.commit(ctx, rs.e.batch, commitParams{status: store.RunRunning}); err != nil {
			if rs.permanent(err) {
				// Postgres refused a finished step's output: that step
				// fails like any step error, and the run resumes at its
				// retry (or at once, to return its *StepError).
				if at, ok := rs.failRefused(ctx, err, rs.refusedSteps(ctx, err, nil)); ok {
					rs.exit(suspendOutcome(at))
				}
			}
			rs.stop(ctx, err)
		}
	}
	return nil
}

// lookup returns the memoized row of key; rs.mu must be held.
func (rs *runState) lookup(key string) *stepRow {
	for _, p := range rs.pending {
		if p.Key == key {
			return p
		}
	}
	return rs.memo[key]
}

func (rs *runState) newSeq() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	s := rs.nextSeq
	rs.nextSeq++
	return s
}

// completed records a plain step's result, to be committed at the next
// boundary, and counts it in the run's state.
func (rs *runState) completed(row *stepRow) {
	rs.addPending(row)
	rs.mu.Lock()
	rs.stateBytes += len(row.Output)
	rs.mu.Unlock()
}

func (rs *runState) addPending(row *stepRow) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for i, p := range rs.pending {
		if p.Key == row.Key {
			rs.pending[i] = row
			return
		}
	}
	rs.pending = append(rs.pending, row)
}

func (rs *runState) dropPending(row *stepRow) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for i, p := range rs.pending {
		if p == row {
			rs.pending = append(rs.pending[:i], rs.pending[i+1:]...)
			return
		}
	}
}

// checkOutput enforces the output limits.
func (rs *runState) checkOutput(key string, out json.RawMessage) error {
	if len(out) > rs.e.cfg.MaxStepOutput {
		return failure.NonRetriable(fmt.Errorf("durable: step %q: output is %d bytes, over the %d-byte limit (Config.MaxStepOutput)", key, len(out), rs.e.cfg.MaxStepOutput))
	}
	rs.mu.Lock()
	total := rs.stateBytes + len(out)
	rs.mu.Unlock()
	if total > rs.e.cfg.MaxRunState {
		return failure.NonRetriable(fmt.Errorf("durable: step %q: the run's state would be %d bytes, over the %d-byte limit (Config.MaxRunState)", key, total, rs.e.cfg.MaxRunState))
	}
	return nil
}

// protect calls fn, turning a panic into an error carrying the stack.
func protect(fn func() (json.RawMessage, error)) (out json.RawMessage, err error) {
	returned := false
	defer func() {
		if !returned {
			if p := recover(); p != nil {
				out, err = nil, failure.NewPanic(p)
			}
		}
	}()
	out, err = fn()
	returned = true
	return out, err
}
