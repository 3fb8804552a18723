package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/store"
)

// Flow control decided when an event triggers a run, in the transaction
// that stores the event: RateLimit and Singleton may turn the run away
// (it is recorded as skipped, with the reason), Debounce and Batch fold
// the event into a queued run that collects events. Concurrency and
// Throttle are decided later, when an attempt starts (executor/gate.go).
//
// Lock order (after the event names' advisory locks): a Singleton key's
// row, then the run it names (a cancellation); a collecting key's row
// (durable_collect), then its run. A claim that starts a collecting run
// locks only the run row, which closes the collection: an event that then
// finds the run no longer queued starts a new one.

// flowRuns applies creation-time flow control to runs an event triggered
// and returns those to create as usual (some with a collecting schedule
// set).
//
// A run that starts collecting is created here at once (so that the next
// event of the same call, for the same key, folds into it); created counts
// them.
func (rt *Router) flowRuns(ctx context.Context, tx pgx.Tx, runs []pendingRun, notifyInTx bool) (out []pendingRun, created int, err error) {
	singletons := map[[2]string]bool{} // keys taken by runs of this same call
	for _, r := range runs {
		cfg := r.cfg
		if cfg.RateLimit == nil && cfg.Singleton == nil && cfg.Debounce == nil && cfg.Batch == nil {
			out = append(out, r)
			continue
		}
		ev := r.events[0]
		evMap := ev.AsMap()
		if rl := cfg.RateLimit; rl != nil {
			key := rt.flowKey(ctx, r.functionID, "RateLimit.Key", rl.Key, evMap)
			period := time.Duration(rl.PeriodMS) * time.Millisecond
			emission := period / time.Duration(rl.Limit)
			err := tx.QueryRow(ctx, rt.q.RateLimitTake, "r:"+r.functionID+":"+key, emission, period-emission).Scan(new(int))
			if errors.Is(err, pgx.ErrNoRows) {
				reason := fmt.Sprintf("skipped: over the rate limit (RateLimit: %d per %s, key %q)", rl.Limit, period, key)
				if err := rt.skipRun(ctx, tx, r, reason); err != nil {
					return nil, 0, err
				}
				continue
			}
			if err != nil {
				return nil, 0, fmt.Errorf("durable: rate limit of %s: %w", r.functionID, err)
			}
		}
		if s := cfg.Singleton; s != nil {
			key := rt.flowKey(ctx, r.functionID, "Singleton.Key", s.Key, evMap)
			r.id = ids.New()
			ok, err := rt.singleton(ctx, tx, r, key, s.Mode, singletons)
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				continue
			}
		}
		if b := cfg.Batch; b != nil && b.MaxSize > 1 {
			if b.If != "" {
				ok, err := rt.evalFilter(b.If, evMap)
				if err != nil {
					rt.filterFailed(ctx, "Batch.If", err, "function_id", r.functionID, "event_id", ev.ID)
				}
				if err != nil || !ok {
					out = append(out, r) // runs alone, at once
					continue
				}
			}
			key := rt.flowKey(ctx, r.functionID, "Batch.Key", b.Key, evMap)
			n, err := rt.collectOrCreate(ctx, tx, r, key, false, notifyInTx)
			if err != nil {
				return nil, 0, err
			}
			created += n
			continue
		}
		if d := cfg.Debounce; d != nil {
			key := rt.flowKey(ctx, r.functionID, "Debounce.Key", d.Key, evMap)
			n, err := rt.collectOrCreate(ctx, tx, r, key, true, notifyInTx)
			if err != nil {
				return nil, 0, err
			}
			created += n
			continue
		}
		out = append(out, r)
	}
	return out, created, nil
}

// collectOrCreate folds r's event into its key's collecting run, or
// creates r as the key's new collecting run (its job due when the
// collection ends); it returns the runs it created (0 or 1).
func (rt *Router) collectOrCreate(ctx context.Context, tx pgx.Tx, r pendingRun, key string, debounce, notifyInTx bool) (int, error) {
	folded, err := rt.collect(ctx, tx, &r, key, debounce)
	if err != nil || folded {
		return 0, err
	}
	ids, err := rt.insertRuns(ctx, tx, []pendingRun{r}, notifyInTx)
	if err != nil {
		return 0, err
	}
	return 1, rt.scheduleRun(ctx, tx, ids[0], r.startAt)
}

// flowKey evaluates a key expression; one that fails to evaluate puts the
// event in the function's shared key "" (logged).
func (rt *Router) flowKey(ctx context.Context, functionID, field, src string, ev map[string]any) string {
	if src == "" {
		return ""
	}
	k, err := rt.evalKey(src, ev)
	if err != nil {
		rt.logger.WarnContext(ctx, "durable: a flow-control key failed to evaluate; the event uses the function's shared key",
			"function_id", functionID, "option", field, "expr", src, "error", err)
		return ""
	}
	return k
}

