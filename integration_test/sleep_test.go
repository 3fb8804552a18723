package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// TestSleepDoesNotHoldWorkers runs 10 runs that each sleep 2 s on a client
// with a single worker slot: sleeping runs must give the slot up (10 sleeps
// in sequence would take 20 s), and each must resume punctually.
//
// It is not parallel: it measures punctuality to within 500 ms on a
// 2-core machine, and the other tests here (four busy clients, worker
// builds) would make that measure the scheduler's load instead of the
// engine. Sequential tests run before the parallel ones start.
func TestSleepDoesNotHoldWorkers(t *testing.T) {
	const nRuns = 10
	const nap = 2 * time.Second
	e := setup(t, 6)

	var before, after sync.Map // run ID -> time.Time
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "napper",
		Triggers: []durable.Trigger{{Event: "nap/start"}},
	}, func(ctx context.Context, in durable.Input[map[string]any]) (string, error) {
		// The first attempt records when the sleep began; replays keep it.
		before.LoadOrStore(in.RunID, time.Now())
		if err := durable.Sleep(ctx, "nap", nap); err != nil {
			return "", err
		}
		if _, err := durable.Step(ctx, "after", func(ctx context.Context) (bool, error) {
			after.LoadOrStore(in.RunID, time.Now())
			return true, nil
		}); err != nil {
			return "", err
		}
		return "rested", nil
	})
	c, err := durable.NewClient(e.pool, &durable.Config{
		Functions:    []durable.Function{fn},
		MaxWorkers:   1,
		Schema:       e.schema,
		RecoverAfter: 5 * time.Second,
		RetryBackoff: func(int) time.Duration { return 20 * time.Millisecond },
	})
	require.NoError(t, err)
	require.NoError(t, c.Start(e.ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		assert.NoError(t, c.Stop(ctx))
	})

	events := make([]durable.Event, nRuns)
	for i := range events {
		events[i] = durable.Event{Name: "nap/start", Data: map[string]any{"i": i}}
	}
	firstSend := time.Now()
	ids, err := c.Send(e.ctx, events...)
	require.NoError(t, err)
	var runIDs []string
	for _, id := range ids {
		runs, err := c.RunsForEvent(e.ctx, id)
		require.NoError(t, err)
		require.Len(t, runs, 1)
		runIDs = append(runIDs, runs[0].ID)
	}

	runs := waitRunsDone(t, c, runIDs, firstSend.Add(30*time.Second))
	var last time.Time
	for _, run := range runs {
		require.Equal(t, durable.RunCompleted, run.Status, "run %s: %q %s", run.ID, run.Error, describeSteps(run))
		require.NotNil(t, run.EndedAt)
		if run.EndedAt.After(last) {
			last = *run.EndedAt
		}
		if assert.Len(t, run.Steps, 2, "run %s: %s", run.ID, describeSteps(run)) {
			assert.Equal(t, "nap", run.Steps[0].ID)
			assert.Equal(t, "sleep", run.Steps[0].Kind)
			assert.Equal(t, "completed", run.Steps[0].Status)
			assert.Equal(t, "after", run.Steps[1].ID)
			assert.Equal(t, "completed", run.Steps[1].Status)
		}
	}
	wall := last.Sub(firstSend)
	t.Logf("%d runs of a %s sleep with 1 worker slot: last completed %s after the first send", nRuns, nap, wall.Round(time.Millisecond))
	assert.GreaterOrEqual(t, wall, nap, "runs completed before their sleep could have ended")
	assert.Less(t, wall, 6*time.Second, "sleeping runs held the worker slot (10 sequential sleeps would take %s)", nRuns*nap)

	var worst time.Duration
	for _, id := range runIDs {
		b, ok1 := before.Load(id)
		a, ok2 := after.Load(id)
		if !assert.True(t, ok1 && ok2, "run %s: times not recorded", id) {
			continue
		}
		late := a.(time.Time).Sub(b.(time.Time).Add(nap))
		worst = max(worst, late)
		t.Logf("run %s: sleep began at +%s, step after it ran at +%s (%s after the intended wake)", id,
			b.(time.Time).Sub(firstSend).Round(time.Millisecond), a.(time.Time).Sub(firstSend).Round(time.Millisecond), late.Round(time.Millisecond))
		assert.GreaterOrEqual(t, late, time.Duration(0), "run %s: the step after the sleep ran %s early", id, -late)
		assert.Less(t, late, time.Second, "run %s: the step after the sleep ran %s after the intended wake", id, late)
	}
	t.Logf("worst wake lateness: %s", worst.Round(time.Millisecond))
}
