package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/store"
)

// The attempt's writes: every one fenced (on the run's epoch for a full
// write, on the owner for a step recorded mid-attempt).

// commitParams say what one fenced write does besides recording the
// pending steps.
type commitParams struct {
	status      string
	release     bool // the attempt ends: clear the owner
	output      json.RawMessage
	errText     *string
	wakeAt      *time.Time
	completeJob bool   // a suspension: this attempt's job is done...
	newJobID    *int64 // ...and this job continues the run
}

type execer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// commit writes the pending steps and the run's new state in one statement,
// fenced on the owner token. It returns errRunCancelled or errLeaseLost
// when the fence fails. On success through a transaction, the caller must
// call applyCommit after the transaction commits.
func (rs *runState) commit(ctx context.Context, db execer, p commitParams) error {
	res, err := rs.commitIn(ctx, db, p)
	if err != nil {
		return err
	}
	rs.applyCommit(res)
	return nil
}

// commitResult is what a successful commitIn wrote, to apply to the
// attempt's state once its transaction commits.
type commitResult struct {
	pending  []*stepRow
	newOwner *store.Owner
	full     bool // the run row was written (its epoch bumped)
}

func (rs *runState) commitIn(ctx context.Context, db execer, p commitParams) (*commitResult, error) {
	rs.mu.Lock()
	pending := append([]*stepRow(nil), rs.pending...)
	epoch, claimed := rs.epoch, rs.claimed
	rs.mu.Unlock()
	var newOwner *store.Owner
	if !p.release {
		newOwner = &rs.owner
	}
	if p.status == store.RunRunning && !p.release && !p.completeJob && p.wakeAt == nil && claimed {
		// Mid-attempt: the run is ours already; record the steps only.
		ok, err := rs.e.q.CommitStepsIn(ctx, db, rs.runID, rs.owner, pending)
		if err != nil {
			return nil, fmt.Errorf("durable: recording run %s: %w", rs.runID, err)
		}
		if !ok {
			return nil, rs.fenceFailed(ctx, db)
		}
		return &commitResult{pending: pending, newOwner: newOwner}, nil
	}
	res, err := rs.e.q.CommitIn(ctx, db, store.CommitArgs{
		RunID: rs.runID, Owner: newOwner, Epoch: epoch, Status: p.status, Output: p.output, Error: p.errText,
		FnAttempts: rs.fnAttempts, WakeAt: p.wakeAt, Steps: pending,
		JobID: rs.jobID, CompleteJob: p.completeJob, NewJobID: p.newJobID,
		Channel: rs.e.router.Channel(), LogLines: max(rs.logBefore, rs.logN.Load()), Gated: rs.gated,
	})
	if err != nil {
		return nil, fmt.Errorf("durable: recording run %s: %w", rs.runID, err)
	}
	if res.Runs == 0 {
		return nil, rs.fenceFailed(ctx, db)
	}
	if res.Events > 0 {
		rs.e.cfg.KickRouter()
	}
	return &commitResult{pending: pending, newOwner: newOwner, full: true}, nil
}

// endDB is where the statement that ends the run goes: batched with other
// attempts' writes (see store.Batcher), unless the run passed flow-control
// gates, whose end takes gate locks in the order ARCHITECTURE.md gives (a
// batch of such ends could take them in another).
func (rs *runState) endDB() execer {
	if rs.gated {
		return store.Generic{DB: rs.e.pool}
	}
	return rs.e.batch
}

// applyCommit makes committed writes part of the memo.
func (rs *runState) applyCommit(r *commitResult) {
	pending, newOwner, fullWrite := r.pending, r.newOwner, r.full
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if fullWrite {
		rs.epoch++
	}
	rs.lastFlush = time.Now()
	rs.claimed = newOwner != nil
	for _, s := range pending {
		rs.memo[s.Key] = s
	}
	// Drop exactly the rows written; steps may have been added meanwhile
	// by parallel goroutines.
	rest := rs.pending[:0]
	for _, s := range rs.pending {
		written := false
		for _, w := range pending {
			if w == s {
				written = true
				break
			}
		}
		if !written {
			rest = append(rest, s)
		}
	}
	rs.pending = rest
}

// fenceFailed finds out why a fenced write matched no run. db is the
// connection or transaction of the write: inside a StepTx it sees a
// cancellation the step's own events made.
func (rs *runState) fenceFailed(ctx context.Context, db execer) error {
	var status string
	err := db.QueryRow(context.WithoutCancel(ctx), rs.e.q.RunStatus, rs.runID).Scan(&status)
	if err != nil {
		return fmt.Errorf("durable: run %s: %w", rs.runID, err)
	}
	if status == store.RunCancelled {
		return errRunCancelled
	}
	return errLeaseLost // another attempt wrote the run (or ended it)
}
