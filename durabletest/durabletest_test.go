package durabletest_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
)

type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type receipt struct {
	ChargeID string `json:"charge_id"`
}

// The function under test: it charges, waits a day, waits for the
// shipment, and emails.
var charges atomic.Int32

var fulfil = durable.NewFunction(durable.FunctionOpts{ID: "fulfil", Triggers: []durable.Trigger{{Event: "order/placed"}}},
	func(ctx context.Context, in durable.Input[order]) (string, error) {
		r, err := durable.Step(ctx, "charge", func(ctx context.Context) (receipt, error) {
			charges.Add(1)
			return receipt{}, errors.New("the real payment provider is not reachable from tests")
		})
		if err != nil {
			return "", err
		}
		if err := durable.Sleep(ctx, "cool-off", 24*time.Hour); err != nil {
			return "", err
		}
		shipped, err := durable.WaitForEvent[map[string]any](ctx, "shipped", durable.WaitOpts{
			Event: "order/shipped", If: "async.data.id == event.data.id", Timeout: time.Hour})
		if err != nil {
			return "", err
		}
		return r.ChargeID + " shipped by " + shipped.Data["carrier"].(string), nil
	})

func TestHarnessStubsSkipsSleepsAndDeliversEvents(t *testing.T) {
	t.Parallel()
	env := durabletest.New(t, fulfil)
	env.StubStep("charge", receipt{ChargeID: "ch_1"})
	env.SkipSleeps()

	runID := env.Start(durable.Event{Name: "order/placed", Data: order{ID: "o-1", Amount: 10}})
	env.WaitStep(runID, "shipped", "waiting")
	env.Send(durable.Event{Name: "order/shipped", Data: map[string]any{"id": "o-1", "carrier": "ACME"}})
	run := env.Wait(runID)

	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, `"ch_1 shipped by ACME"`, string(run.Output))
	require.Zero(t, charges.Load(), "a stubbed step does not run")
	require.Equal(t, "completed", run.Steps[1].Status, "the day-long sleep resolved at once")
}

func TestHarnessRunRetriesFastAndReportsFailure(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	flaky := durable.NewFunction(durable.FunctionOpts{ID: "flaky", Triggers: []durable.Trigger{{Event: "go"}}, Retries: durable.Ptr(2)},
		func(ctx context.Context, in durable.Input[map[string]any]) (int, error) {
			return durable.Step(ctx, "s", func(ctx context.Context) (int, error) {
				calls.Add(1)
				return 0, errors.New("down")
			})
		})
	env := durabletest.New(t, flaky)
	began := time.Now()
	run := env.Run(durable.Event{Name: "go"})
	require.Equal(t, durable.RunFailed, run.Status)
	require.Equal(t, int32(3), calls.Load())
	require.Less(t, time.Since(began), 20*time.Second, "retries back off in milliseconds, not the default 10s")
}
