package durable_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// TestStaleAttemptCannotOverwriteAfterRelease: worker A is stuck in a step
// that ignores its context; A stops (its heartbeat goes), B takes the run
// over, memoizes the step and suspends (releasing the run, owner NULL
// again). When A's step finally returns, A's write must be refused: the
// run's epoch moved on, though the owner reads NULL as when A began.
func TestStaleAttemptCannotOverwriteAfterRelease(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	inStep := make(chan struct{}, 1)
	aFinished := make(chan struct{})
	fnA := durable.NewFunction(durable.FunctionOpts{ID: "f"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			defer close(aFinished) // runs however the attempt ends
			if _, err := durable.Step(ctx, "s1", func(ctx context.Context) (string, error) {
				inStep <- struct{}{}
				<-release // ignores ctx
				return "A", nil
			}); err != nil {
				return "", err
			}
			_, err := durable.Step(ctx, "s2", func(ctx context.Context) (int, error) { return 2, nil })
			return "", err
		})
	fnB := durable.NewFunction(durable.FunctionOpts{ID: "f"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			if _, err := durable.Step(ctx, "s1", func(ctx context.Context) (string, error) { return "B", nil }); err != nil {
				return "", err
			}
			return "", durable.Sleep(ctx, "nap", time.Minute)
		})
	mk := func(fn durable.Function) *durable.Client {
		c, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{fn}, RecoverAfter: time.Second})
		require.NoError(t, err)
		require.NoError(t, c.Start(b.ctx))
		return c
	}
	a := mk(fnA)
	id, err := a.Invoke(b.ctx, "f", nil)
	require.NoError(t, err)
	select {
	case <-inStep:
	case <-time.After(10 * time.Second):
		t.Fatal("A never entered s1")
	}
	bc := mk(fnB)
	defer bc.Stop(context.Background())
	stopCtx, cancel := context.WithTimeout(b.ctx, 100*time.Millisecond)
	defer cancel()
	stopped := make(chan struct{})
	go func() { _ = a.Stop(stopCtx); close(stopped) }()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		r, err := bc.GetRun(b.ctx, id)
		require.NoError(ct, err)
		require.Len(ct, r.Steps, 2)
		assert.Equal(ct, "sleeping", r.Steps[1].Status)
	}, 30*time.Second, 20*time.Millisecond, "B takes over and sleeps")

	close(release) // A's stale attempt goes on and tries to write
	for _, ch := range []chan struct{}{stopped, aFinished} {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			t.Fatal("A did not stop")
		}
	}
	// A's last write (its hand-back commit) follows the function's end:
	// give it time to land, and check it never does.
	never(t, 1500*time.Millisecond, 50*time.Millisecond, "the stale attempt overwrote a memoized step", func() (bool, error) {
		r, err := bc.GetRun(b.ctx, id)
		if err != nil {
			return false, err
		}
		return string(r.Steps[0].Output) != `"B"`, nil
	})
	r, err := bc.GetRun(b.ctx, id)
	require.NoError(t, err)
	require.Len(t, r.Steps, 2)
	require.Equal(t, "sleeping", r.Steps[1].Status)
}
