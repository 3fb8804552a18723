package executor

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// claimLoad loads the run and, in the same statement, claims it for
// owner (worker, token) when claim is set and nothing stands in the way
// (see ClaimLoad); it reports whether it claimed.
func (e *Executor) claimLoad(ctx context.Context, runID, worker, token string, claim bool) (*loadedRun, bool, error) {
	free, reserved := e.cfg.Claimable, e.cfg.Reserved
	if !claim {
		free, reserved = nil, nil
	}
	lr := &loadedRun{}
	var events, steps []byte
	var claimed bool
	err := e.batch.QueryRow(ctx, e.q.ClaimLoad, pgx.NamedArgs{
		"run_id": runID, "worker": worker, "token": token, "functions": free, "reserved": reserved,
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
