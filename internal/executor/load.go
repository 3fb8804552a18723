package executor

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// claimLoad loads the run and, in the same statement, claims it for
// owner (worker, token) when nothing stands in the way (see ClaimLoad).
func (e *Executor) claimLoad(ctx context.Context, runID, worker, token string) (*loadedRun, bool, error) {
	lr := &loadedRun{}
	var events, steps []byte
	var claimed bool
	err := e.pool.QueryRow(ctx, e.q.ClaimLoad, pgx.NamedArgs{
		"run_id": runID, "worker": worker, "token": token, "functions": e.cfg.Claimable, "reserved": e.cfg.Reserved,
		"recover": e.cfg.RecoverAfter.Seconds(),
	}).Scan(&claimed,
		&lr.functionID, &lr.status, &events, &lr.ownerWorker, &lr.epoch, &lr.fnAttempts, &lr.wakeAt, &lr.lastErr,
		&lr.startLate, &lr.finishLate, &lr.ownerAlive, &lr.logLines, &lr.age, &steps)
	if err != nil {
		return nil, false, err
	}
	if err := json.Unmarshal(events, &lr.events); err != nil {
		return nil, false, fmt.Errorf("durable: run %s: decoding events: %w", runID, err)
	}
	if err := json.Unmarshal(steps, &lr.steps); err != nil {
		return nil, false, fmt.Errorf("durable: run %s: decoding steps: %w", runID, err)
	}
	return lr, claimed, nil
}

func (e *Executor) loadRun(ctx context.Context, runID string) (*loadedRun, error) {
	lr := &loadedRun{}
	var events, steps []byte
	err := e.pool.QueryRow(ctx, e.q.LoadRun, runID, e.cfg.RecoverAfter.Seconds()).Scan(
		&lr.functionID, &lr.status, &events, &lr.ownerWorker, &lr.epoch, &lr.fnAttempts, &lr.wakeAt, &lr.lastErr,
		&lr.startLate, &lr.finishLate, &lr.ownerAlive, &lr.logLines, &lr.age, &steps)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(events, &lr.events); err != nil {
		return nil, fmt.Errorf("durable: run %s: decoding events: %w", runID, err)
	}
	if err := json.Unmarshal(steps, &lr.steps); err != nil {
		return nil, fmt.Errorf("durable: run %s: decoding steps: %w", runID, err)
	}
	return lr, nil
}
