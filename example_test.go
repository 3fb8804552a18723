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

	var runs []*durable.Run
	for len(runs) == 0 {
		runs, _ = client.RunsForEvent(ctx, eventID)
	}
	run, err := client.WaitRun(ctx, runs[0].ID)
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
				fmt.Printf("%s failed after %d attempts: %s\n", stepErr.StepID, stepErr.Attempts, stepErr.Message)
				return durable.Step(ctx, "email", func(ctx context.Context) (string, error) { return "sent by email", nil })
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
	// sms failed after 2 attempts: sms provider down
	// completed "sent by email"
}
