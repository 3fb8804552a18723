// Command cron shows cron triggers: a function with
// Triggers: []durable.Trigger{{Cron: "@every 2s"}} runs on a schedule, and
// with several processes running it, each tick still starts exactly one
// run.
//
//	go run ./examples/cron
//
// Two clients (standing for two processes of the app) run the same function
// on the same schema for about 5 seconds. Both compute the same ticks; the
// first to claim a tick in Postgres starts its run and the other skips it.
// The example prints each tick it observed, the process that executed its
// run and how many runs it started, and fails if any tick ran twice.
//
// A cron run's event is named "durable/scheduled.timer"; its data holds
// "tick" (the scheduled time, RFC 3339) and "cron" (the spec). Other forms
// of Trigger.Cron:
//
//	{Cron: "0 9 * * *"}                  // every day at 09:00 UTC
//	{Cron: "TZ=Europe/Paris 0 12 * * 5"} // Fridays at noon, Paris time
//	{Cron: "@hourly"}                    // also @daily, @weekly, @monthly
//	{Cron: "@every 30s"}                 // fixed intervals, aligned to the Unix epoch
//
// A tick missed while no process ran (a deploy, say) is fired on start if
// it is less than a minute old.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_cron, which it drops and recreates on each run and
// leaves afterwards for inspection.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

const (
	// exampleSchema is the schema the example writes to.
	exampleSchema = "durable_example_cron"
	spec          = "@every 2s"
	// watchFor is how long the two processes run.
	watchFor = 5 * time.Second
)

// tickRun is one execution of the function, as observed in this program.
type tickRun struct {
	runID, eventID, process string
}

// observer records what the function saw, from both "processes".
type observer struct {
	mu    sync.Mutex
	ticks map[string][]tickRun // tick -> executions
	bad   []error
}

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "cron:", err)
		os.Exit(1)
	}
}

// newReport builds the scheduled function as the process named process
// defines it: every process of an app has the same function (same ID).
func newReport(process string, obs *observer) durable.Function {
	return durable.NewFunction(durable.FunctionOpts{
		ID:       "nightly-report",
		Triggers: []durable.Trigger{{Cron: spec}},
	}, func(ctx context.Context, in durable.Input[map[string]any]) (string, error) {
		tick, _ := in.Event.Data["tick"].(string)
		obs.mu.Lock()
		if in.Event.Name != "durable/scheduled.timer" {
			obs.bad = append(obs.bad, fmt.Errorf("run %s: event %q, want durable/scheduled.timer", in.RunID, in.Event.Name))
		}
		if tick == "" {
			obs.bad = append(obs.bad, fmt.Errorf("run %s: no tick in the event data %v", in.RunID, in.Event.Data))
		}
		if !slices.ContainsFunc(obs.ticks[tick], func(r tickRun) bool { return r.runID == in.RunID }) {
			obs.ticks[tick] = append(obs.ticks[tick], tickRun{runID: in.RunID, eventID: in.Event.ID, process: process})
		}
		obs.mu.Unlock()
		return durable.Step(ctx, "build-report", func(ctx context.Context) (string, error) {
			return "report for " + tick, nil
		})
	})
}

// run runs the example in schema of the database at url.
func run(ctx context.Context, url, schema string) error {
	pool, err := openSchema(ctx, url, schema)
	if err != nil {
		return err
	}
	defer pool.Close()

	// A tick before this was missed while no process ran; the processes
	// fire it on start (it is less than a minute old).
	var start time.Time
	if err := pool.QueryRow(ctx, "SELECT now()").Scan(&start); err != nil {
		return err
	}
	obs := &observer{ticks: map[string][]tickRun{}}
	var clients []*durable.Client
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, c := range clients {
			_ = c.Stop(stopCtx) // a no-op for a client already stopped
		}
	}()
	for _, process := range []string{"process-A", "process-B"} {
		c, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{newReport(process, obs)}})
		if err != nil {
			return err
		}
		if err := c.Start(ctx); err != nil {
			return err
		}
		clients = append(clients, c)
	}
	fmt.Printf("two processes run %q (%s) for %s\n", "nightly-report", spec, watchFor)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(watchFor):
	}
	// Take stock of the ticks seen so far; later ones are left out.
	obs.mu.Lock()
	problems := slices.Clone(obs.bad)
	ticks := make([]string, 0, len(obs.ticks))
	for t := range obs.ticks {
		ticks = append(ticks, t)
	}
	seen := map[string][]tickRun{}
	for _, t := range ticks {
		seen[t] = slices.Clone(obs.ticks[t])
	}
	obs.mu.Unlock()
	slices.Sort(ticks)

	type report struct {
		tick    string
		runs    []tickRun
		started []*durable.Run
	}
	var reports []report
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, tick := range ticks {
		runs := seen[tick]
		// Ask the runs API too: how many runs did this tick's event start?
		started, err := clients[0].RunsForEvent(ctx, runs[0].eventID)
		if err != nil {
			return err
		}
		if len(started) == 0 {
			problems = append(problems, fmt.Errorf("tick %s: the runs API knows no run of event %s", tick, runs[0].eventID))
			continue
		}
		for i, r := range started {
			if started[i], err = clients[0].WaitRun(waitCtx, r.ID); err != nil {
				return err
			}
		}
		reports = append(reports, report{tick, runs, started})
	}
	// Both processes stop; a duplicate run of a tick, had there been one,
	// would have been created by now.
	stopCtx, cancelStop := context.WithTimeout(ctx, 10*time.Second)
	defer cancelStop()
	for _, c := range clients {
		if err := c.Stop(stopCtx); err != nil {
			return err
		}
	}

	fmt.Printf("ticks observed: %d\n", len(reports))
	for _, r := range reports {
		tick, started := r.tick, r.started
		again, err := clients[0].RunsForEvent(ctx, r.runs[0].eventID)
		if err != nil {
			return err
		}
		obs.mu.Lock()
		runs := len(obs.ticks[tick])
		obs.mu.Unlock()
		note := ""
		if t, err := time.Parse(time.RFC3339Nano, tick); err == nil && t.Before(start) {
			note = " (missed while no process ran; fired on start)"
		}
		fmt.Printf("  tick %s: runs=%d (runs API: %d) %s by %s%s\n", tick, runs, len(again), started[0].Status, r.runs[0].process, note)
		if runs != 1 || len(again) != 1 {
			problems = append(problems, fmt.Errorf("tick %s started %d runs (runs API: %d), want 1", tick, runs, len(again)))
		}
		for _, r := range started {
			if r.Status != durable.RunCompleted {
				problems = append(problems, fmt.Errorf("tick %s: run %s is %s", tick, r.ID, r.Status))
			}
		}
	}
	if len(reports) < 2 {
		problems = append(problems, fmt.Errorf("observed %d ticks in %s, want at least 2", len(reports), watchFor))
	}
	if len(problems) == 0 {
		fmt.Println("each tick started exactly one run")
	}
	return errors.Join(problems...)
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
