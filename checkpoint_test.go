package durable_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// BufferedSteps: Step results wait to be committed together. While the
// fifth step runs, none of the four before it is committed with
// BufferedSteps 5; each is with the default (and with a MaxInterval
// shorter than a step).
func TestBufferedStepsCommitTogether(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cases := []struct {
		name      string
		cp        *durable.Checkpointing
		committed int
	}{
		{"default", nil, 4},
		{"buffered", &durable.Checkpointing{BufferedSteps: 5}, 0},
		{"interval", &durable.Checkpointing{BufferedSteps: 100, MaxInterval: time.Millisecond}, 4},
	}
	var fns []durable.Function
	gates := map[string]chan struct{}{}
	inside := map[string]chan struct{}{}
	for _, tc := range cases {
		gate, in := make(chan struct{}), make(chan struct{})
		gates[tc.name], inside[tc.name] = gate, in
		fns = append(fns, durable.NewFunction(durable.FunctionOpts{ID: "cp-" + tc.name, Checkpointing: tc.cp},
			func(ctx context.Context, _ durable.Input[M]) (int, error) {
				sum := 0
				for i := 0; i < 7; i++ {
					n, err := durable.Step(ctx, fmt.Sprintf("s%d", i), func(ctx context.Context) (int, error) {
						time.Sleep(2 * time.Millisecond) // longer than the interval case's MaxInterval
						if i == 4 {
							close(in)
							<-gate
						}
						return i, nil
					})
					if err != nil {
						return 0, err
					}
					sum += n
				}
				return sum, nil
			}))
	}
	c := b.client(durable.Config{Functions: fns})
	for _, tc := range cases {
		runID, err := c.Invoke(b.ctx, "cp-"+tc.name, nil)
		require.NoError(t, err)
		select {
		case <-inside[tc.name]:
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: step s4 never ran", tc.name)
		}
		var n int
		require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_step WHERE run_id = $1", runID).Scan(&n))
		require.Equal(t, tc.committed, n, "%s: steps committed while s4 runs", tc.name)
		close(gates[tc.name])
		run := b.waitRun(c, runID, 15*time.Second)
		require.Equal(t, durable.RunCompleted, run.Status, tc.name)
		require.JSONEq(t, "21", string(run.Output), tc.name)
		require.Len(t, run.Steps, 7, tc.name)
	}
}

// MaxRuntime hands a long run's slot back: under Concurrency Limit 1, a
// run of many steps continues in new attempts (its completed steps are not
// re-executed), and a run sent while it executes starts before it ends.
func TestMaxRuntimeHandsTheSlotBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	var mu sync.Mutex
	execs := map[string]int{}
	var ends []string
	fn := durable.NewFunction(durable.FunctionOpts{ID: "long", Triggers: []durable.Trigger{{Event: "long"}},
		Concurrency:   []durable.Concurrency{{Limit: 1}},
		Checkpointing: &durable.Checkpointing{MaxRuntime: 100 * time.Millisecond}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			name := in.Event.Data["name"].(string)
			if name == "long" {
				calls.Add(1)
			}
			steps := int(in.Event.Data["steps"].(float64))
			for i := 0; i < steps; i++ {
				key := fmt.Sprintf("%s-%d", name, i)
				if _, err := durable.Step(ctx, fmt.Sprintf("s%d", i), func(ctx context.Context) (int, error) {
					mu.Lock()
					execs[key]++
					mu.Unlock()
					time.Sleep(30 * time.Millisecond) // a step's work
					return i, nil
				}); err != nil {
					return "", err
				}
			}
			mu.Lock()
			ends = append(ends, name)
			mu.Unlock()
			return name, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	long, err := c.Send(b.ctx, durable.Event{Name: "long", Data: M{"name": "long", "steps": 20}})
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		require.GreaterOrEqual(ct, execs["long-1"], 1)
	}, 10*time.Second, 5*time.Millisecond)
	short, err := c.Send(b.ctx, durable.Event{Name: "long", Data: M{"name": "short", "steps": 1}})
	require.NoError(t, err)
	for _, id := range []string{long[0], short[0]} {
		require.Equal(t, durable.RunCompleted, b.waitRun(c, b.runsFor(c, id, 1)[0].ID, 30*time.Second).Status)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"short", "long"}, ends, "the short run started in one of the long run's hand-backs")
	require.GreaterOrEqual(t, calls.Load(), int32(3), "the long run continued in new attempts")
	for i := 0; i < 20; i++ {
		require.Equal(t, 1, execs[fmt.Sprintf("long-%d", i)], "step s%d executed once", i)
	}
}
