package durable_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func TestStepOutsideFunctionIsAnError(t *testing.T) {
	t.Parallel()
	_, err := durable.Step(context.Background(), "lonely", func(ctx context.Context) (int, error) { return 1, nil })
	require.ErrorContains(t, err, `step "lonely" called outside a durable function`)
	err = durable.Sleep(context.Background(), "nap", time.Second)
	require.ErrorContains(t, err, `step "nap" called outside a durable function`)
	_, err = durable.StepTx(context.Background(), "tx", func(ctx context.Context, tx pgx.Tx) (int, error) { return 1, nil })
	require.ErrorContains(t, err, `step "tx" called outside a durable function`)
}

func TestNestedStepIsRejectedAndRunFailsCleanly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var innerRan atomic.Int32
	var seen atomic.Value
	fn := durable.NewFunction(durable.FunctionOpts{ID: "nested"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "outer", func(ctx context.Context) (int, error) {
				_, err := durable.Step(ctx, "inner", func(ctx context.Context) (int, error) {
					innerRan.Add(1)
					return 1, nil
				})
				seen.Store(err.Error())
				return 0, err
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "nested", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, seen.Load(), `step "inner" called inside step "outer"`)
	require.Contains(t, run.Error, `steps cannot be nested`)
	require.Zero(t, innerRan.Load())
	require.Len(t, run.Steps, 1, "only the outer step is recorded")
	require.Equal(t, 1, run.Steps[0].Attempts, "nesting is not retried")
}

func TestReusedStepIDsGetCounters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "counters"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			sum := 0
			for i := 0; i < 3; i++ {
				v, err := durable.Step(ctx, "fetch", func(ctx context.Context) (int, error) { return i, nil })
				if err != nil {
					return 0, err
				}
				sum += v
			}
			if err := durable.Sleep(ctx, "fetch", time.Millisecond); err != nil {
				return 0, err
			}
			return sum, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "counters", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, "3", string(run.Output))
	var keys []string
	for _, s := range run.Steps {
		keys = append(keys, s.ID)
	}
	require.Equal(t, []string{"fetch", "fetch:1", "fetch:2", "fetch:3"}, keys)
}

func TestStepLimitsGiveClearErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var limitErr atomic.Value
	many := durable.NewFunction(durable.FunctionOpts{ID: "many-steps"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			for i := 0; ; i++ {
				if _, err := durable.Step(ctx, "s", func(ctx context.Context) (int, error) { return i, nil }); err != nil {
					limitErr.Store(err.Error())
					return i, err
				}
			}
		})
	big := durable.NewFunction(durable.FunctionOpts{ID: "big-output"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			_, err := durable.Step(ctx, "huge", func(ctx context.Context) (string, error) {
				return strings.Repeat("x", 2000), nil
			})
			var se *durable.StepError
			if !errors.As(err, &se) {
				return 0, errors.New("expected a StepError for the oversized output")
			}
			return 1, durable.NonRetriable(err)
		})
	c := b.client(durable.Config{Functions: []durable.Function{many, big}, MaxSteps: 20, MaxStepOutput: 1000})

	runID, err := c.Invoke(b.ctx, "many-steps", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, limitErr.Load(), `step "s:20": the run has reached the limit of 20 steps`)
	require.Len(t, run.Steps, 20, "the steps before the limit are kept")

	runID, err = c.Invoke(b.ctx, "big-output", nil)
	require.NoError(t, err)
	run = b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, `output is 2002 bytes, over the 1000-byte limit`)
	require.Equal(t, "failed", run.Steps[0].Status)
	require.Equal(t, 1, run.Steps[0].Attempts, "an oversized output is not retried")
}

func TestNewClientValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	noop := func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil }
	cases := []struct {
		name string
		fns  []durable.Function
		want []string
	}{
		{"empty id", []durable.Function{durable.NewFunction(durable.FunctionOpts{}, noop)}, []string{"ID is required"}},
		{"duplicate", []durable.Function{
			durable.NewFunction(durable.FunctionOpts{ID: "dup"}, noop),
			durable.NewFunction(durable.FunctionOpts{ID: "dup"}, noop),
		}, []string{`two functions have the ID "dup"`}},
		{"bad if", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f",
			Triggers: []durable.Trigger{{Event: "e", If: "event.data.amount >"}}}, noop)},
			[]string{`function "f": Triggers[0].If`, "1:20"}},
		{"async in trigger", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f",
			Triggers: []durable.Trigger{{Event: "e", If: "async.data.x == 1"}}}, noop)},
			[]string{`Triggers[0].If`, "async"}},
		{"non-bool if", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f",
			Triggers: []durable.Trigger{{Event: "e", If: `"yes"`}}}, noop)},
			[]string{`does not evaluate to a bool`}},
		{"too many triggers", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f",
			Triggers: make([]durable.Trigger, 11)}, noop)}, []string{"11 triggers, at most 10"}},
		{"bad cancel", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f",
			CancelOn: []durable.CancelOn{{Event: "x", If: "async.data.id =="}, {}, {Event: "a"}, {Event: "a"}, {Event: "a"}, {Event: "a"}}}, noop)},
			[]string{"6 CancelOn entries, at most 5", "CancelOn[0].If", "CancelOn[1].Event is required"}},
		{"bad idempotency", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f", Idempotency: "event.data.("}, noop)},
			[]string{`function "f": Idempotency`, "1:12"}},
		{"negative retries", []durable.Function{durable.NewFunction(durable.FunctionOpts{ID: "f", Retries: durable.Ptr(-1)}, noop)},
			[]string{"Retries must not be negative"}},
	}
	for _, tc := range cases {
		_, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: tc.fns})
		require.Error(t, err, tc.name)
		for _, w := range tc.want {
			require.Contains(t, err.Error(), w, tc.name)
		}
	}
	_, err := durable.NewClient(b.pool, &durable.Config{Schema: "Bad-Schema"})
	require.ErrorContains(t, err, `invalid schema name "Bad-Schema"`)
	_, err = durable.NewClient(nil, nil)
	require.ErrorContains(t, err, "pool is nil")
	_, err = durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{
		durable.NewFunction(durable.FunctionOpts{ID: "ok"}, noop)}})
	require.NoError(t, err)
}

func TestRunStateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var failedAt atomic.Value
	fn := durable.NewFunction(durable.FunctionOpts{ID: "hoarder"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			for i := 0; ; i++ {
				_, err := durable.Step(ctx, "chunk", func(ctx context.Context) (string, error) {
					return strings.Repeat("y", 900), nil
				})
				if err != nil {
					failedAt.Store(err.Error())
					return i, durable.NonRetriable(err)
				}
			}
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}, MaxRunState: 3000})
	runID, err := c.Invoke(b.ctx, "hoarder", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, failedAt.Load(), `step "chunk:3"`)
	require.Contains(t, failedAt.Load(), "over the 3000-byte limit (Config.MaxRunState)")
	require.Len(t, run.Steps, 4)
	require.Equal(t, "completed", run.Steps[2].Status)
	require.Equal(t, "failed", run.Steps[3].Status)
}
