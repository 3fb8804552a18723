// Command flow-control shows how pgdurable governs what runs: a
// concurrency limit per customer on a rate-limited API, a rate limit that
// records what it turns away, debounced re-indexing, batched emails and a
// singleton import.
//
//	go run ./examples/flow-control
//
// The functions:
//
//   - "sync-crm" calls a (pretend) CRM that allows one call at a time per
//     account: Concurrency{Limit: 1, Key: "event.data.account"}, plus a
//     global Concurrency{Limit: 3}. Six sync requests for two accounts run
//     at most one per account and three in all, across every process
//     sharing the database; nothing is dropped, the rest wait in order.
//   - "notify-sms" is rate limited, RateLimit{Limit: 2, Period: time.Hour,
//     Key: "event.data.user"}: a third text to the same user within the
//     hour starts no run; it is recorded as a run with status "skipped" and
//     an error naming the rate limit.
//   - "reindex" is debounced, Debounce{Period: 300ms, Key:
//     "event.data.doc"}: five edits in a burst start one run, with the last
//     edit, and RunsForEvent finds that run from any of the five.
//   - "send-digest" batches, Batch{MaxSize: 4, Timeout: 500ms}: ten
//     signups become three runs (4, 4 and, after the timeout, 2), each with
//     its events in Input.Events.
//   - "import" is a singleton per source, Singleton{Key:
//     "event.data.source", Mode: SingletonSkip}: a second import of the
//     same source while one runs is recorded as skipped.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_flow_control, which it drops and recreates on each
// run and leaves afterwards for inspection.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_flow_control"

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "flow-control:", err)
		os.Exit(1)
	}
}

// crm counts the calls in progress, per account and in all.
type crm struct {
	mu                sync.Mutex
	now, most         map[string]int
	inAll, mostInAll  int
	importsInProgress int
}

func (c *crm) call(account string) {
	c.mu.Lock()
	c.now[account]++
	c.inAll++
	c.most[account] = max(c.most[account], c.now[account])
	c.mostInAll = max(c.mostInAll, c.inAll)
	c.mu.Unlock()
	time.Sleep(50 * time.Millisecond) // the API call
	c.mu.Lock()
	c.now[account]--
	c.inAll--
	c.mu.Unlock()
}

