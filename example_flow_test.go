package durable_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

// Flow control on a function that calls a rate-limited API: one attempt
// per account at once and ten in all, starts spread by a throttle, pro
// accounts first in line, and a stale backlog shed. A rate-limited
// notifier records what it turns away as a skipped run.
func ExampleFunctionOpts_flowControl() {
	ctx := context.Background()
	pool, schema, drop := exampleDB(ctx)
	defer drop()

	syncCRM := durable.NewFunction(durable.FunctionOpts{
		ID:       "sync-crm",
		Triggers: []durable.Trigger{{Event: "crm/sync.requested"}},
		// at most one attempt per account at once, and ten in all
		Concurrency: []durable.Concurrency{{Limit: 1, Key: "event.data.account"}, {Limit: 10}},
		Throttle:    &durable.Throttle{Limit: 100, Period: time.Minute, Burst: 10}, // starts, spread evenly
		Priority:    &durable.Priority{Run: `event.data.plan == "pro" ? 60 : 0`},   // seconds ahead in line
		Timeouts:    durable.Timeouts{Start: time.Hour},                            // shed a stale backlog
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return durable.Step(ctx, "push", func(ctx context.Context) (string, error) {
			return "synced " + in.Event.Data["account"], nil
		})
	})
	notify := durable.NewFunction(durable.FunctionOpts{
		ID:        "notify",
		Triggers:  []durable.Trigger{{Event: "user/alert"}},
		RateLimit: &durable.RateLimit{Limit: 1, Period: time.Hour, Key: "event.data.user"},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return "notified", nil
	})
	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{syncCRM, notify}})
	if err != nil {
		panic(err)
	}
	if err := client.Start(ctx); err != nil {
		panic(err)
	}
	defer client.Stop(ctx)

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // never wait forever
	defer cancel()
	for _, ev := range []durable.Event{
		{Name: "crm/sync.requested", Data: map[string]string{"account": "acme", "plan": "pro"}},
		{Name: "user/alert", Data: map[string]string{"user": "ann"}},
		{Name: "user/alert", Data: map[string]string{"user": "ann"}},
	} {
		ids, _ := client.Send(ctx, ev)
		runs, _ := client.RunsForEvent(ctx, ids[0])
		run, err := client.WaitRun(waitCtx, runs[0].ID)
		if err != nil {
			panic(err)
		}
		fmt.Println(strings.TrimSpace(fmt.Sprint(run.FunctionID, " ", run.Status, " ", run.Error)))
	}
	// Output:
	// sync-crm completed
	// notify completed
	// notify skipped skipped: over the rate limit (RateLimit: 1 per 1h0m0s, key "ann")
}
