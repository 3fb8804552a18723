// Command existing-river shows pgdurable in an app that already runs River:
// the app's own River client (its queues, its workers, its process) works
// durable's jobs beside its own.
//
//	go run ./examples/existing-river
//
// The recipe:
//
//   - build the durable client with Config.ExternalRiver;
//   - register durable's worker on the app's river.Workers with
//     Client.AddWorkers;
//   - give the app's River client the queue durable.DefaultQueue (or
//     Config.Queue), the same schema, and a high RescueStuckJobsAfter
//     (durable recovers runs of dead processes itself, after RecoverAfter,
//     and never interrupts a live one);
//   - start both: durable's Start then runs only its upkeep (heartbeats,
//     recovery, punctual wake-ups).
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_existing_river, which it drops and recreates on each run and
// leaves afterwards for inspection.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_existing_river"

// ResizeArgs is one of the app's own River jobs.
type ResizeArgs struct {
	Image string `json:"image"`
}

// Kind implements river.JobArgs.
func (ResizeArgs) Kind() string { return "resize_image" }

// ResizeWorker is the app's own River worker.
type ResizeWorker struct {
	river.WorkerDefaults[ResizeArgs]
	done chan string
}

// Work implements river.Worker.
func (w *ResizeWorker) Work(ctx context.Context, job *river.Job[ResizeArgs]) error {
	w.done <- job.Args.Image
	return nil
}

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "existing-river:", err)
		os.Exit(1)
	}
}

// run runs the example in schema of the database at url.
func run(ctx context.Context, url, schema string) error {
	pool, err := openSchema(ctx, url, schema)
	if err != nil {
		return err
	}
	defer pool.Close()

	welcome := durable.NewFunction(durable.FunctionOpts{
		ID:       "welcome",
		Triggers: []durable.Trigger{{Event: "user/signed-up"}},
	}, func(ctx context.Context, in durable.Input[map[string]string]) (string, error) {
		return durable.Step(ctx, "greet", func(ctx context.Context) (string, error) {
			return "welcome, " + in.Event.Data["name"], nil
		})
	})
	dc, err := durable.NewClient(pool, &durable.Config{
		Schema:        schema,
		Functions:     []durable.Function{welcome},
		ExternalRiver: true,
	})
	if err != nil {
		return err
	}

	// The app's River set-up, with durable's worker added.
	workers := river.NewWorkers()
	resize := &ResizeWorker{done: make(chan string, 1)}
	river.AddWorker(workers, resize)
	if err := dc.AddWorkers(workers); err != nil {
		return err
	}
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema: schema,
		Queues: map[string]river.QueueConfig{
			river.QueueDefault:   {MaxWorkers: 10},
			durable.DefaultQueue: {MaxWorkers: 50},
		},
		Workers:              workers,
		RescueStuckJobsAfter: 24 * time.Hour,
	})
	if err != nil {
		return err
	}
	if err := dc.Start(ctx); err != nil {
		return err
	}
	if err := rc.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = dc.Stop(stopCtx)
		_ = rc.Stop(stopCtx)
	}()

	// One transaction inserts the app's own job and sends a durable event.
	var eventID string
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := rc.InsertTx(ctx, tx, ResizeArgs{Image: "avatar.png"}, nil); err != nil {
			return err
		}
		ids, err := dc.SendTx(ctx, tx, durable.Event{Name: "user/signed-up", Data: map[string]string{"name": "Ada"}})
		if err != nil {
			return err
		}
		eventID = ids[0]
		return nil
	})
	if err != nil {
		return err
	}
	select {
	case img := <-resize.done:
		fmt.Println("app job resize_image worked:", img)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("the app's own job did not run")
	}
	// Watch the run, for 10 s at most.
	const watchFor = 10 * time.Second
	waitCtx, cancel := context.WithTimeout(ctx, watchFor)
	defer cancel()
	var runs []*durable.Run
	for {
		if runs, err = dc.RunsForEvent(waitCtx, eventID); err != nil {
			return fmt.Errorf("looking for the run of event %s: %w", eventID, err)
		}
		if len(runs) > 0 {
			break
		}
		select {
		case <-waitCtx.Done():
			return fmt.Errorf("no run for event %s after %s", eventID, watchFor)
		case <-time.After(10 * time.Millisecond):
		}
	}
	r, err := dc.WaitRun(waitCtx, runs[0].ID)
	if err != nil {
		return fmt.Errorf("run %s did not end within %s: %w", runs[0].ID, watchFor, err)
	}
	fmt.Printf("durable run %s on the app's River client: %s, result %s\n", r.FunctionID, r.Status, r.Output)
	if r.Status != durable.RunCompleted {
		return fmt.Errorf("run ended %s: %s", r.Status, r.Error)
	}
	return nil
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
