package durable_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func TestInvokeChildResultAndFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	child := durable.NewFunction(durable.FunctionOpts{ID: "double", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			n := int(in.Event.Data["n"].(float64))
			if n < 0 {
				return 0, durable.NonRetriable(errors.New("negative"))
			}
			if err := durable.Sleep(ctx, "think", 600*time.Millisecond); err != nil {
				return 0, err
			}
			return 2 * n, nil
		})
	var stepErr atomic.Value
	parent := durable.NewFunction(durable.FunctionOpts{ID: "parent"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			v, err := durable.Invoke[int](ctx, "call-double", durable.InvokeOpts{Function: "double", Data: M{"n": 21}})
			if err != nil {
				return 0, err
			}
			_, err = durable.Invoke[int](ctx, "call-double", durable.InvokeOpts{Function: "double", Data: M{"n": -1}})
			var se *durable.StepError
			if !errors.As(err, &se) {
				return 0, durable.NonRetriable(errors.New("want a StepError for the failed child"))
			}
			stepErr.Store(se.Message)
			_, err = durable.Invoke[int](ctx, "nobody", durable.InvokeOpts{Function: "does-not-exist"})
			if !errors.Is(err, durable.ErrFunctionNotFound) {
				return 0, durable.NonRetriable(errors.New("want ErrFunctionNotFound"))
			}
			return v, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{child, parent}})
	runID, err := c.Invoke(b.ctx, "parent", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, "42", string(run.Output))
	require.Contains(t, stepErr.Load(), "negative")
	require.Equal(t, "invoke", run.Steps[0].Kind)
	require.NotEmpty(t, run.Steps[0].ChildRunID)
	childRun, err := c.GetRun(b.ctx, run.Steps[0].ChildRunID)
	require.NoError(t, err)
	require.Equal(t, runID, childRun.ParentRunID, "parent and child show each other")
	require.Equal(t, durable.RunCompleted, childRun.Status)

	_, err = c.Invoke(b.ctx, "does-not-exist", nil)
	require.ErrorIs(t, err, durable.ErrFunctionNotFound)
}

func TestInvokeTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	slow := durable.NewFunction(durable.FunctionOpts{ID: "slow"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return 1, durable.Sleep(ctx, "long", time.Hour)
		})
	parent := durable.NewFunction(durable.FunctionOpts{ID: "impatient"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			_, err := durable.Invoke[int](ctx, "call", durable.InvokeOpts{Function: "slow", Timeout: time.Second})
			if errors.Is(err, durable.ErrEventTimeout) {
				return "timed out", nil
			}
			return "", durable.NonRetriable(errors.New("want a timeout"))
		})
	c := b.client(durable.Config{Functions: []durable.Function{slow, parent}})
	runID, err := c.Invoke(b.ctx, "impatient", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, `"timed out"`, string(run.Output))
	require.Equal(t, "timed_out", run.Steps[0].Status)
}

type signup struct {
	UserID string `json:"userId"`
}

func TestWaitForEventMatchesAndTimesOut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "onboarding", Triggers: []durable.Trigger{{Event: "user/signup"}}},
		func(ctx context.Context, in durable.Input[signup]) (string, error) {
			ev, err := durable.WaitForEvent[M](ctx, "verified", durable.WaitOpts{
				Event:   "user/verified",
				If:      "event.data.userId == async.data.userId",
				Timeout: 2 * time.Second,
			})
			if errors.Is(err, durable.ErrEventTimeout) {
				return "reminder", nil
			}
			if err != nil {
				return "", err
			}
			return "verified:" + ev.Data["how"].(string), nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	ids, err := c.Send(b.ctx,
		durable.Event{Name: "user/signup", Data: signup{UserID: "u1"}},
		durable.Event{Name: "user/signup", Data: signup{UserID: "u2"}})
	require.NoError(t, err)
	r1 := b.runsFor(c, ids[0], 1)[0]
	r2 := b.runsFor(c, ids[1], 1)[0]
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, r1.ID)
		require.NoError(ct, err)
		require.Len(ct, run.Steps, 1)
		assert.Equal(ct, "waiting", run.Steps[0].Status)
	}, 5*time.Second, 10*time.Millisecond)

	start := time.Now()
	_, err = c.Send(b.ctx,
		durable.Event{Name: "user/verified", Data: M{"userId": "someone-else", "how": "x"}},
		durable.Event{Name: "user/verified", Data: M{"userId": "u1", "how": "email"}})
	require.NoError(t, err)
	run := b.waitRun(c, r1.ID, 10*time.Second)
	require.Less(t, time.Since(start), time.Second, "the matching event resumes the run at once")
	require.JSONEq(t, `"verified:email"`, string(run.Output))
	require.Equal(t, "wait", run.Steps[0].Kind)

	run = b.waitRun(c, r2.ID, 10*time.Second)
	require.JSONEq(t, `"reminder"`, string(run.Output), "u2 never verified: the wait times out")
	require.Equal(t, "timed_out", run.Steps[0].Status)
}

