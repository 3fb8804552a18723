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
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

const schema = "existing_river"

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
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "existing-river:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	url, err := testdb.URL(ctx)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrate.Up(ctx, pool, schema); err != nil {
		return err
	}

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
