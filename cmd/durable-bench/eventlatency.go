package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/pgdurable/durable"
)

// eventLatency measures section 4: with a started client otherwise idle,
// events are sent one at a time; each sample is the time from the moment
// Send returns (the event's transaction has committed) to the moment the
// first step's body starts, both read from Go's monotonic clock in this
// process and matched by event ID. After each sample the bench waits for
// the run to end, then pauses LatencyPause before the next send. A few
// warm-up events are sent first and not counted.
func (e *env) eventLatency(ctx context.Context) error {
	o := e.o
	e.section(fmt.Sprintf("4. Event-commit-to-first-step latency: %d events sent one at a time to an idle client", o.LatencySamples))

	var mu sync.Mutex
	started := map[string]chan time.Time{} // event ID -> receives when the first step's body starts
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "bench-latency",
		Triggers: []durable.Trigger{{Event: "bench/lat"}},
	}, func(ctx context.Context, in durable.Input[json.RawMessage]) (bool, error) {
		return durable.Step(ctx, "first", func(context.Context) (bool, error) {
			now := time.Now()
			mu.Lock()
			ch := started[in.Event.ID]
			mu.Unlock()
			if ch != nil {
				select {
				case ch <- now:
				default:
				}
			}
			return true, nil
		})
	})

	before, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	g, err := e.startEngine(ctx, "latency", fn)
	if err != nil {
		return err
	}
	defer func() { _ = g.close(ctx) }()

	const warmup = 5
	var lat, sendDur []time.Duration
	var negative int
	var t0 traceSnap
	for i := range warmup + o.LatencySamples {
		if i == warmup {
			time.Sleep(200 * time.Millisecond) // let the warm-up runs' last writes settle
			t0 = g.tr.snap()
		}
		id := fmt.Sprintf("%s-lat-%d", e.tag, i)
		ch := make(chan time.Time, 1)
		mu.Lock()
		started[id] = ch
		mu.Unlock()
		s0 := time.Now()
		if _, err := g.client.Send(ctx, durable.Event{ID: id, Name: "bench/lat"}); err != nil {
			return fmt.Errorf("Send: %w", err)
		}
		sent := time.Now()
		var stepAt time.Time
		select {
		case stepAt = <-ch:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("event %s: its run's first step did not start within 10s\n%s", id, e.diagnose(ctx, "bench-latency"))
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		delete(started, id)
		mu.Unlock()
		if i >= warmup {
			d := stepAt.Sub(sent)
			if d < 0 {
				negative++ // the step began before Send returned to the caller
			}
			lat = append(lat, d)
			sendDur = append(sendDur, sent.Sub(s0))
		}
		// Let the run finish (its final commit) before the next sample.
		if err := e.waitEventRun(ctx, g, id); err != nil {
			return err
		}
		time.Sleep(o.LatencyPause)
	}
	traced := diffTrace(t0, g.tr.snap())
	if err := g.close(ctx); err != nil {
		return err
	}
	after, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}

	s := sortedCopy(lat)
	p50, p90, p99, mx := percentile(s, 0.5), percentile(s, 0.9), percentile(s, 0.99), s[len(s)-1]
	e.printf("  samples: %d (after %d warm-up), %s pause between a run's end and the next send\n", len(lat), warmup, o.LatencyPause)
	e.printf("  Send call (commit of the event and its run): p50 %s, p99 %s\n",
		ms(percentile(sortedCopy(sendDur), 0.5)), ms(percentile(sortedCopy(sendDur), 0.99)))
	e.printf("  Send returned -> first step body starts: p50 %s, p90 %s, p99 %s, max %s, min %s\n",
		ms(p50), ms(p90), ms(p99), ms(mx), ms(s[0]))
	if negative > 0 {
		e.printf("  (%d samples negative: the step started before Send had returned to the caller)\n", negative)
	}
	e.printf("  target: p50 <= 5 ms -> %s (p99 is reported, with no target)\n", verdict(p50 <= 5*time.Millisecond))
	e.printf("  %s\n", traced.describe(len(lat), "event"))
	e.printf("    (includes this phase's GetRun polls, the idle client's background queries, and the pauses)\n")
	if e.o.Statements {
		e.printf("%s", indent(traced.table(len(lat), "event", 14), "    "))
	}
	e.printf("  %s\n", delta(before, after, 0).describe(warmup+len(lat), "event"))
	e.summarize("event commit -> first step (p50 / p99)", ms(p50)+" / "+ms(p99), "p50 <= 5 ms", verdict(p50 <= 5*time.Millisecond))
	return nil
}

// waitEventRun waits for the run of a latency event to complete.
func (e *env) waitEventRun(ctx context.Context, g *engine, eventID string) error {
	runs, err := g.client.RunsForEvent(ctx, eventID)
	if err != nil {
		return fmt.Errorf("RunsForEvent: %w", err)
	}
	if len(runs) != 1 {
		return fmt.Errorf("event %s started %d runs, want 1", eventID, len(runs))
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	run, err := g.client.WaitRun(wctx, runs[0].ID)
	if err != nil {
		return fmt.Errorf("run %s: %w\n%s", runs[0].ID, err, e.diagnose(ctx, "bench-latency"))
	}
	if run.Status != durable.RunCompleted {
		return fmt.Errorf("run %s ended %s: %s", run.ID, run.Status, run.Error)
	}
	return nil
}
