package durable_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func TestCronWithThreeClientsFiresEachTickOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	ticks := map[string]int{}
	names := map[string]bool{}
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "heartbeat",
		Triggers: []durable.Trigger{{Cron: "@every 1s"}, {Event: "heartbeat/now"}},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		names[in.Event.Name] = true
		if tick, ok := in.Event.Data["tick"].(string); ok {
			ticks[tick]++
		}
		return 0, nil
	})
	for i := 0; i < 3; i++ {
		b.client(durable.Config{Functions: []durable.Function{fn}})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ticks) >= 3
	}, 10*time.Second, 20*time.Millisecond)
	// Let any duplicate of the last tick show up.
	require.Never(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range ticks {
			if n != 1 {
				return true
			}
		}
		return false
	}, 300*time.Millisecond, 20*time.Millisecond, "a tick fired more than once")
	mu.Lock()
	defer mu.Unlock()
	for tick, n := range ticks {
		require.Equal(t, 1, n, "tick %s fired %d times", tick, n)
	}
	require.True(t, names["durable/scheduled.timer"])
	var runs, rows int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT (SELECT count(*) FROM "+b.schema+".durable_run WHERE function_id = 'heartbeat'), (SELECT count(*) FROM "+b.schema+".durable_cron_tick)").Scan(&runs, &rows))
	require.Equal(t, rows, runs, "one run per tick row")
}

func TestCronSpecsAreValidated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	noop := func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil }
	for _, spec := range []string{"0 9 * * *", "TZ=Europe/Paris 0 12 * * 5", "CRON_TZ=America/New_York 30 8 * * 1-5", "@hourly", "@daily", "@every 30s"} {
		_, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{
			durable.NewFunction(durable.FunctionOpts{ID: "c", Triggers: []durable.Trigger{{Cron: spec}}}, noop)}})
		require.NoError(t, err, spec)
	}
	_, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{
		durable.NewFunction(durable.FunctionOpts{ID: "c", Triggers: []durable.Trigger{{Cron: "61 * * * *"}}}, noop)}})
	require.ErrorContains(t, err, `function "c": Triggers[0].Cron: cron "61 * * * *"`)
	_, err = durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{
		durable.NewFunction(durable.FunctionOpts{ID: "c", Triggers: []durable.Trigger{{Cron: "TZ=Mars/Olympus 0 * * * *"}}}, noop)}})
	require.ErrorContains(t, err, "Triggers[0].Cron")
}

func TestOnFailureRunsOncePerFailedRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var got []durable.FailureData
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "charge-card",
		Triggers: []durable.Trigger{{Event: "card/charge"}},
		Retries:  durable.Ptr(1),
		OnFailure: func(ctx context.Context, in durable.Input[durable.FailureData]) error {
			_, err := durable.Step(ctx, "notify-ops", func(ctx context.Context) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, in.Event.Data)
				return 1, nil
			})
			return err
		},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		return 0, errors.New("card declined")
	})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	ids, err := c.Send(b.ctx, durable.Event{Name: "card/charge", Data: M{"card": "4242"}})
	require.NoError(t, err)
	run := b.waitRun(c, b.runsFor(c, ids[0], 1)[0].ID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	}, 10*time.Second, 10*time.Millisecond)
	require.Never(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) != 1
	}, 200*time.Millisecond, 10*time.Millisecond, "OnFailure ran more than once")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 1)
	require.Equal(t, "charge-card", got[0].FunctionID)
	require.Equal(t, run.ID, got[0].RunID)
	require.Contains(t, got[0].Error, "card declined")
	require.Contains(t, string(got[0].Event), `"card": "4242"`)
	require.Contains(t, string(got[0].Event), `"name": "card/charge"`)
}
