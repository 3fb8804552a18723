package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// flowControl measures section 9: what flow control costs and how fast it
// hands work on.
//
//	9a. (in section 3) the 3-step workload without flow control: flow
//	    control must cost nothing when unused.
//	9b. Concurrency{Limit: 10}, FlowRuns queued runs of one step (a 2 ms
//	    call): slot freed -> next run's first step, p50 and p99, and runs/s
//	    against 10 unlimited workers (a client with MaxWorkers 10) doing
//	    the same.
//	9c. FlowKeys keys at Limit 1 while one hot key has a backlog: the start
//	    delay (Send returned -> first step) of each key's first run.
//	9d. StepsSeq sequential no-op steps, BufferedSteps 10 against the
//	    default: writing transactions and ms per step.
func (e *env) flowControl(ctx context.Context, base baseline) error {
	e.section("9. Flow control and checkpointing")
	e.printf("  9a. without flow control: see section 3 (same engine and workload; flow control adds no statement to it)\n")
	// Schemas of their own: the runs earlier sections (or parts) left are
	// not in them.
	for _, part := range []struct {
		name string
		run  func(schema string) error
	}{
		{"b", func(schema string) error { return e.flowHandoff(ctx, base, schema) }},
		{"c", func(schema string) error { return e.flowKeys(ctx, schema) }},
		{"d", func(schema string) error { return e.flowBuffered(ctx, base, schema) }},
	} {
		if err := e.inSchema(ctx, e.schema+"_flow_"+part.name, part.run); err != nil {
			return fmt.Errorf("9%s: %w", part.name, err)
		}
	}
	return nil
}

