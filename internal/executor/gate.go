package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/riverjobs"
)

// Flow control at the start of an attempt: Concurrency and Throttle are
// gates an attempt passes (durable_admit, in the migration) before its
// claim, in the claim's transaction. An attempt refused waits, holding no
// slot, in the gate's queue: its job is completed and the run continues in
// a job due when the gate lets it through (a concurrency gate makes it
// available when a slot frees; a throttle gate's turn is a time).

// maxPriority clamps Priority.Run, in seconds (±12 hours).
const maxPriority = 12 * 60 * 60

// gateArgs are an attempt's gates, from the function's flow control and
// the run's first event.
type gateArgs struct {
	gates    []string
	limits   []int32
	priority int32
	throttle *string
	emission time.Duration
	burst    int32
}

// gateArgs evaluates the gate keys and the priority of a run.
func (rs *runState) gateArgs(ctx context.Context, ev store.Event) gateArgs {
	f := rs.def.Flow
	evMap := ev.AsMap()
	a := gateArgs{gates: []string{}, limits: []int32{}}
	for _, c := range f.Concurrency {
		k := rs.flowKey(ctx, "Concurrency.Key", c.Key, evMap)
		g := "c:" + rs.def.ID + ":" + k
		if c.Scope == "shared" {
			g = "s:" + k
		}
		a.gates, a.limits = append(a.gates, g), append(a.limits, int32(c.Limit))
	}
	if t := f.Throttle; t != nil {
		g := "t:" + rs.def.ID + ":" + rs.flowKey(ctx, "Throttle.Key", t.Key, evMap)
		a.throttle = &g
		a.emission = time.Duration(t.PeriodMS) * time.Millisecond / time.Duration(t.Limit)
		if a.emission <= 0 {
			a.emission = time.Microsecond
		}
		a.burst = int32(t.Burst)
	}
	if f.Priority != "" {
		a.priority = rs.priority(ctx, f.Priority, evMap)
	}
	return a
}

// flowKey evaluates a key expression; one that fails to evaluate puts the
// run in the function's shared bucket (key ""), logged.
func (rs *runState) flowKey(ctx context.Context, field, src string, ev map[string]any) string {
	if src == "" {
		return ""
	}
	p, err := rs.e.cfg.Exprs.Compile(src, expr.EventOnly)
	if err == nil {
		var k string
		if k, err = p.String(ev, nil); err == nil {
			return k
		}
	}
	rs.e.logger.WarnContext(ctx, "durable: a flow-control key failed to evaluate; the run uses the function's shared key",
		"run_id", rs.runID, "function_id", rs.def.ID, "option", field, "expr", src, "error", err)
	return ""
}

// priority evaluates Priority.Run: seconds, clamped to ±12 hours; a result
// that is not an integer counts as 0.
func (rs *runState) priority(ctx context.Context, src string, ev map[string]any) int32 {
	p, err := rs.e.cfg.Exprs.Compile(src, expr.EventOnly)
	var v any
	if err == nil {
		v, err = p.Value(ev, nil)
	}
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case uint64:
		n = int64(min(x, math.MaxInt64))
	case float64:
		if x == math.Trunc(x) && !math.IsInf(x, 0) {
			n = int64(max(min(x, maxPriority), -maxPriority))
			break
		}
		err = fmt.Errorf("result %v is not an integer", x)
	default:
		if err == nil {
			err = fmt.Errorf("result %v (%T) is not an integer", x, x)
		}
	}
	if err != nil {
		rs.e.logger.WarnContext(ctx, "durable: Priority.Run did not yield an integer; the run's priority is 0",
			"run_id", rs.runID, "function_id", rs.def.ID, "expr", src, "error", err)
		return 0
	}
	return int32(max(min(n, maxPriority), -maxPriority))
}

// errParked ends an attempt that a gate refused: the run waits at the gate.
var errParked = errors.New("durable: the run waits at a flow-control gate")

// admitAndClaim passes the run's gates and claims it, in one transaction.
// Refused, it parks the run (see above) and returns errParked.
func (rs *runState) admitAndClaim(ctx context.Context, status string) error {
	a := rs.gateArgs(ctx, rs.trigger)
	tx, err := rs.e.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var due *time.Time
	err = tx.QueryRow(ctx, rs.e.q.Admit, pgx.NamedArgs{
		"run_id": rs.runID, "worker": rs.owner.Worker, "gates": a.gates, "limits": a.limits,
		"priority": a.priority, "throttle": a.throttle, "emission": a.emission, "burst": a.burst,
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
	next, err := rs.e.river.InsertTx(ctx, tx, riverjobs.RunArgs{RunID: rs.runID}, &river.InsertOpts{
		Queue: rs.e.cfg.Queue, MaxAttempts: router.RunJobMaxAttempts, ScheduledAt: *due,
	})
	if err != nil {
		return fmt.Errorf("durable: run %s: inserting the job that waits at a gate: %w", rs.runID, err)
	}
	if _, err := rs.commitIn(ctx, tx, commitParams{status: status, release: true, errText: rs.lastErr,
		completeJob: true, newJobID: &next.Job.ID}); err != nil {
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