// skipRun records a run that flow control turned away.
func (rt *Router) skipRun(ctx context.Context, tx pgx.Tx, r pendingRun, reason string) error {
	id := r.id
	if id == "" {
		id = ids.New()
	}
	evs, err := json.Marshal(r.events)
	if err != nil {
		return err
	}
	var parent, parentStep *string
	if r.parentRunID != "" {
		parent, parentStep = &r.parentRunID, &r.parentStep
	}
	if _, err := tx.Exec(ctx, rt.q.InsertSkippedRun, id, r.functionID, r.events[0].ID, evs, reason, parent, parentStep); err != nil {
		return fmt.Errorf("durable: recording a skipped run of %s: %w", r.functionID, err)
	}
	if rt.tel != nil {
		rt.tel.RunEnded(ctx, r.functionID, store.RunSkipped)
	}
	return nil
}

// singleton decides a Singleton key for r (whose id is set): false when r
// is skipped (recorded); true when r takes the key (an active holder was
// cancelled, in SingletonCancel mode).
func (rt *Router) singleton(ctx context.Context, tx pgx.Tx, r pendingRun, key, mode string, taken map[[2]string]bool) (bool, error) {
	k := [2]string{r.functionID, key}
	for {
		var holder, status string
		err := tx.QueryRow(ctx, rt.q.SingletonHolder, r.functionID, key).Scan(&holder, &status)
		exists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return false, fmt.Errorf("durable: singleton of %s: %w", r.functionID, err)
		}
		// A holder created by this same call is not inserted yet: active.
		active := exists && (status == store.RunQueued || status == store.RunRunning || (status == "" && taken[k]))
		if active {
			if mode == "skip" {
				return false, rt.skipRun(ctx, tx, r, fmt.Sprintf("skipped: run %s is active for Singleton key %q", holder, key))
			}
			if status != "" {
				if _, err := rt.CancelRun(ctx, tx, holder, fmt.Sprintf("cancelled by Singleton (mode cancel, key %q): run %s replaced it", key, r.id)); err != nil {
					return false, err
				}
			}
		}
		// A new key is inserted only if no one did meanwhile (else its
		// holder is read again, under its lock); a known key is taken.
		err = tx.QueryRow(ctx, rt.q.SingletonTake, r.functionID, key, r.id, exists).Scan(new(int))
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("durable: singleton of %s: %w", r.functionID, err)
		}
		taken[k] = true
		return true, nil
	}
}

