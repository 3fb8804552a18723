package durable_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

// exampleDB returns a pool and a fresh schema for an example, and a
// function that drops it.
func exampleDB(ctx context.Context) (*pgxpool.Pool, string, func()) {
	url, err := testdb.URL(ctx)
	if err != nil {
		panic(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		panic(err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "ex_" + hex.EncodeToString(b[:])
	if err := migrate.Up(ctx, pool, schema); err != nil {
		panic(err)
	}
	return pool, schema, func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		pool.Close()
	}
}

// Order is an example event payload.
type Order struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

// The README's tour: a function with a StepTx, a durable sleep and a step,
// triggered by an event sent inside the app's transaction.
func Example() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx) // pool, _ := pgxpool.New(ctx, dbURL); migrate.Up(ctx, pool, "durable")
	defer drop()
	_, _ = pool.Exec(ctx, "CREATE TABLE "+schema+".charges (order_id text PRIMARY KEY, amount numeric)")

	processOrder := durable.NewFunction(durable.FunctionOpts{
		ID:       "process-order",
		Triggers: []durable.Trigger{{Event: "order/created", If: "event.data.amount > 100"}},
	}, func(ctx context.Context, in durable.Input[Order]) (string, error) {
		charged, err := durable.StepTx(ctx, "charge", func(ctx context.Context, tx pgx.Tx) (float64, error) {
			_, err := tx.Exec(ctx, "INSERT INTO "+schema+".charges VALUES ($1, $2)", in.Event.Data.ID, in.Event.Data.Amount)
			return in.Event.Data.Amount, err // the app's write commits with the step
		})
		if err != nil {
			return "", err
		}
		if err := durable.Sleep(ctx, "cool-off", 100*time.Millisecond); err != nil {
			return "", err
		}
		return durable.Step(ctx, "email", func(ctx context.Context) (string, error) {
			return fmt.Sprintf("receipt for %s: %.2f", in.Event.Data.ID, charged), nil
		})
	})

	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{processOrder}})
	if err != nil {
		panic(err)
	}
	if err := client.Start(ctx); err != nil {
		panic(err)
	}
	defer client.Stop(ctx)

	var eventID string
	_ = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ids, err := client.SendTx(ctx, tx, durable.Event{Name: "order/created", Data: Order{ID: "o-1", Amount: 150}})
		eventID = ids[0]
		return err
	})

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // never wait forever
	defer cancel()
	var runs []*durable.Run
	for len(runs) == 0 {
		if waitCtx.Err() != nil {
			panic("no run for event " + eventID + " after 30s")
		}
		runs, _ = client.RunsForEvent(waitCtx, eventID)
	}
	run, err := client.WaitRun(waitCtx, runs[0].ID)
	if err != nil {
		panic(err)
	}
	fmt.Println(run.Status, string(run.Output))
	for _, s := range run.Steps {
		fmt.Println(s.ID, s.Kind, s.Status)
	}
	// Output:
	// completed "receipt for o-1: 150.00"
	// charge step completed
	// cool-off sleep completed
	// email step completed
}

// Handling a step's final failure with a fallback.
func ExampleStepError() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx)
	defer drop()

	notify := durable.NewFunction(durable.FunctionOpts{ID: "notify", Retries: durable.Ptr(1)},
		func(ctx context.Context, in durable.Input[map[string]any]) (string, error) {
			_, err := durable.Step(ctx, "sms", func(ctx context.Context) (string, error) {
				return "", fmt.Errorf("sms provider down")
			})
			var stepErr *durable.StepError
			if errors.As(err, &stepErr) {
				// Code outside steps runs again on replays: log with
				// durable.Logger, or return what happened.
				return durable.Step(ctx, "email", func(ctx context.Context) (string, error) {
					return fmt.Sprintf("%s failed after %d attempts (%s): sent by email", stepErr.StepID, stepErr.Attempts, stepErr.Message), nil
				})
			}
			return "sent by sms", err
		})
	client, _ := durable.NewClient(pool, &durable.Config{
		Schema: schema, Functions: []durable.Function{notify},
		RetryBackoff: func(int) time.Duration { return 10 * time.Millisecond },
	})
	_ = client.Start(ctx)
	defer client.Stop(ctx)

	runID, _ := client.Invoke(ctx, "notify", nil)
	run, _ := client.WaitRun(ctx, runID)
	fmt.Println(run.Status, string(run.Output))
	// Output:
	// completed "sms failed after 2 attempts (sms provider down): sent by email"
}

// Waiting for an event that matches this run's trigger, with a timeout.
func ExampleWaitForEvent() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx)
	defer drop()

	onboarding := durable.NewFunction(durable.FunctionOpts{
		ID:       "onboarding",
		Triggers: []durable.Trigger{{Event: "user/signed-up"}},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		ev, err := durable.WaitForEvent[map[string]string](ctx, "verified", durable.WaitOpts{
			Event:   "user/email-verified",
			If:      "event.data.userId == async.data.userId",
			Timeout: time.Hour,
		})
		if errors.Is(err, durable.ErrEventTimeout) {
			return "reminder sent", nil
		}
		if err != nil {
			return "", err
		}
		return "verified via " + ev.Data["via"], nil
	})
	client, _ := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{onboarding}})
	_ = client.Start(ctx)
	defer client.Stop(ctx)

	ids, _ := client.Send(ctx, durable.Event{Name: "user/signed-up", Data: map[string]string{"userId": "u1"}})
	runs, _ := client.RunsForEvent(ctx, ids[0])
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // never wait forever
	defer cancel()
	for { // wait until the run waits
		if waitCtx.Err() != nil {
			panic("run " + runs[0].ID + " not waiting after 30s")
		}
		run, err := client.GetRun(waitCtx, runs[0].ID)
		if err == nil && len(run.Steps) == 1 && run.Steps[0].Status == "waiting" {
			break
		}
		time.Sleep(10 * time.Millisecond) // the poll interval
	}
	_, _ = client.Send(ctx, durable.Event{Name: "user/email-verified", Data: map[string]string{"userId": "u1", "via": "link"}})
	run, _ := client.WaitRun(waitCtx, runs[0].ID)
	fmt.Println(run.Status, string(run.Output))
	// Output: completed "verified via link"
}

// Invoking another function as a step.
func ExampleInvoke() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx)
	defer drop()

	score := durable.NewFunction(durable.FunctionOpts{ID: "compute-score"},
		func(ctx context.Context, in durable.Input[map[string]int]) (int, error) {
			return in.Event.Data["answers"] * 10, nil
		})
	review := durable.NewFunction(durable.FunctionOpts{ID: "review"},
		func(ctx context.Context, in durable.Input[map[string]int]) (string, error) {
			s, err := durable.Invoke[int](ctx, "score", durable.InvokeOpts{
				Function: "compute-score", Data: in.Event.Data, Timeout: time.Minute,
			})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("score %d", s), nil
		})
	client, _ := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{score, review}})
	_ = client.Start(ctx)
	defer client.Stop(ctx)

	runID, _ := client.Invoke(ctx, "review", map[string]int{"answers": 7})
	run, _ := client.WaitRun(ctx, runID)
	child, _ := client.GetRun(ctx, run.Steps[0].ChildRunID)
	fmt.Println(run.Status, string(run.Output), child.FunctionID, child.ParentRunID == run.ID)
	// Output: completed "score 70" compute-score true
}
