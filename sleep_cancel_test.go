package durable_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func TestSleepSuspendsAndResumesPunctually(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var before, after atomic.Int64
	var sleepCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "sleeper"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			_, err := durable.Step(ctx, "before", func(ctx context.Context) (int, error) {
				before.Store(time.Now().UnixNano())
				return 0, nil
			})
			if err != nil {
				return "", err
			}
			sleepCalls.Add(1)
			if err := durable.Sleep(ctx, "nap", 1500*time.Millisecond); err != nil {
				return "", err
			}
			return durable.Step(ctx, "after", func(ctx context.Context) (string, error) {
				after.Store(time.Now().UnixNano())
				return "woke", nil
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "sleeper", nil)
	require.NoError(t, err)

	// While asleep, the run shows a sleeping step and holds no attempt.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, runID)
		require.NoError(ct, err)
		require.Len(ct, run.Steps, 2)
		assert.Equal(ct, "sleeping", run.Steps[1].Status)
	}, 5*time.Second, 10*time.Millisecond)
	run, err := c.GetRun(b.ctx, runID)
	require.NoError(t, err)
	require.Equal(t, durable.RunRunning, run.Status)
	require.Equal(t, "sleep", run.Steps[1].Kind)

	run = b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	slept := time.Duration(after.Load() - before.Load())
	require.GreaterOrEqual(t, slept, 1500*time.Millisecond)
	require.Less(t, slept, 1500*time.Millisecond+time.Second, "wake-up must be punctual")
	require.Equal(t, int32(2), sleepCalls.Load(), "the function is called again from the top after the sleep")
	require.Equal(t, "completed", run.Steps[1].Status)
}

func TestSleepWithOneWorkerDoesNotSerialise(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "nap", Triggers: []durable.Trigger{{Event: "nap/start"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			if err := durable.Sleep(ctx, "zz", 2*time.Second); err != nil {
				return 0, err
			}
			return 1, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}, MaxWorkers: 1})
	start := time.Now()
	var evs []durable.Event
	for i := 0; i < 10; i++ {
		evs = append(evs, durable.Event{Name: "nap/start"})
	}
	ids, err := c.Send(b.ctx, evs...)
	require.NoError(t, err)
	for _, id := range ids {
		runs := b.runsFor(c, id, 1)
		run := b.waitRun(c, runs[0].ID, 15*time.Second)
		require.Equal(t, durable.RunCompleted, run.Status)
	}
	took := time.Since(start)
	require.GreaterOrEqual(t, took, 2*time.Second)
	require.Less(t, took, 5*time.Second, "ten 2 s sleeps with MaxWorkers 1 must overlap")
}

func TestCancelQueuedSleepingAndRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var afterSleep, secondStep atomic.Int32
	started := make(chan struct{}, 1)
	sleeper := durable.NewFunction(durable.FunctionOpts{ID: "cancel-sleeper"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			if err := durable.Sleep(ctx, "long", time.Hour); err != nil {
				return 0, err
			}
			afterSleep.Add(1)
			return 1, nil
		})
	busy := durable.NewFunction(durable.FunctionOpts{ID: "cancel-busy"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			_, err := durable.Step(ctx, "slow", func(ctx context.Context) (int, error) {
				started <- struct{}{}
				<-ctx.Done() // cancellation reaches the step's context
				return 0, ctx.Err()
			})
			if err != nil {
				return 0, err
			}
			secondStep.Add(1)
			return durable.Step(ctx, "never", func(ctx context.Context) (int, error) { secondStep.Add(1); return 2, nil })
		})
	c := b.client(durable.Config{Functions: []durable.Function{sleeper, busy}})

	// Sleeping: cancelled at once.
	sleepRun, err := c.Invoke(b.ctx, "cancel-sleeper", nil)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, sleepRun)
		require.NoError(ct, err)
		require.Len(ct, run.Steps, 1)
		assert.Equal(ct, "sleeping", run.Steps[0].Status)
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Cancel(b.ctx, sleepRun))
	run, err := c.GetRun(b.ctx, sleepRun)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, run.Status)
	require.NotNil(t, run.EndedAt)

	// Running: the step's context is cancelled and no further step runs.
	busyRun, err := c.Invoke(b.ctx, "cancel-busy", nil)
	require.NoError(t, err)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("step never started")
	}
	require.NoError(t, c.Cancel(b.ctx, busyRun))
	run = b.waitRun(c, busyRun, 5*time.Second)
	require.Equal(t, durable.RunCancelled, run.Status)

	// Queued: a send-only client cancels a run no process executes.
	sendOnly, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema})
	require.NoError(t, err)
	queued, err := sendOnly.Invoke(b.ctx, "cancel-sleeper", nil)
	require.NoError(t, err)
	require.NoError(t, sendOnly.Cancel(b.ctx, queued))
	run, err = sendOnly.GetRun(b.ctx, queued)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, run.Status)

	// Cancelling an ended run is a no-op; an unknown one is ErrRunNotFound.
	require.NoError(t, c.Cancel(b.ctx, sleepRun))
	require.ErrorIs(t, c.Cancel(b.ctx, "nope"), durable.ErrRunNotFound)

	// Give a wrongly resumed run the chance to show itself.
	require.Never(t, func() bool {
		return afterSleep.Load() != 0 || secondStep.Load() != 0
	}, 300*time.Millisecond, 10*time.Millisecond, "a cancelled run went on")
	require.Zero(t, afterSleep.Load())
	require.Zero(t, secondStep.Load())
}