// collect folds r's event into the queued run collecting its key (true),
// or makes r that key's collecting run (false: the caller creates it; its
// job is scheduled once inserted, see scheduleCollectors).
func (rt *Router) collect(ctx context.Context, tx pgx.Tx, r *pendingRun, key string, debounce bool) (bool, error) {
	ev := r.events[0]
	var runID string
	var size int
	var first time.Time
	// The key's row made sure of, then locked and read: one round trip.
	b := &pgx.Batch{}
	b.Queue(rt.q.CollectLock, r.functionID, key)
	b.Queue(rt.q.CollectRead, r.functionID, key).QueryRow(func(row pgx.Row) error {
		return row.Scan(&runID, &size, &first)
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return false, fmt.Errorf("durable: collecting events for %s: %w", r.functionID, err)
	}
	if runID != "" {
		evJSON, err := json.Marshal(ev)
		if err != nil {
			return false, err
		}
		var n int
		if debounce {
			err = tx.QueryRow(ctx, rt.q.CollectDebounce, runID, evJSON, ev.ID, ev.TS).Scan(&n)
		} else {
			err = tx.QueryRow(ctx, rt.q.CollectBatch, runID, evJSON, ev.ID).Scan(&n)
		}
		switch {
		case err == nil:
			if _, err := tx.Exec(ctx, rt.q.NoteRunEvent, ev.ID, runID); err != nil {
				return false, err
			}
			var due time.Time
			if debounce {
				d := r.cfg.Debounce
				due = time.Now().Add(time.Duration(d.PeriodMS) * time.Millisecond)
				if d.TimeoutMS > 0 {
					if limit := first.Add(time.Duration(d.TimeoutMS) * time.Millisecond); limit.Before(due) {
						due = limit
					}
				}
			} else if n >= r.cfg.Batch.MaxSize {
				due = time.Now() // full: it starts now, and the next event starts a new batch
				if _, err := tx.Exec(ctx, rt.q.CollectDone, r.functionID, key); err != nil {
					return false, err
				}
			}
			if !due.IsZero() {
				if err := rt.scheduleRun(ctx, tx, runID, due); err != nil {
					return false, err
				}
			}
			if !debounce && n < r.cfg.Batch.MaxSize {
				if _, err := tx.Exec(ctx, rt.q.CollectSet, r.functionID, key, runID, n); err != nil {
					return false, err
				}
			}
			return true, nil
		case errors.Is(err, pgx.ErrNoRows):
			// The collecting run started: this event begins a new one.
		default:
			return false, fmt.Errorf("durable: collecting events for %s: %w", r.functionID, err)
		}
	}
	if r.id == "" {
		r.id = ids.New()
	}
	if debounce {
		r.startAt = time.Now().Add(time.Duration(r.cfg.Debounce.PeriodMS) * time.Millisecond)
	} else {
		r.startAt = time.Now().Add(time.Duration(r.cfg.Batch.TimeoutMS) * time.Millisecond)
	}
	if _, err := tx.Exec(ctx, rt.q.CollectSet, r.functionID, key, r.id, 1); err != nil {
		return false, fmt.Errorf("durable: collecting events for %s: %w", r.functionID, err)
	}
	return false, nil
}

// scheduleRun moves a queued run's job to at (now: available at once),
// and tells this process's waker when it is due.
func (rt *Router) scheduleRun(ctx context.Context, tx pgx.Tx, runID string, at time.Time) error {
	if _, err := tx.Exec(ctx, rt.q.ScheduleJob, runID, at, rt.channel); err != nil {
		return fmt.Errorf("durable: scheduling run %s: %w", runID, err)
	}
	if rt.kickWaker != nil && at.After(time.Now()) {
		rt.kickWaker(at)
	}
	return nil
}

// maxPriority clamps Priority.Run, in seconds (±12 hours).
const maxPriority = 12 * 60 * 60

// GateArgs are the flow-control gates of a run (see durable_admit): its
// concurrency gates with their limits, its throttle gate, and its priority.
type GateArgs struct {
	Gates    []string
	Limits   []int32
	Priority int32
	Throttle *string
	Emission time.Duration
	Burst    int32
}

// Gates evaluates the gate keys and the priority of a run of functionID
// from its first event.
func (rt *Router) Gates(ctx context.Context, functionID string, f store.FunctionConfig, ev store.Event, runID string) GateArgs {
	evMap := ev.AsMap()
	a := GateArgs{Gates: []string{}, Limits: []int32{}}
	for _, c := range f.Concurrency {
		k := rt.flowKey(ctx, functionID, "Concurrency.Key", c.Key, evMap)
		g := "c:" + functionID + ":" + k
		if c.Scope == "shared" {
			g = "s:" + k
		}
		a.Gates, a.Limits = append(a.Gates, g), append(a.Limits, int32(c.Limit))
	}
	if t := f.Throttle; t != nil {
		g := "t:" + functionID + ":" + rt.flowKey(ctx, functionID, "Throttle.Key", t.Key, evMap)
		a.Throttle = &g
		a.Emission = max(time.Duration(t.PeriodMS)*time.Millisecond/time.Duration(t.Limit), time.Microsecond)
		a.Burst = int32(t.Burst)
	}
	if f.Priority != "" {
		a.Priority = rt.priority(ctx, functionID, f.Priority, evMap, runID)
	}
	return a
}

// priority evaluates Priority.Run: seconds, clamped to ±12 hours; a result
// that is not an integer counts as 0 (logged).
func (rt *Router) priority(ctx context.Context, functionID, src string, ev map[string]any, runID string) int32 {
	p, err := rt.exprs.Compile(src, expr.EventOnly)
	var v any
	if err == nil {
		v, err = p.Value(ev, nil)
	}
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case uint64:
		n = int64(min(x, maxPriority))
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
		rt.logger.WarnContext(ctx, "durable: Priority.Run did not yield an integer; the run's priority is 0",
			"run_id", runID, "function_id", functionID, "expr", src, "error", err)
		return 0
	}
	return int32(max(min(n, maxPriority), -maxPriority))
}

// enqueue decides, for new runs of functions with Concurrency or
// Throttle, whether each may start at once (durable_enqueue_many: a run
// for a gate with a backlog joins its queue without the gate's lock).
func (rt *Router) enqueue(ctx context.Context, tx pgx.Tx, runs []pendingRun, runIDs []string) error {
	var rids, gates, limits []string
	var prios, bursts []int32
	var throttles []*string
	var emissions []time.Duration
	for i, r := range runs {
		if runIDs[i] == "" || !r.cfg.Gated() || !r.startAt.IsZero() {
			continue // collecting runs pass their gates when they start
		}
		a := rt.Gates(ctx, r.functionID, r.cfg, r.events[0], runIDs[i])
		ls := make([]string, len(a.Limits))
		for j, l := range a.Limits {
			ls[j] = strconv.Itoa(int(l))
		}
		rids, gates, limits, prios = append(rids, runIDs[i]), append(gates, strings.Join(a.Gates, "\x1f")), append(limits, strings.Join(ls, ",")), append(prios, a.Priority)
		throttles, emissions, bursts = append(throttles, a.Throttle), append(emissions, a.Emission), append(bursts, a.Burst)
	}
	if len(rids) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, rt.q.Enqueue, rids, gates, limits, prios, rt.recoverAfter.Seconds(), throttles, emissions, bursts); err != nil {
		return fmt.Errorf("durable: flow control of new runs: %w", err)
	}
	return nil
}
