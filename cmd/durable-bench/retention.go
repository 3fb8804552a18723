package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/maintenance"
	"github.com/pgdurable/durable/internal/store"
)

// pruneSteps is the number of no-op steps of each run the retention
// phase executes.
const pruneSteps = 20

// pruneSample is one durable.Step call: when it returned and how long it
// took.
type pruneSample struct {
	end time.Time
	d   time.Duration
}

// pruneLatency measures section 8: per-step latency of runs executing
// concurrently, first with no pruning, then while the retention pruner
// (as another process would run it: its own pool, the library's batch
// sizes, statement timeout and pauses) deletes a backlog of PruneRuns
// ended runs loaded with SQL. The target: p99 with pruning at most twice
// p99 without.
func (e *env) pruneLatency(ctx context.Context, base baseline) error {
	o := e.o
	e.section(fmt.Sprintf("8. Per-step latency while pruning %s ended runs (%d steps each)", withCommas(o.PruneRuns), 3))

	loaded, err := e.loadEndedRuns(ctx, o.PruneRuns)
	if err != nil {
		return err
	}
	e.printf("  loaded %s ended runs and %s steps with SQL in %s (ended about 40 days ago: 90%% completed, 5%% failed, 5%% cancelled; past every default retention)\n",
		withCommas(o.PruneRuns), withCommas(3*o.PruneRuns), loaded.Round(100*time.Millisecond))
	if plan, err := e.prunePlan(ctx); err == nil {
		e.printf("  the pruner's scan of ended runs: %s\n", plan)
	} else {
		e.printf("  (could not explain the pruner's query: %v)\n", err)
	}

	var (
		mu      sync.Mutex
		samples []pruneSample
		done    sync.Map // event ID -> chan struct{}
	)
	doneCh := func(id string) chan struct{} {
		ch, _ := done.LoadOrStore(id, make(chan struct{}, 1))
		return ch.(chan struct{})
	}
	fn := durable.NewFunction(durable.FunctionOpts{ID: "bench-prune", Triggers: []durable.Trigger{{Event: "bench/prune"}}},
		func(ctx context.Context, in durable.Input[json.RawMessage]) (int, error) {
			for i := range pruneSteps {
				t0 := time.Now()
				if _, err := durable.Step(ctx, fmt.Sprintf("s%d", i), func(context.Context) (int, error) { return i, nil }); err != nil {
					return 0, err
				}
				end := time.Now()
				mu.Lock()
				samples = append(samples, pruneSample{end, end.Sub(t0)})
				mu.Unlock()
			}
			select {
			case doneCh(in.Event.ID) <- struct{}{}:
			default:
			}
			return pruneSteps, nil
		})
	// The engine itself never prunes here: the pruner below is the only one.
	g, err := e.startEngineWith(ctx, e.schema, "prune", func(c *durable.Config) {
		c.Retention = durable.Retention{Interval: -1}
	}, fn)
	if err != nil {
		return err
	}
	defer func() { _ = g.close(ctx) }()

	// The workload: PruneConcurrency drivers, each sending an event and
	// waiting for its run's function to return, then the next.
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var wg sync.WaitGroup
	var workErr atomic.Pointer[error]
	for range o.PruneConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				if wctx.Err() == nil {
					workErr.CompareAndSwap(nil, &err)
					stopWork()
				}
			}
			for wctx.Err() == nil {
				ids, err := g.client.Send(wctx, durable.Event{Name: "bench/prune"})
				if err != nil {
					fail(fmt.Errorf("Send: %w", err))
					return
				}
				select {
				case <-doneCh(ids[0]):
					done.Delete(ids[0])
				case <-wctx.Done():
					return
				case <-time.After(30 * time.Second):
					fail(fmt.Errorf("run of event %s did not finish within 30s\n%s", ids[0], e.diagnose(ctx, "bench-prune")))
					return
				}
			}
		}()
	}
	wait := func(d time.Duration) error {
		select {
		case <-wctx.Done():
			if p := workErr.Load(); p != nil {
				return *p
			}
			return wctx.Err()
		case <-time.After(d):
			return nil
		}
	}

	// Window A: no pruning, after a warm-up.
	if err := wait(time.Second); err != nil {
		return err
	}
	aStart := time.Now()
	if err := wait(o.PruneWindow); err != nil {
		return err
	}
	aEnd := time.Now()

	// Window B: from the pruner's first batch, while it prunes, for as long
	// as window A at most.
	prunePool, err := e.pool(ctx, "pruner", 4, nil, e.o.EngineParams)
	if err != nil {
		return err
	}
	defer prunePool.Close()
	pruner, err := e.newPruner(prunePool)
	if err != nil {
		return err
	}
	var batches atomic.Int64
	firstBatch := make(chan time.Time, 1)
	pruner.SetHook(func(stage, category string, n int) {
		if stage == "locked" {
			select {
			case firstBatch <- time.Now():
			default:
			}
		}
		if stage == "batch" {
			batches.Add(1)
		}
	})
	pctx, stopPrune := context.WithCancel(ctx)
	defer stopPrune()
	pruneDone := make(chan error, 1)
	pruneEnd := atomic.Pointer[time.Time]{}
	go func() {
		var err error
		for pctx.Err() == nil {
			var c maintenance.PruneCounts
			c, _, err = pruner.Sweep(pctx)
			if err != nil || c.Runs() == 0 {
				break
			}
		}
		now := time.Now()
		pruneEnd.Store(&now)
		pruneDone <- err
	}()
	var bStart time.Time
	select {
	case bStart = <-firstBatch:
	case <-time.After(30 * time.Second):
		return errors.New("the pruner did not start within 30s")
	}
	select {
	case <-time.After(time.Until(bStart.Add(o.PruneWindow))):
	case err := <-pruneDone:
		pruneDone <- err
	case <-wctx.Done():
		if p := workErr.Load(); p != nil {
			return *p
		}
		return wctx.Err()
	}
	bEnd := time.Now()
	if t := pruneEnd.Load(); t != nil && t.Before(bEnd) {
		bEnd = *t
	}
	stopWork()
	wg.Wait()
	if p := workErr.Load(); p != nil {
		return *p
	}
	stopPrune()
	pruneStopped := time.Now()
	if t := pruneEnd.Load(); t != nil {
		pruneStopped = *t
	}
	if err := <-pruneDone; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("pruner: %w", err)
	}
	if err := g.close(ctx); err != nil {
		return err
	}
	var left int
	if err := prunePool.QueryRow(ctx, "SELECT count(*) FROM "+e.table("durable_run")+" WHERE function_id = 'bench-old'").Scan(&left); err != nil {
		return fmt.Errorf("counting the runs left: %w", err)
	}
	pruned := o.PruneRuns - left

	mu.Lock()
	a, b := samplesWithin(samples, aStart, aEnd), samplesWithin(samples, bStart, bEnd)
	mu.Unlock()
	if len(a) == 0 || len(b) == 0 {
		return fmt.Errorf("no steps measured (%d without pruning, %d with)", len(a), len(b))
	}
	p50a, p99a := percentile(a, 0.5), percentile(a, 0.99)
	p50b, p99b := percentile(b, 0.5), percentile(b, 0.99)
	ratio := float64(p99b) / float64(p99a)
	e.printf("  workload: %d runs at once, %d no-op steps each; a sample is one durable.Step call\n", o.PruneConcurrency, pruneSteps)
	e.printf("  one-row commit (section 1): p50 %s, p99 %s\n", ms(base.CommitP50), ms(base.CommitP99))
	e.printf("  without pruning (%s): %s steps (%.0f/s), p50 %s (%.2fx commit p50), p99 %s (%.2fx commit p99), max %s\n",
		aEnd.Sub(aStart).Round(100*time.Millisecond), withCommas(len(a)), float64(len(a))/aEnd.Sub(aStart).Seconds(),
		ms(p50a), float64(p50a)/float64(base.CommitP50), ms(p99a), float64(p99a)/float64(base.CommitP99), ms(a[len(a)-1]))
	e.printf("  while pruning   (%s): %s steps (%.0f/s), p50 %s (%.2fx commit p50), p99 %s (%.2fx commit p99), max %s\n",
		bEnd.Sub(bStart).Round(100*time.Millisecond), withCommas(len(b)), float64(len(b))/bEnd.Sub(bStart).Seconds(),
		ms(p50b), float64(p50b)/float64(base.CommitP50), ms(p99b), float64(p99b)/float64(base.CommitP99), ms(b[len(b)-1]))
	rate := float64(pruned) / pruneStopped.Sub(bStart).Seconds()
	e.printf("  pruner: %s runs (with their steps) deleted in %d batches of up to %d, each followed by a pause twice as long; %.0f runs/s",
		withCommas(pruned), batches.Load(), maintenance.RunBatch, rate)
	if left > 0 && rate > 0 {
		e.printf(", the rest (%s) would take about %s more", withCommas(left), (time.Duration(float64(left)/rate) * time.Second).Round(time.Second))
	}
	e.printf("\n")
	e.printf("  p99 while pruning / without: %.2fx; target <= 2.00x -> %s\n", ratio, verdict(ratio <= 2))
	e.summarize("per-step p99 while pruning (vs without)", fmt.Sprintf("%s (%.2fx %s)", ms(p99b), ratio, ms(p99a)), "<= 2x", verdict(ratio <= 2))
	return nil
}

