package durable_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func countRows(t *testing.T, b *bundle, table string) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+"."+table).Scan(&n))
	return n
}

func TestSendValidatesAndWritesNothingOnError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, MaxEventSize: 1024})
	require.NoError(t, err)

	_, err = c.Send(b.ctx, durable.Event{Name: "ok"}, durable.Event{Data: M{"x": 1}})
	require.ErrorContains(t, err, "event 1: Name is required")
	_, err = c.Send(b.ctx, durable.Event{Name: "ok"}, durable.Event{Name: "bad/data", Data: math.Inf(1)})
	require.ErrorContains(t, err, `event 1 ("bad/data"): Data does not marshal to JSON`)
	_, err = c.Send(b.ctx, durable.Event{Name: "big", Data: strings.Repeat("x", 2000)})
	require.ErrorContains(t, err, `over the 1024-byte limit (Config.MaxEventSize)`)
	_, err = c.Send(b.ctx, durable.Event{Name: "raw", Data: json.RawMessage(`{"broken"`)})
	require.ErrorContains(t, err, "Data is not valid JSON")
	_, err = c.Send(b.ctx)
	require.ErrorContains(t, err, "no events")
	require.Zero(t, countRows(t, b, "durable_event"), "a rejected Send writes nothing")
}

func TestEventIDDeduplicationAndSendOnlyClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "dedupe", Triggers: []durable.Trigger{{Event: "user/signup"}}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			return in.Event.Data["email"].(string), nil
		})
	b.client(durable.Config{Functions: []durable.Function{fn}})
	api, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema}) // no functions: an API server
	require.NoError(t, err)
	require.NoError(t, api.Start(b.ctx)) // a no-op

	ids1, err := api.Send(b.ctx, durable.Event{ID: "signup-42", Name: "user/signup", Data: M{"email": "a@x"}})
	require.NoError(t, err)
	ids2, err := api.Send(b.ctx, durable.Event{ID: "signup-42", Name: "user/signup", Data: M{"email": "b@x"}})
	require.NoError(t, err)
	require.Equal(t, []string{"signup-42"}, ids1)
	require.Equal(t, ids1, ids2)
	// The same ID twice in one call is delivered once too.
	ids3, err := api.Send(b.ctx, durable.Event{ID: "dup", Name: "user/signup", Data: M{"email": "c@x"}},
		durable.Event{ID: "dup", Name: "user/signup", Data: M{"email": "d@x"}})
	require.NoError(t, err)
	require.Equal(t, []string{"dup", "dup"}, ids3)

	runs := b.runsFor(api, "signup-42", 1)
	run := b.waitRun(api, runs[0].ID, 10*time.Second)
	require.JSONEq(t, `"a@x"`, string(run.Output), "the first event wins")
	b.runsFor(api, "dup", 1)
	require.Equal(t, 2, countRows(t, b, "durable_run"))
}

func TestSendTxRollsBackWithTheApp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "outbox", Triggers: []durable.Trigger{{Event: "order/placed"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	c := b.client(durable.Config{Functions: []durable.Function{fn}})

	var rolledBackID string
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		ids, err := c.SendTx(b.ctx, tx, durable.Event{Name: "order/placed"})
		rolledBackID = ids[0]
		require.NoError(t, err)
		return errors.New("app fails after sending")
	})
	require.Error(t, err)
	var committedID string
	require.NoError(t, pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		ids, err := c.SendTx(b.ctx, tx, durable.Event{Name: "order/placed"})
		committedID = ids[0]
		return err
	}))
	runs := b.runsFor(c, committedID, 1)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, runs[0].ID, 10*time.Second).Status)
	none, err := c.RunsForEvent(b.ctx, rolledBackID)
	require.NoError(t, err)
	require.Empty(t, none)
	var appEvents int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_event WHERE name NOT LIKE 'durable/%'").Scan(&appEvents))
	require.Equal(t, 1, appEvents)
}

func TestStepTxCommitsWithTheStepOrNotAtAll(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.pool.Exec(b.ctx, "CREATE TABLE "+b.schema+".charges (run_id text, amount int)")
	require.NoError(t, err)
	attempts := 0
	fn := durable.NewFunction(durable.FunctionOpts{ID: "charge", Triggers: []durable.Trigger{{Event: "order/created"}}},
		func(ctx context.Context, in durable.Input[order]) (int, error) {
			n, err := durable.StepTx(ctx, "charge", func(ctx context.Context, tx pgx.Tx) (int, error) {
				attempts++
				if _, err := tx.Exec(ctx, "INSERT INTO "+b.schema+".charges VALUES ($1, $2)", in.RunID, int(in.Event.Data.Amount)); err != nil {
					return 0, err
				}
				if attempts == 1 {
					return 0, errors.New("gateway timeout after the insert")
				}
				return int(in.Event.Data.Amount), nil
			})
			if err != nil {
				return 0, err
			}
			// A failure after the StepTx must not repeat it.
			if attempts == 2 {
				attempts++
				return 0, errors.New("fail after the step")
			}
			return n, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	ids, err := c.Send(b.ctx, durable.Event{Name: "order/created", Data: order{ID: "o", Amount: 120}})
	require.NoError(t, err)
	runs := b.runsFor(c, ids[0], 1)
	run := b.waitRun(c, runs[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.Equal(t, 1, countRows(t, b, "charges"), "the failed attempt rolled back; the replay did not re-run the step")
	require.Equal(t, 2, run.Steps[0].Attempts)
}

func TestSendEventStepSendsOncePerRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fnCalls atomic.Int32
	sender := durable.NewFunction(durable.FunctionOpts{ID: "sender"},
		func(ctx context.Context, in durable.Input[M]) ([]string, error) {
			ids, err := durable.SendEvent(ctx, "ping", durable.Event{Name: "x/ping", Data: M{"n": 1}})
			if err != nil {
				return nil, err
			}
			if fnCalls.Add(1) == 1 {
				return nil, errors.New("fail after sending: the replay must not send again")
			}
			return ids, nil
		})
	receiver := durable.NewFunction(durable.FunctionOpts{ID: "receiver", Triggers: []durable.Trigger{{Event: "x/ping"}}},
		func(ctx context.Context, in durable.Input[M]) (float64, error) {
			return in.Event.Data["n"].(float64), nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{sender, receiver}})
	runID, err := c.Invoke(b.ctx, "sender", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	var ids []string
	require.NoError(t, json.Unmarshal(run.Output, &ids))
	require.Len(t, ids, 1)
	require.Equal(t, "send", run.Steps[0].Kind)
	runs := b.runsFor(c, ids[0], 1)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, runs[0].ID, 10*time.Second).Status)
	var events int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_event WHERE name = 'x/ping'").Scan(&events))
	require.Equal(t, 1, events)
	require.Equal(t, int32(2), fnCalls.Load())
}
