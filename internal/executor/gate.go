package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/store"
)

// Flow control at the start of an attempt: Concurrency and Throttle are
// gates an attempt passes (durable_admit, in the migration) before its
// claim, in the claim's transaction. An attempt refused waits, holding no
// slot, in the gate's queue: its job is completed and the run continues in
// a job due when the gate lets it through (a concurrency gate makes it
// available when a slot frees; a throttle gate's turn is a time).

// errParked ends an attempt that a gate refused: the run waits at the gate.
var errParked = errors.New("durable: the run waits at a flow-control gate")

// admitAndClaim passes the run's gates and claims it, in one transaction.
// Refused, it parks the run (see above) and returns errParked.
func (rs *runState) admitAndClaim(ctx context.Context, status string) error {
	a := rs.e.router.Gates(ctx, rs.def.ID, rs.def.Flow, rs.trigger, rs.runID)
	tx, err := rs.e.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var due *time.Time
	err = tx.QueryRow(ctx, rs.e.q.Admit, pgx.NamedArgs{
		"run_id": rs.runID, "worker": rs.owner.Worker, "gates": a.Gates, "limits": a.Limits,
		"priority": a.Priority, "throttle": a.Throttle, "emission": a.Emission, "burst": a.Burst,
		"recover": rs.e.cfg.RecoverAfter.Seconds(), "channel": rs.e.router.Channel(),
	}).Scan(&due)
	if err != nil {
		return fmt.Errorf("durable: run %s: flow control: %w", rs.runID, err)
	}
	if due == nil {
		tag, err := tx.Exec(ctx, rs.e.q.ClaimRun, rs.runID, rs.owner.Worker, rs.epoch, rs.owner.Token)
		if err != nil {
			return fmt.Errorf("durable: claiming run %s: %w", rs.runID, err)
		}
		if tag.RowsAffected() == 0 {
			return rs.fenceFailed(ctx, tx)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("durable: claiming run %s: %w", rs.runID, err)
		}
		rs.epoch++
		rs.claimed, rs.gated = true, true
		return nil
	}
	// Parked: this job is done; the run continues in a job due when the
	// gate lets it through. The run keeps its status (queued, or running
	// for a run resuming after a sleep or a wait) and its wake_at clear:
	// its job's schedule is the gate's business.
	next, err := rs.continuation(ctx, tx, *due)
	if err != nil {
		return err
	}
	if _, err := rs.commitIn(ctx, tx, commitParams{status: status, release: true, errText: rs.lastErr,
		completeJob: true, newJobID: &next}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("durable: run %s: parking at a gate: %w", rs.runID, err)
	}
	if time.Until(*due) < time.Hour {
		rs.e.cfg.KickWaker(*due)
	}
	return errParked
}

// claimedEvents reads the run's events after its claim: for a run that
// collects events (Debounce, Batch), the claim closed the collection.
func (rs *runState) claimedEvents(ctx context.Context) ([]store.Event, error) {
	var raw []byte
	if err := rs.e.pool.QueryRow(ctx, rs.e.q.ClaimedEvents, rs.runID).Scan(&raw); err != nil {
		return nil, fmt.Errorf("durable: run %s: reading its events: %w", rs.runID, err)
	}
	var evs []store.Event
	if err := json.Unmarshal(raw, &evs); err != nil {
		return nil, fmt.Errorf("durable: run %s: decoding its events: %w", rs.runID, err)
	}
	return evs, nil
}