// inSchema runs fn in a fresh schema (migrate.Up), dropped afterwards.
func (e *env) inSchema(ctx context.Context, schema string, fn func(schema string) error) (err error) {
	admin, err := e.pool(ctx, "schema-admin", 2, nil, nil)
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := migrate.Up(ctx, admin, schema); err != nil {
		return fmt.Errorf("migrate.Up(%s): %w", schema, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := admin.Exec(dctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); derr != nil {
			err = errors.Join(err, fmt.Errorf("dropping schema %s: %w", schema, derr))
		}
	}()
	return fn(schema)
}

// flowRun is when a run's step started and when the function returned.
type flowRun struct{ start, end time.Time }

// flowHandoff is 9b.
func (e *env) flowHandoff(ctx context.Context, base baseline, schema string) error {
	const limit = 10
	n := e.o.FlowRuns
	measure := func(role string, conc []durable.Concurrency, maxWorkers int) (float64, []flowRun, error) {
		var mu sync.Mutex
		runs := make([]flowRun, 0, n)
		var inside, most atomic.Int32
		fn := durable.NewFunction(durable.FunctionOpts{ID: "bench-" + role, Triggers: []durable.Trigger{{Event: "bench/" + role}},
			Concurrency: conc},
			func(ctx context.Context, in durable.Input[json.RawMessage]) (int, error) {
				var r flowRun
				v, err := durable.Step(ctx, "call", func(context.Context) (int, error) {
					r.start = time.Now()
					k := inside.Add(1)
					for m := most.Load(); k > m && !most.CompareAndSwap(m, k); m = most.Load() {
					}
					time.Sleep(2 * time.Millisecond) // the rate-limited API call
					inside.Add(-1)
					return 1, nil
				})
				r.end = time.Now()
				mu.Lock()
				runs = append(runs, r)
				mu.Unlock()
				return v, err
			})
		g, err := e.startEngineWith(ctx, schema, role, func(c *durable.Config) {
			if maxWorkers > 0 {
				c.MaxWorkers = maxWorkers
			}
		}, fn)
		if err != nil {
			return 0, nil, err
		}
		defer func() { _ = g.close(ctx) }()
		t0 := time.Now()
		snap := g.tr.snap()
		if err := sendAll(ctx, g.client, "bench/"+role, n, e.o.Senders); err != nil {
			return 0, nil, err
		}
		deadline := time.Now().Add(5 * time.Minute)
		for {
			mu.Lock()
			done := len(runs)
			mu.Unlock()
			if done >= n {
				break
			}
			if time.Now().After(deadline) {
				return 0, nil, fmt.Errorf("%s: %d of %d runs done after 5 minutes", role, done, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		el := time.Since(t0)
		if e.o.Statements {
			e.printf("      %s, statements per run:\n%s", role, indent(diffTrace(snap, g.tr.snap()).table(n, "run", 12), "        "))
		}
		if conc != nil && most.Load() > limit {
			return 0, nil, fmt.Errorf("%s: %d steps ran at once, over the limit of %d", role, most.Load(), limit)
		}
		mu.Lock()
		defer mu.Unlock()
		return float64(n) / el.Seconds(), append([]flowRun(nil), runs...), g.close(ctx)
	}
	unlimited, _, err := measure("workers10", nil, limit)
	if err != nil {
		return err
	}
	limited, runs, err := measure("conc10", []durable.Concurrency{{Limit: limit}}, 0)
	if err != nil {
		return err
	}
	// Start k (in start order) needs end k-limit (in end order): with a
	// FIFO pool of limit slots, its hand-off latency is the gap.
	starts := make([]time.Time, len(runs))
	ends := make([]time.Time, len(runs))
	for i, r := range runs {
		starts[i], ends[i] = r.start, r.end
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	sort.Slice(ends, func(i, j int) bool { return ends[i].Before(ends[j]) })
	var gaps []time.Duration
	for k := limit; k < len(starts); k++ {
		gaps = append(gaps, max(starts[k].Sub(ends[k-limit]), 0))
	}
	gaps = sortedCopy(gaps)
	p50, p99 := percentile(gaps, 0.5), percentile(gaps, 0.99)
	ratio := limited / unlimited
	e.printf("  9b. Concurrency{Limit: %d}, %d runs of one step (a 2 ms call), %d senders:\n", limit, n, e.o.Senders)
	e.printf("      slot freed (a run's function returned) -> next run's step: p50 %s, p99 %s (targets 10 ms, 50 ms; the one-row commit p50 is %s)\n",
		ms(p50), ms(p99), ms(base.CommitP50))
	e.printf("      runs/s: %.0f limited vs %.0f with 10 unlimited workers = %.2f (target >= 0.80)\n", limited, unlimited, ratio)
	e.summarize("9b slot hand-off p50 / p99", ms(p50)+" / "+ms(p99), "<= 10 ms / 50 ms", verdict(p50 <= 10*time.Millisecond && p99 <= 50*time.Millisecond))
	e.summarize("9b Limit 10 vs 10 workers (runs/s)", fmt.Sprintf("%.0f / %.0f = %.2f", limited, unlimited, ratio), ">= 0.80", verdict(ratio >= 0.8))
	return nil
}

// flowKeys is 9c: the keys' runs are sent at a steady pace (4 senders,
// one Send every 20 ms each: 200 runs/s, within what the engine sustains),
// first with a hot key holding a backlog, then, as the control, without
// one: a backlog on one key must not delay the others.
func (e *env) flowKeys(ctx context.Context, schema string) error {
	keys, hot := e.o.FlowKeys, e.o.FlowKeys*3/10
	var mu sync.Mutex
	started := map[string]time.Time{}
	fn := durable.NewFunction(durable.FunctionOpts{ID: "bench-keys", Triggers: []durable.Trigger{{Event: "bench/keys"}},
		Concurrency: []durable.Concurrency{{Limit: 1, Key: "event.data.k"}}},
		func(ctx context.Context, in durable.Input[map[string]any]) (int, error) {
			return durable.Step(ctx, "call", func(context.Context) (int, error) {
				mu.Lock()
				if _, ok := started[in.Event.ID]; !ok {
					started[in.Event.ID] = time.Now()
				}
				mu.Unlock()
				if in.Event.Data["k"] == "hot" {
					time.Sleep(5 * time.Millisecond)
				}
				return 1, nil
			})
		})
	g, err := e.startEngineIn(ctx, schema, "keys", fn)
	if err != nil {
		return err
	}
	defer func() { _ = g.close(ctx) }()
	measure := func(prefix string) ([]time.Duration, error) {
		const senders, pause = 4, 20 * time.Millisecond
		sent := make(map[string]time.Time, keys)
		var smu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, senders)
		for s := 0; s < senders; s++ {
			wg.Add(1)
			go func(s int) {
				defer wg.Done()
				for i := s; i < keys; i += senders {
					ids, err := g.client.Send(ctx, durable.Event{Name: "bench/keys", Data: map[string]any{"k": fmt.Sprintf("%s%d", prefix, i)}})
					if err != nil {
						errs <- err
						return
					}
					smu.Lock()
					sent[ids[0]] = time.Now()
					smu.Unlock()
					time.Sleep(pause)
				}
			}(s)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return nil, err
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var delays []time.Duration
			mu.Lock()
			for id, at := range sent {
				if st, ok := started[id]; ok {
					delays = append(delays, max(st.Sub(at), 0))
				}
			}
			mu.Unlock()
			if len(delays) == keys {
				return sortedCopy(delays), nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%d of %d keys' runs started after 2 minutes", len(delays), keys)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	hotEvents := make([]durable.Event, hot)
	for i := range hotEvents {
		hotEvents[i] = durable.Event{Name: "bench/keys", Data: map[string]any{"k": "hot"}}
	}
	if _, err := g.client.Send(ctx, hotEvents...); err != nil {
		return err
	}
	withHot, err := measure("k")
	if err != nil {
		return err
	}
	mu.Lock()
	hotDone := len(started) - keys
	mu.Unlock()
	// The control: once the hot key's backlog is gone.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		n := len(started)
		mu.Unlock()
		if n >= keys+hot {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the hot key's %d runs did not all start within 2 minutes", hot)
		}
		time.Sleep(20 * time.Millisecond)
	}
	control, err := measure("c")
	if err != nil {
		return err
	}
	p50, p99 := percentile(withHot, 0.5), percentile(withHot, 0.99)
	e.printf("  9c. %d keys at Concurrency{Limit: 1, Key}, sent at 200 runs/s while a hot key has %d runs queued (5 ms each; %d of them started meanwhile):\n", keys, hot, hotDone)
	e.printf("      start delay of each key's run (Send returned -> step): p50 %s, p99 %s (target p99 <= 100 ms); without the hot backlog: p50 %s, p99 %s\n",
		ms(p50), ms(p99), ms(percentile(control, 0.5)), ms(percentile(control, 0.99)))
	e.summarize("9c key start delay p99 (hot backlog / none)", ms(p99)+" / "+ms(percentile(control, 0.99)), "<= 100 ms", verdict(p99 <= 100*time.Millisecond))
	return nil
}

// flowBuffered is 9d.
func (e *env) flowBuffered(ctx context.Context, base baseline, schema string) error {
	steps := e.o.StepsSeq
	var rows []string
	for _, c := range []struct {
		name string
		cp   *durable.Checkpointing
	}{{"default", nil}, {"BufferedSteps 10", &durable.Checkpointing{BufferedSteps: 10}}} {
		var total atomic.Int64
		fn := durable.NewFunction(durable.FunctionOpts{ID: "bench-buf", Triggers: []durable.Trigger{{Event: "bench/buf"}}, Checkpointing: c.cp},
			func(ctx context.Context, in durable.Input[json.RawMessage]) (int, error) {
				t0 := time.Now()
				for i := range steps {
					if _, err := durable.Step(ctx, fmt.Sprintf("s%d", i), func(context.Context) (int, error) { return i, nil }); err != nil {
						return 0, err
					}
				}
				total.Store(int64(time.Since(t0)))
				return steps, nil
			})
		g, err := e.startEngineIn(ctx, schema, "buf", fn)
		if err != nil {
			return err
		}
		var per []time.Duration
		var tx float64
		for r := 0; r < e.o.StepRuns; r++ {
			t0 := g.tr.snap()
			ids, err := g.client.Send(ctx, durable.Event{Name: "bench/buf"})
			if err != nil {
				_ = g.close(ctx)
				return err
			}
			runs, err := g.client.RunsForEvent(ctx, ids[0])
			if err != nil || len(runs) != 1 {
				_ = g.close(ctx)
				return fmt.Errorf("event %s: runs %v: %v", ids[0], runs, err)
			}
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			run, err := g.client.WaitRun(wctx, runs[0].ID)
			cancel()
			if err != nil || run.Status != durable.RunCompleted || len(run.Steps) != steps {
				_ = g.close(ctx)
				return fmt.Errorf("run %s: %v (%v)", runs[0].ID, run, err)
			}
			d := diffTrace(t0, g.tr.snap())
			tx = float64(d.c.Writing) / float64(steps)
			per = append(per, time.Duration(total.Load())/time.Duration(steps))
		}
		if err := g.close(ctx); err != nil {
			return err
		}
		med := percentile(sortedCopy(per), 0.5)
		rows = append(rows, fmt.Sprintf("%s: %s per step (%.2fx the one-row commit p50), %.2f writing transactions per step", c.name, ms(med), float64(med)/float64(base.CommitP50), tx))
		e.summarize("9d ms/step, "+c.name, fmt.Sprintf("%s, %.2f tx/step", ms(med), tx), "reported", "-")
	}
	e.printf("  9d. %d sequential no-op steps (median of %d runs; the last run's transactions, with its Send and WaitRun polls):\n      %s\n",
		steps, e.o.StepRuns, strings.Join(rows, "\n      "))
	return nil
}

// sendAll sends n events named name from senders goroutines, one per Send.
func sendAll(ctx context.Context, c *durable.Client, name string, n, senders int) error {
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, senders)
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if _, err := c.Send(ctx, durable.Event{Name: name, Data: map[string]int64{"i": i}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
