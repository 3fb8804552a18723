package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pgdurable/durable"
)

// wakeUp measures section 10 (phase digit 0): WakeRuns runs that sleep
// until the same instant T, each then running one step. The runs are
// created (100 events per Send) and suspended well before T; from T, the
// waker makes their jobs available and River hands them to the workers.
// Reported: when each run's step starts, counted from T (p50, p99, max),
// and how many start within 2 s of T (the target: all of them).
func (e *env) wakeUp(ctx context.Context) error {
	n := e.o.WakeRuns
	e.section(fmt.Sprintf("10. Wake-up: %d runs sleeping until the same instant", n))
	return e.inSchema(ctx, e.schema+"_wake", func(schema string) error {
		var mu sync.Mutex
		resumed := make(map[string]time.Time, n)
		var asleep sync.WaitGroup
		asleep.Add(n)
		var once sync.Map
		fn := durable.NewFunction(durable.FunctionOpts{ID: "bench-wake", Triggers: []durable.Trigger{{Event: "bench/wake"}}},
			func(ctx context.Context, in durable.Input[map[string]time.Time]) (int, error) {
				if _, loaded := once.LoadOrStore(in.RunID, true); !loaded {
					asleep.Done() // the first attempt reached the sleep
				}
				if err := durable.SleepUntil(ctx, "nap", in.Event.Data["at"]); err != nil {
					return 0, err
				}
				return durable.Step(ctx, "after", func(context.Context) (int, error) {
					mu.Lock()
					if _, ok := resumed[in.RunID]; !ok {
						resumed[in.RunID] = time.Now()
					}
					mu.Unlock()
					return 1, nil
				})
			})
		g, err := e.startEngineIn(ctx, schema, "wake", fn)
		if err != nil {
			return err
		}
		defer func() { _ = g.close(ctx) }()
		// T leaves time to create and suspend every run: 5 s, plus 5 ms a
		// run (the engine put 10,000 to sleep in 17 s on a 2-core VM).
		at := time.Now().Add(5*time.Second + time.Duration(n)*5*time.Millisecond).Truncate(time.Second)
		t0 := time.Now()
		for i := 0; i < n; i += 100 {
			var evs []durable.Event
			for j := i; j < min(i+100, n); j++ {
				evs = append(evs, durable.Event{Name: "bench/wake", Data: map[string]time.Time{"at": at}})
			}
			if _, err := g.client.Send(ctx, evs...); err != nil {
				return err
			}
		}
		done := make(chan struct{})
		go func() { asleep.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Until(at)):
			return fmt.Errorf("not every run reached its sleep before T (%s after the first Send)", at.Sub(t0).Round(time.Millisecond))
		}
		e.printf("  %d runs created and asleep in %s; T is %s after the first Send\n", n, time.Since(t0).Round(time.Millisecond), at.Sub(t0).Round(time.Millisecond))
		deadline := at.Add(5 * time.Minute)
		for {
			mu.Lock()
			got := len(resumed)
			mu.Unlock()
			if got == n {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d runs resumed within 5 minutes of T", got, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		mu.Lock()
		delays := make([]time.Duration, 0, n)
		within := 0
		for _, t := range resumed {
			d := max(t.Sub(at), 0)
			delays = append(delays, d)
			if d <= 2*time.Second {
				within++
			}
		}
		mu.Unlock()
		d := sortedCopy(delays)
		worst := d[len(d)-1]
		e.printf("  T -> step \"after\" starts: p50 %s, p99 %s, max %s; %d of %d within 2 s (%.0f runs/s resumed)\n",
			ms(percentile(d, 0.5)), ms(percentile(d, 0.99)), ms(worst), within, n, float64(n)/max(worst.Seconds(), 0.001))
		e.printf("  target: every run resumed within 2 s of T -> %s\n", verdict(within == n))
		e.summarize(fmt.Sprintf("wake-up: %d runs due at once, last resumed", n), ms(worst), "<= 2 s", verdict(within == n))
		return nil
	})
}
