package durable_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

type M = map[string]any

func TestStepRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	var mu sync.Mutex
	var attempts []int
	fn := durable.NewFunction(durable.FunctionOpts{ID: "flaky", Retries: durable.Ptr(3)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			mu.Lock()
			attempts = append(attempts, in.Attempt)
			mu.Unlock()
			return durable.Step(ctx, "flaky", func(ctx context.Context) (int, error) {
				if calls.Add(1) < 3 {
					return 0, errors.New("not yet")
				}
				return 42, nil
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "flaky", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.JSONEq(t, "42", string(run.Output))
	require.Equal(t, int32(3), calls.Load())
	require.Len(t, run.Steps, 1)
	require.Equal(t, 3, run.Steps[0].Attempts)
	require.Equal(t, []int{0, 1, 2}, attempts, "Input.Attempt is the attempt of the step being executed")
	// Each failed attempt is kept, with its error, for the run's timeline.
	require.Len(t, run.Steps[0].Failures, 2)
	for i, f := range run.Steps[0].Failures {
		require.Equal(t, i+1, f.Attempt)
		require.Contains(t, f.Error, "not yet")
		require.False(t, f.At.IsZero())
	}
	require.Empty(t, run.Steps[0].Error, "a completed step shows no error")
	require.False(t, run.Steps[0].FirstRecorded.After(run.Steps[0].LastRecorded))
}

func TestStepExhaustedReturnsStepErrorForFallback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "fallback", Retries: durable.Ptr(2)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			_, err := durable.Step(ctx, "primary", func(ctx context.Context) (string, error) {
				calls.Add(1)
				return "", errors.New("provider down")
			})
			var se *durable.StepError
			if !errors.As(err, &se) {
				return "", errors.New("expected a StepError")
			}
			if se.StepID != "primary" || se.Attempts != 3 || !strings.Contains(se.Message, "provider down") {
				return "", durable.NonRetriable(errors.New("bad StepError: " + se.Error()))
			}
			return durable.Step(ctx, "secondary", func(ctx context.Context) (string, error) { return "used fallback", nil })
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "fallback", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, `"used fallback"`, string(run.Output))
	require.Equal(t, int32(3), calls.Load(), "Retries: 2 means 3 attempts")
	require.Equal(t, "failed", run.Steps[0].Status)
	require.Contains(t, run.Steps[0].Error, "provider down")
}

func TestUnhandledStepErrorFailsRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "fails", Retries: durable.Ptr(1)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "boom", func(ctx context.Context) (int, error) {
				calls.Add(1)
				return 0, errors.New("kaput")
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "fails", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "kaput")
	require.Equal(t, int32(2), calls.Load())
}

func TestNonRetriableStepFailsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "nonretriable"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "bad-input", func(ctx context.Context) (int, error) {
				calls.Add(1)
				return 0, durable.NonRetriable(errors.New("invalid card"))
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "nonretriable", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "invalid card")
	require.Equal(t, int32(1), calls.Load())
}

func TestRetryAfterDelaysTheRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var times []time.Time
	fn := durable.NewFunction(durable.FunctionOpts{ID: "retry-after"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "rate-limited", func(ctx context.Context) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				times = append(times, time.Now())
				if len(times) == 1 {
					return 0, durable.RetryAfter(700*time.Millisecond, errors.New("429"))
				}
				return 1, nil
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "retry-after", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, times, 2)
	require.GreaterOrEqual(t, times[1].Sub(times[0]), 700*time.Millisecond)
}

func TestFunctionErrorRetriesFromTopWithoutRerunningSteps(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var stepCalls, fnCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "fn-retry"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			v, err := durable.Step(ctx, "once", func(ctx context.Context) (int, error) {
				stepCalls.Add(1)
				return 7, nil
			})
			if err != nil {
				return 0, err
			}
			if fnCalls.Add(1) < 3 {
				return 0, errors.New("transient after the step")
			}
			return v, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "fn-retry", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.Equal(t, int32(1), stepCalls.Load(), "memoized steps are not re-run")
	require.Equal(t, int32(3), fnCalls.Load())
}

func TestFunctionErrorExhaustsRetries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fnCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "fn-fail", Retries: durable.Ptr(2)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			fnCalls.Add(1)
			return 0, errors.New("always")
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "fn-fail", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "always")
	require.Equal(t, int32(3), fnCalls.Load())
}

func TestPanicsAreRecoveredAndRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var stepCalls, fnCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "panics", Retries: durable.Ptr(1)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			v, err := durable.Step(ctx, "panicky", func(ctx context.Context) (int, error) {
				if stepCalls.Add(1) == 1 {
					panic("step blew up")
				}
				return 1, nil
			})
			if err != nil {
				return 0, err
			}
			if fnCalls.Add(1) == 1 {
				var m map[string]int
				m["x"] = 1 // nil map write: a runtime panic outside any step
			}
			return v, nil
		})
	// A panic that never stops fails the run, with the panic and stack recorded.
	fn2 := durable.NewFunction(durable.FunctionOpts{ID: "always-panics", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (int, error) { panic("no way") })
	c := b.client(durable.Config{Functions: []durable.Function{fn, fn2}})
	runID, err := c.Invoke(b.ctx, "panics", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.Equal(t, int32(2), stepCalls.Load())
	require.Equal(t, int32(2), fnCalls.Load())

	runID, err = c.Invoke(b.ctx, "always-panics", nil)
	require.NoError(t, err)
	run = b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "panic: no way")
	require.NotContains(t, run.Error, "goroutine", "only the message on the run (the stack is logged)")
}
