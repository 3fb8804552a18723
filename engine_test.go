package durable_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

type order struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

func TestEventRunsStepsToCompletion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       "process-order",
		Triggers: []durable.Trigger{{Event: "order/created", If: "event.data.amount > 100"}},
	}, func(ctx context.Context, in durable.Input[order]) (string, error) {
		a, err := durable.Step(ctx, "a", func(ctx context.Context) (int, error) { calls.Add(1); return 1, nil })
		if err != nil {
			return "", err
		}
		bb, err := durable.Step(ctx, "b", func(ctx context.Context) (int, error) { calls.Add(1); return a + 1, nil })
		if err != nil {
			return "", err
		}
		return in.Event.Data.ID + ":" + string(rune('0'+bb)), nil
	})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})

	ids, err := c.Send(b.ctx,
		durable.Event{Name: "order/created", Data: order{ID: "o1", Amount: 150}},
		durable.Event{Name: "order/created", Data: order{ID: "o2", Amount: 50}},
	)
	require.NoError(t, err)
	require.Len(t, ids, 2)

	runs := b.runsFor(c, ids[0], 1)
	require.Len(t, runs, 1)
	run := b.waitRun(c, runs[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	var out string
	require.NoError(t, json.Unmarshal(run.Output, &out))
	require.Equal(t, "o1:2", out)
	require.Len(t, run.Steps, 2)
	require.Equal(t, "a", run.Steps[0].ID)
	require.Equal(t, "completed", run.Steps[1].Status)
	require.Equal(t, int32(2), calls.Load())

	none, err := c.RunsForEvent(b.ctx, ids[1])
	require.NoError(t, err)
	require.Empty(t, none, "the If filter must exclude amount 50")
}