func TestWaitForEventSeesEventSentWhileSuspending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The matching event is sent and committed after the wait began and
	// before the run suspends (from a hook between the two): the wait must
	// still get it, and an event sent before the wait began must not count.
	var client *durable.Client
	durable.SetTestHookWaitBegan("waiter", func(trigger json.RawMessage) {
		var data M
		_ = json.Unmarshal(trigger, &data)
		_, err := client.Send(context.Background(), durable.Event{Name: "race/go", Data: M{"key": data["key"], "n": "during"}})
		require.NoError(t, err)
	})
	waiter := durable.NewFunction(durable.FunctionOpts{ID: "waiter", Triggers: []durable.Trigger{{Event: "race/start"}}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			if _, err := durable.Step(ctx, "before", func(ctx context.Context) (int, error) {
				// Sent before the wait begins: not for the wait.
				_, err := client.Send(ctx, durable.Event{Name: "race/go", Data: M{"key": in.Event.Data["key"], "n": "before"}})
				return 0, err
			}); err != nil {
				return "", err
			}
			ev, err := durable.WaitForEvent[M](ctx, "go", durable.WaitOpts{
				Event: "race/go", If: "async.data.key == event.data.key", Timeout: time.Minute,
			})
			if err != nil {
				return "", err
			}
			return ev.Data["n"].(string), nil
		})
	client = b.client(durable.Config{Functions: []durable.Function{waiter}})
	var evs []durable.Event
	for i := 0; i < 10; i++ {
		evs = append(evs, durable.Event{Name: "race/start", Data: M{"key": string(rune('a' + i))}})
	}
	ids, err := client.Send(b.ctx, evs...)
	require.NoError(t, err)
	for _, id := range ids {
		run := b.waitRun(client, b.runsFor(client, id, 1)[0].ID, 20*time.Second)
		require.Equal(t, durable.RunCompleted, run.Status)
		require.JSONEq(t, `"during"`, string(run.Output))
	}
}

func TestCancelOnEventAndSystemEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var cleanups atomic.Int32
	var cleanupData atomic.Value
	order := durable.NewFunction(durable.FunctionOpts{
		ID:       "process-order",
		Triggers: []durable.Trigger{{Event: "order/created"}},
		CancelOn: []durable.CancelOn{{Event: "order/cancelled", If: "event.data.orderId == async.data.orderId"}},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		return 1, durable.Sleep(ctx, "wait-for-shipping", time.Hour)
	})
	cleanup := durable.NewFunction(durable.FunctionOpts{
		ID:       "cleanup",
		Triggers: []durable.Trigger{{Event: "durable/function.cancelled", If: `event.data.function_id == "process-order"`}},
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		// The data first: the test reads it as soon as it sees the count.
		b, _ := json.Marshal(in.Event.Data)
		cleanupData.Store(string(b))
		cleanups.Add(1)
		return 0, nil
	})
	c := b.client(durable.Config{Functions: []durable.Function{order, cleanup}})
	ids, err := c.Send(b.ctx,
		durable.Event{Name: "order/created", Data: M{"orderId": "o1"}},
		durable.Event{Name: "order/created", Data: M{"orderId": "o2"}})
	require.NoError(t, err)
	r1 := b.runsFor(c, ids[0], 1)[0]
	r2 := b.runsFor(c, ids[1], 1)[0]
	_, err = c.Send(b.ctx, durable.Event{Name: "order/cancelled", Data: M{"orderId": "o1"}})
	require.NoError(t, err)
	run, err := c.GetRun(b.ctx, r1.ID)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, run.Status, "cancelled in the sending transaction")
	run, err = c.GetRun(b.ctx, r2.ID)
	require.NoError(t, err)
	require.NotEqual(t, durable.RunCancelled, run.Status)

	require.Eventually(t, func() bool { return cleanups.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Contains(t, cleanupData.Load(), r1.ID)
	require.Contains(t, cleanupData.Load(), `"orderId":"o1"`)

	// The system event exists once, with a deterministic ID.
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_event WHERE id = $1", r1.ID+"/cancelled").Scan(&n))
	require.Equal(t, 1, n)
	require.Never(t, func() bool { return cleanups.Load() != 1 }, 200*time.Millisecond, 10*time.Millisecond, "one cleanup run per cancellation")
	require.Equal(t, int32(1), cleanups.Load(), "one cleanup run per cancellation")

	// CancelMany with a filter.
	cancelled, err := c.CancelMany(b.ctx, durable.CancelFilter{FunctionID: "process-order", If: `event.data.orderId == "o2"`})
	require.NoError(t, err)
	require.Equal(t, 1, cancelled)
	run, err = c.GetRun(b.ctx, r2.ID)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, run.Status)
}