// samplesWithin returns the sorted latencies of the samples that ended within
// [from, to].
func samplesWithin(s []pruneSample, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, x := range s {
		if !x.end.Before(from) && !x.end.After(to) {
			out = append(out, x.d)
		}
	}
	slices.Sort(out)
	return out
}

// newPruner builds the library's pruner, with the default retention, on
// pool.
func (e *env) newPruner(pool *pgxpool.Pool) (*maintenance.Pruner, error) {
	q, err := store.Load(e.schema)
	if err != nil {
		return nil, err
	}
	ret := maintenance.Retention{
		Completed: durable.DefaultRetainCompleted, Failed: durable.DefaultRetainFailed,
		Cancelled: durable.DefaultRetainCancelled, Events: durable.DefaultRetainEvents,
		Interval: durable.DefaultRetainInterval,
	}
	return maintenance.NewPruner(pool, q, e.logger.With("phase", "pruner"), ret), nil
}

// loadEndedRuns inserts n ended runs with three steps each, in chunks.
func (e *env) loadEndedRuns(ctx context.Context, n int) (time.Duration, error) {
	conn, err := e.conn(ctx, "prune-load")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	t0 := time.Now()
	if err := e.insertEndedRuns(ctx, conn, n, endedRuns{prefix: "old-", fn: "bench-old",
		ago: 40 * 24 * time.Hour, spacing: 50 * time.Millisecond, mixed: true}); err != nil {
		return 0, err
	}
	if err := e.vacuumAnalyze(ctx, conn, "durable_run", "durable_step"); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// prunePlan names the scan nodes of the plan of the pruner's query on
// ended runs.
func (e *env) prunePlan(ctx context.Context) (string, error) {
	conn, err := e.conn(ctx, "explain")
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	q, err := store.Load(e.schema)
	if err != nil {
		return "", err
	}
	var plan []map[string]any
	err = conn.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+q.PruneRuns,
		[]string{"completed", "skipped"}, time.Now().Add(-durable.DefaultRetainCompleted), time.Time{}, "", maintenance.RunBatch).Scan(&plan)
	if err != nil {
		return "", err
	}
	var scans []string
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		if t, _ := n["Node Type"].(string); strings.HasSuffix(t, "Scan") && t != "CTE Scan" {
			s := t
			if idx, _ := n["Index Name"].(string); idx != "" {
				s += " using " + idx
			}
			if rel, _ := n["Relation Name"].(string); rel != "" && !strings.Contains(s, " using ") {
				s += " on " + rel
			}
			if !slices.Contains(scans, s) {
				scans = append(scans, s)
			}
		}
		if kids, ok := n["Plans"].([]any); ok {
			for _, k := range kids {
				if m, ok := k.(map[string]any); ok {
					walk(m)
				}
			}
		}
	}
	if len(plan) > 0 {
		if root, ok := plan[0]["Plan"].(map[string]any); ok {
			walk(root)
		}
	}
	return strings.Join(scans, "; "), nil
}

// withCommas formats n with thousands separators.
func withCommas(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + withCommas(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
