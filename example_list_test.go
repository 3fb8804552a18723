package durable_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pgdurable/durable"
)

// Listing the failed runs of a function, then rerunning one from the step
// that failed: the steps before it are not run again.
func ExampleClient_ListRuns() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx)
	defer drop()

	var declined atomic.Bool // the card processor declines big amounts, for now
	declined.Store(true)
	var reserved atomic.Int32
	charge := durable.NewFunction(durable.FunctionOpts{
		ID:       "charge",
		Triggers: []durable.Trigger{{Event: "order/created"}},
		Retries:  durable.Ptr(0),
	}, func(ctx context.Context, in durable.Input[Order]) (string, error) {
		stock, err := durable.Step(ctx, "reserve", func(ctx context.Context) (string, error) {
			reserved.Add(1)
			return "reserved " + in.Event.Data.ID, nil
		})
		if err != nil {
			return "", err
		}
		return durable.Step(ctx, "capture", func(ctx context.Context) (string, error) {
			if in.Event.Data.Amount > 100 && declined.Load() {
				return "", errors.New("card declined")
			}
			return fmt.Sprintf("%s, captured %.2f", stock, in.Event.Data.Amount), nil
		})
	})
	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{charge}})
	if err != nil {
		panic(err)
	}
	if err := client.Start(ctx); err != nil {
		panic(err)
	}
	defer client.Stop(ctx)

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // never wait forever
	defer cancel()
	for i, amount := range []float64{50, 150, 250} {
		ids, _ := client.Send(ctx, durable.Event{Name: "order/created", Data: Order{ID: fmt.Sprint("o-", i+1), Amount: amount}})
		runs, _ := client.RunsForEvent(ctx, ids[0])
		if _, err := client.WaitRun(waitCtx, runs[0].ID); err != nil {
			panic(err)
		}
	}

	page, err := client.ListRuns(ctx, durable.RunFilter{
		FunctionID: "charge",
		Status:     []durable.RunStatus{durable.RunFailed},
		If:         "event.data.amount > 200",
	})
	if err != nil {
		panic(err)
	}
	for _, run := range page.Runs {
		fmt.Println(run.Status, run.Error)
	}

	declined.Store(false)
	rerunID, err := client.Rerun(ctx, page.Runs[0].ID, durable.RerunOpts{FromStep: "capture"})
	if err != nil {
		panic(err)
	}
	run, err := client.WaitRun(waitCtx, rerunID)
	if err != nil {
		panic(err)
	}
	fmt.Println(run.Status, string(run.Output), run.RerunOf == page.Runs[0].ID)
	fmt.Println("reserve ran", reserved.Load(), "times")
	// Output:
	// failed step "capture" failed after 1 attempt(s): card declined
	// completed "reserved o-3, captured 250.00" true
	// reserve ran 3 times
}