// run runs the example in schema of the database at url.
func run(ctx context.Context, url, schema string) error {
	pool, err := openSchema(ctx, url, schema)
	if err != nil {
		return err
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	api := &crm{now: map[string]int{}, most: map[string]int{}}
	syncCRM := durable.NewFunction(durable.FunctionOpts{
		ID:       "sync-crm",
		Triggers: []durable.Trigger{{Event: "crm/sync.requested"}},
		Concurrency: []durable.Concurrency{
			{Limit: 1, Key: "event.data.account"}, // the CRM allows one call at a time per account
			{Limit: 3},                            // and we allow three in all
		},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return durable.Step(ctx, "push", func(ctx context.Context) (string, error) {
			api.call(in.Event.Data["account"])
			return "synced " + in.Event.Data["account"], nil
		})
	})
	sms := durable.NewFunction(durable.FunctionOpts{
		ID:        "notify-sms",
		Triggers:  []durable.Trigger{{Event: "user/alert"}},
		RateLimit: &durable.RateLimit{Limit: 2, Period: time.Hour, Key: "event.data.user"},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return "texted " + in.Event.Data["user"], nil
	})
	reindex := durable.NewFunction(durable.FunctionOpts{
		ID:       "reindex",
		Triggers: []durable.Trigger{{Event: "doc/edited"}},
		Debounce: &durable.Debounce{Period: 300 * time.Millisecond, Key: "event.data.doc", Timeout: 5 * time.Second},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return "indexed " + in.Event.Data["text"], nil
	})
	digest := durable.NewFunction(durable.FunctionOpts{
		ID:       "send-digest",
		Triggers: []durable.Trigger{{Event: "user/signed-up"}},
		Batch:    &durable.Batch{MaxSize: 4, Timeout: 500 * time.Millisecond},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (int, error) {
		return len(in.Events), nil // one email listing every signup of the batch
	})
	imports := durable.NewFunction(durable.FunctionOpts{
		ID:        "import",
		Triggers:  []durable.Trigger{{Event: "import/requested"}},
		Singleton: &durable.Singleton{Key: "event.data.source", Mode: durable.SingletonSkip},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		if err := durable.Sleep(ctx, "wait-for-file", time.Second); err != nil {
			return "", err
		}
		return "imported " + in.Event.Data["source"], nil
	})

	client, err := durable.NewClient(pool, &durable.Config{Schema: schema,
		Functions: []durable.Function{syncCRM, sms, reindex, digest, imports}})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	}()

	// Concurrency: six syncs, two accounts.
	var syncs []durable.Event
	for i := 0; i < 6; i++ {
		syncs = append(syncs, durable.Event{Name: "crm/sync.requested", Data: map[string]string{"account": []string{"acme", "globex"}[i%2]}})
	}
	ids, err := client.Send(ctx, syncs...)
	if err != nil {
		return err
	}
	if _, err := waitAll(ctx, client, ids); err != nil {
		return err
	}
	fmt.Printf("sync-crm: 6 runs completed; at most %d call(s) at once per account (acme %d, globex %d), %d in all (limits 1 and 3)\n",
		max(api.most["acme"], api.most["globex"]), api.most["acme"], api.most["globex"], api.mostInAll)
	if api.most["acme"] > 1 || api.most["globex"] > 1 || api.mostInAll > 3 {
		return errors.New("a concurrency limit was exceeded")
	}

	// Rate limit: the third alert to ann within the hour is skipped.
	var alerts []string
	for _, u := range []string{"ann", "ann", "ann", "bob"} {
		id, err := client.Send(ctx, durable.Event{Name: "user/alert", Data: map[string]string{"user": u}})
		if err != nil {
			return err
		}
		alerts = append(alerts, id[0])
	}
	runs, err := waitAll(ctx, client, alerts)
	if err != nil {
		return err
	}
	for i, r := range runs {
		fmt.Printf("notify-sms: alert %d -> %s %s\n", i+1, r.Status, r.Error)
	}
	if runs[2].Status != durable.RunSkipped || runs[3].Status != durable.RunCompleted {
		return fmt.Errorf("want the third alert skipped and bob's sent, got %s and %s", runs[2].Status, runs[3].Status)
	}

	// Debounce: five edits in a burst, one run with the last.
	var edits []string
	for _, text := range []string{"H", "He", "Hel", "Hell", "Hello"} {
		id, err := client.Send(ctx, durable.Event{Name: "doc/edited", Data: map[string]string{"doc": "readme", "text": text}})
		if err != nil {
			return err
		}
		edits = append(edits, id[0])
	}
	runs, err = waitAll(ctx, client, edits)
	if err != nil {
		return err
	}
	for _, r := range runs[1:] {
		if r.ID != runs[0].ID {
			return errors.New("the edits started more than one run")
		}
	}
	fmt.Printf("reindex: 5 edits -> 1 run (%s), output %s\n", runs[0].ID, runs[0].Output)

	// Batch: ten signups, batches of at most four.
	var signups []durable.Event
	for i := 0; i < 10; i++ {
		signups = append(signups, durable.Event{Name: "user/signed-up", Data: map[string]string{"email": fmt.Sprintf("u%d@example.com", i)}})
	}
	ids, err = client.Send(ctx, signups...)
	if err != nil {
		return err
	}
	runs, err = waitAll(ctx, client, ids)
	if err != nil {
		return err
	}
	sizes := map[string]int{}
	for _, r := range runs {
		sizes[r.ID] = len(r.EventIDs)
	}
	var sz []int
	for _, n := range sizes {
		sz = append(sz, n)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(sz)))
	fmt.Printf("send-digest: 10 signups -> %d runs of %v events\n", len(sizes), sz)
	if fmt.Sprint(sz) != "[4 4 2]" {
		return fmt.Errorf("want batches of 4, 4 and 2, got %v", sz)
	}

	// Singleton: a second import of the same source while one runs.
	first, err := client.Send(ctx, durable.Event{Name: "import/requested", Data: map[string]string{"source": "s3://bucket/a"}})
	if err != nil {
		return err
	}
	second, err := client.Send(ctx, durable.Event{Name: "import/requested", Data: map[string]string{"source": "s3://bucket/a"}})
	if err != nil {
		return err
	}
	runs, err = waitAll(ctx, client, []string{first[0], second[0]})
	if err != nil {
		return err
	}
	fmt.Printf("import: first %s, second %s (%s)\n", runs[0].Status, runs[1].Status, runs[1].Error)
	if runs[0].Status != durable.RunCompleted || runs[1].Status != durable.RunSkipped {
		return errors.New("want the first import completed and the second skipped")
	}
	return nil
}

// waitAll waits for the run each event started to end, and returns them
// in the events' order.
func waitAll(ctx context.Context, c *durable.Client, eventIDs []string) ([]*durable.Run, error) {
	var out []*durable.Run
	for _, id := range eventIDs {
		var runs []*durable.Run
		for len(runs) == 0 {
			var err error
			if runs, err = c.RunsForEvent(ctx, id); err != nil {
				return nil, err
			}
			if len(runs) == 0 {
				select {
				case <-ctx.Done():
					return nil, fmt.Errorf("event %s started no run: %w", id, ctx.Err())
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
		r, err := c.WaitRun(ctx, runs[0].ID)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// databaseURL is DATABASE_URL, else TEST_DATABASE_URL, else the local
// server with trust auth.
func databaseURL() string {
	for _, env := range []string{"DATABASE_URL", "TEST_DATABASE_URL"} {
		if u := os.Getenv(env); u != "" {
			return u
		}
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openSchema connects to url and gives the example a fresh schema: the one
// an earlier run left is dropped and migrate.Up creates it again. It prints
// where the example writes, without the password.
func openSchema(ctx context.Context, url, schema string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("bad database URL (set DATABASE_URL): %w", err)
	}
	c := pool.Config().ConnConfig
	where := fmt.Sprintf("postgres://%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = pool.Ping(pingCtx); err != nil {
		err = fmt.Errorf("no Postgres answers at %s; set DATABASE_URL to a server you can reach: %w", where, err)
	} else if _, err = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err == nil {
		err = migrate.Up(ctx, pool, schema)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	fmt.Printf("pgdurable example: writing to schema %q in %s (recreated on each run and kept afterwards; drop it with: DROP SCHEMA %s CASCADE)\n", schema, where, schema)
	return pool, nil
}