func TestTimeoutsAndIdempotency(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runsOfCart atomic.Int32
	finish := durable.NewFunction(durable.FunctionOpts{ID: "too-slow", Timeouts: durable.Timeouts{Finish: time.Second}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return 1, durable.Sleep(ctx, "forever", time.Hour)
		})
	cart := durable.NewFunction(durable.FunctionOpts{
		ID: "checkout", Triggers: []durable.Trigger{{Event: "cart/checkout"}},
		Idempotency: `event.data.userId + "-" + event.data.cartId`,
	}, func(ctx context.Context, in durable.Input[M]) (int, error) {
		runsOfCart.Add(1)
		return 1, nil
	})
	c := b.client(durable.Config{Functions: []durable.Function{finish, cart}})
	runID, err := c.Invoke(b.ctx, "too-slow", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCancelled, run.Status)
	require.Contains(t, run.Error, "Timeouts.Finish")

	ids, err := c.Send(b.ctx,
		durable.Event{Name: "cart/checkout", Data: M{"userId": "u", "cartId": "c7"}},
		durable.Event{Name: "cart/checkout", Data: M{"userId": "u", "cartId": "c7"}},
		durable.Event{Name: "cart/checkout", Data: M{"userId": "u", "cartId": "c8"}})
	require.NoError(t, err)
	_, err = c.Send(b.ctx, durable.Event{Name: "cart/checkout", Data: M{"userId": "u", "cartId": "c7"}})
	require.NoError(t, err)
	b.waitRun(c, b.runsFor(c, ids[0], 1)[0].ID, 10*time.Second)
	b.waitRun(c, b.runsFor(c, ids[2], 1)[0].ID, 10*time.Second)
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_run WHERE function_id = 'checkout'").Scan(&n))
	require.Equal(t, 2, n, "one run per key")
	require.Equal(t, int32(2), runsOfCart.Load())
}

func TestTimeoutsStartCancelsARunNobodyStarted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	late := durable.NewFunction(durable.FunctionOpts{ID: "late", Timeouts: durable.Timeouts{Start: time.Second}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	// ExternalRiver with no River client working the queue: the run stays
	// queued, while this client's upkeep (which sweeps timeouts) runs.
	c := b.client(durable.Config{Functions: []durable.Function{late}, ExternalRiver: true})
	runID, err := c.Invoke(b.ctx, "late", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCancelled, run.Status)
	require.Contains(t, run.Error, "Timeouts.Start")
	require.Nil(t, run.StartedAt)
}

func TestWaitForSystemEventOfARunEndingAsTheWaitBegins(t *testing.T) {
	t.Parallel()
	b := setup(t)
	other := durable.NewFunction(durable.FunctionOpts{ID: "other"},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	waiter := durable.NewFunction(durable.FunctionOpts{ID: "sys-waiter"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			ev, err := durable.WaitForEvent[M](ctx, "fin", durable.WaitOpts{
				Event: "durable/function.finished", If: `async.data.function_id == "other"`, Timeout: 5 * time.Second})
			if err != nil {
				return "", err
			}
			return ev.Data["run_id"].(string), nil
		})
	var c *durable.Client
	var otherRun string
	// "other" runs and ends after the wait began, before it is registered.
	durable.SetTestHookWaitBegan("sys-waiter", func(json.RawMessage) {
		if otherRun != "" {
			return
		}
		id, err := c.Invoke(context.Background(), "other", nil)
		require.NoError(t, err)
		otherRun = id
		b.waitRun(c, id, 10*time.Second)
	})
	c = b.client(durable.Config{Functions: []durable.Function{other, waiter}})
	id, err := c.Invoke(b.ctx, "sys-waiter", nil)
	require.NoError(t, err)
	run := b.waitRun(c, id, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, `"`+otherRun+`"`, string(run.Output))
}
