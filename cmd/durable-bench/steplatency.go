package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgdurable/durable"
)

// seqResult is what one run of the sequential-steps function measured
// from inside.
type seqResult struct {
	total    time.Duration
	attempts int // times the function body ran for this event (1 unless the run was retried)
}

// stepLatency measures section 2: StepRuns runs, one after the other, of a
// function doing StepsSeq sequential no-op steps. Each run is timed from
// inside the function, from just before the first Step call to just after
// the last Step returns; per-step latency is that over StepsSeq. Under the
// engine's design a step costs one commit (a step's row is written at the
// next step's boundary), so the reference is the one-row commit latency.
func (e *env) stepLatency(ctx context.Context, base baseline) error {
	o := e.o
	e.section(fmt.Sprintf("2. Per-step latency: %d sequential no-op durable.Step calls in one run", o.StepsSeq))

	var (
		mu      sync.Mutex
		results = map[string]*seqResult{} // by event ID
		bodies  atomic.Int64              // step bodies executed
	)
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "bench-seq",
		Triggers: []durable.Trigger{{Event: "bench/seq"}},
	}, func(ctx context.Context, in durable.Input[json.RawMessage]) (int, error) {
		t0 := time.Now()
		sum := 0
		for i := range o.StepsSeq {
			v, err := durable.Step(ctx, fmt.Sprintf("step-%d", i), func(context.Context) (int, error) {
				bodies.Add(1)
				return i, nil
			})
			if err != nil {
				return 0, err
			}
			sum += v
		}
		total := time.Since(t0)
		mu.Lock()
		r := results[in.Event.ID]
		if r == nil {
			r = &seqResult{}
			results[in.Event.ID] = r
		}
		r.total = total
		r.attempts++
		mu.Unlock()
		return sum, nil
	})

	before, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	g, err := e.startEngine(ctx, "steps", fn)
	if err != nil {
		return err
	}
	defer func() { _ = g.close(ctx) }()

	var perStep []time.Duration
	var traced traceDelta
	pg0 := e.backendCPU(ctx, "steps")
	for r := range o.StepRuns {
		t0 := g.tr.snap()
		ids, err := g.client.Send(ctx, durable.Event{Name: "bench/seq", Data: map[string]int{"run": r}})
		if err != nil {
			return fmt.Errorf("Send: %w", err)
		}
		runs, err := g.client.RunsForEvent(ctx, ids[0])
		if err != nil {
			return fmt.Errorf("RunsForEvent: %w", err)
		}
		if len(runs) != 1 {
			return fmt.Errorf("event %s started %d runs, want 1", ids[0], len(runs))
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		run, err := g.client.WaitRun(wctx, runs[0].ID)
		cancel()
		if err != nil {
			return fmt.Errorf("run %s did not end within 60s: %w\n%s", runs[0].ID, err, e.diagnose(ctx, "bench-seq"))
		}
		if run.Status != durable.RunCompleted {
			return fmt.Errorf("run %s ended %s: %s", run.ID, run.Status, run.Error)
		}
		if len(run.Steps) != o.StepsSeq {
			return fmt.Errorf("run %s recorded %d steps, want %d", run.ID, len(run.Steps), o.StepsSeq)
		}
		if r == o.StepRuns-1 {
			// The client-side cost of one whole run (send to WaitRun's
			// last poll, without WaitRun's own reads).
			traced = diffTrace(t0, g.tr.snap())
		}
		mu.Lock()
		res := results[ids[0]]
		mu.Unlock()
		if res == nil {
			return fmt.Errorf("run %s completed but the function recorded no timing", run.ID)
		}
		if res.attempts != 1 {
			e.printf("  note: run %s executed its body %d times; its timing is the last attempt's\n", run.ID, res.attempts)
		}
		perStep = append(perStep, res.total/time.Duration(o.StepsSeq))
	}
	pgCPU := cpuSince(pg0, e.backendCPU(ctx, "steps"))
	if err := g.close(ctx); err != nil {
		return err
	}
	after, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}

	if n := bodies.Load(); n != int64(o.StepRuns*o.StepsSeq) {
		return fmt.Errorf("step bodies ran %d times for %d runs of %d steps, want exactly %d", n, o.StepRuns, o.StepsSeq, o.StepRuns*o.StepsSeq)
	}
	strs := make([]string, len(perStep))
	for i, d := range perStep {
		strs[i] = ms(d)
	}
	med := percentile(sortedCopy(perStep), 0.5)
	ratio := float64(med) / float64(base.CommitP50)
	e.printf("  per-step latency of each run (total/%d): %s\n", o.StepsSeq, strings.Join(strs, ", "))
	e.printf("  median per-step latency: %s = %.2fx the one-row commit p50 (%s); %.2fx its mean (%s)\n",
		ms(med), ratio, ms(base.CommitP50), float64(med)/float64(base.CommitMean), ms(base.CommitMean))
	e.printf("  target: <= 1.20x the one-row commit p50 -> %s\n", verdict(ratio <= 1.2))
	if c, ok := traced.stmt(batchHead); ok {
		e.printf("  in the last run, a step's commit (one batch: SET LOCAL, CommitStep) took %s a round trip (%.2fx the one-row commit p50); the rest of a step, %s, is the engine's own time (noise may make it negative)\n",
			ms(c), float64(c)/float64(base.CommitP50), ms(perStep[len(perStep)-1]-c))
	}
	e.printf("  step bodies executed: %d (exactly once each)\n", bodies.Load())
	e.printf("  Postgres backend CPU of the engine's connections: %s per step (all %d runs, with their sends and WaitRun polls)\n",
		perUnit(pgCPU, int64(o.StepRuns*o.StepsSeq)), o.StepRuns)
	e.printf("  %s\n", traced.describe(o.StepsSeq, "step"))
	e.printf("    (last run, Send to completion, including WaitRun's GetRun polls)\n")
	if e.o.Statements {
		e.printf("%s", indent(traced.table(o.StepsSeq, "step", 8), "    "))
	}
	e.printf("  %s\n", delta(before, after, 0).describe(o.StepRuns*o.StepsSeq, "step"))
	e.printf("%s", indent(tableDelta(before, after, o.StepRuns*o.StepsSeq, "step"), "    "))
	e.summarize("per-step latency (median of runs)", fmt.Sprintf("%s (%.2fx commit p50)", ms(med), ratio), "<= 1.20x", verdict(ratio <= 1.2))
	return nil
}
