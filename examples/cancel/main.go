// Command cancel shows the ways to cancel runs, and a function that cleans
// up after cancelled ones.
//
//	go run ./examples/cancel
//
// "process-order" waits an hour (durably) before shipping. Its runs are
// cancelled three ways:
//
//   - by an event: FunctionOpts.CancelOn lists "order/cancelled" with
//     If: "event.data.orderId == async.data.orderId", so the run whose
//     trigger (`event`) has the same orderId as the new event (`async`) is
//     cancelled, in the transaction that stores the event;
//   - by ID: Client.Cancel(ctx, runID);
//   - in bulk: Client.CancelMany(ctx, durable.CancelFilter{FunctionID:
//     "process-order", If: ...}), the If being CEL over each run's trigger.
//
// Every cancellation emits a "durable/function.cancelled" event whose data
// holds function_id, run_id, error (the reason) and event (the cancelled
// run's trigger). "record-cancellation" is triggered by it, with
// If: `event.data.function_id == "process-order"`, and records the
// cancelled order in the app's table in a StepTx. The example checks that
// it ran exactly once per cancelled run.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_cancel, which it drops and recreates on each run and
// leaves afterwards for inspection.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// Order is the data of an "order/created" event. Batch is unique per
// execution of the example, so reruns never mix.
type Order struct {
	OrderID string  `json:"orderId"`
	Batch   string  `json:"batch"`
	Amount  float64 `json:"amount"`
}

// Cancelled is the data of a "durable/function.cancelled" event.
type Cancelled struct {
	FunctionID string `json:"function_id"`
	RunID      string `json:"run_id"`
	Error      string `json:"error"` // why the run was cancelled
	Event      struct {
		Name string `json:"name"`
		Data Order  `json:"data"`
	} `json:"event"` // the cancelled run's trigger
}

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_cancel"

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "cancel:", err)
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
	// The app's table of cancelled orders. No unique key on run_id: a
	// second cleanup of the same run would show as a second row.
	cancelled := pgx.Identifier{schema, "cancelled_orders"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+cancelled+` (
		id bigserial PRIMARY KEY, run_id text NOT NULL, order_id text NOT NULL, batch text NOT NULL,
		reason text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	processOrder := durable.NewFunction(durable.FunctionOpts{
		ID:       "process-order",
		Triggers: []durable.Trigger{{Event: "order/created"}},
		CancelOn: []durable.CancelOn{{Event: "order/cancelled", If: "event.data.orderId == async.data.orderId"}},
	}, func(ctx context.Context, in durable.Input[Order]) (string, error) {
		if err := durable.Sleep(ctx, "wait-before-shipping", time.Hour); err != nil {
			return "", err
		}
		return durable.Step(ctx, "ship", func(ctx context.Context) (string, error) {
			return "shipped " + in.Event.Data.OrderID, nil
		})
	})

	recordCancellation := durable.NewFunction(durable.FunctionOpts{
		ID:       "record-cancellation",
		Triggers: []durable.Trigger{{Event: durable.EventFunctionCancelled, If: `event.data.function_id == "process-order"`}},
	}, func(ctx context.Context, in durable.Input[Cancelled]) (string, error) {
		c := in.Event.Data
		return durable.StepTx(ctx, "record", func(ctx context.Context, tx pgx.Tx) (string, error) {
			_, err := tx.Exec(ctx, `INSERT INTO `+cancelled+` (run_id, order_id, batch, reason)
				VALUES ($1, $2, $3, $4)`, c.RunID, c.Event.Data.OrderID, c.Event.Data.Batch, c.Error)
			return c.Event.Data.OrderID, err // the row and the step commit together
		})
	})

	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{processOrder, recordCancellation}})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(stopCtx)
	}()

	// Four orders; each run goes to sleep for an hour.
	batch := fmt.Sprintf("b%d", time.Now().UnixNano())
	orders := []Order{
		{OrderID: batch + "-o1", Batch: batch, Amount: 250},
		{OrderID: batch + "-o2", Batch: batch, Amount: 40},
		{OrderID: batch + "-o3", Batch: batch, Amount: 250},
		{OrderID: batch + "-o4", Batch: batch, Amount: 40},
	}
	var events []durable.Event
	for _, o := range orders {
		events = append(events, durable.Event{Name: "order/created", Data: o})
	}
	ids, err := client.Send(ctx, events...)
	if err != nil {
		return err
	}
	runIDs := make([]string, len(ids))
	for i, id := range ids {
		if runIDs[i], err = runOf(ctx, client, id); err != nil {
			return err
		}
		if err := untilSleeping(ctx, client, runIDs[i]); err != nil {
			return err
		}
	}
	fmt.Printf("4 orders of batch %s created; their runs sleep for an hour\n", batch)

	// 1. An event cancels o1's run (CancelOn).
	if _, err := client.Send(ctx, durable.Event{Name: "order/cancelled", Data: map[string]string{"orderId": orders[0].OrderID}}); err != nil {
		return err
	}
	fmt.Println("sent order/cancelled for o1")
	// 2. Cancel o2's run by its ID.
	if err := client.Cancel(ctx, runIDs[1]); err != nil {
		return err
	}
	fmt.Println("Client.Cancel(o2's run)")
	// 3. Cancel the batch's big orders still live: o3 (o1 is cancelled already).
	bigOnes := fmt.Sprintf("event.data.batch == %q && event.data.amount > 100", batch)
	n, err := client.CancelMany(ctx, durable.CancelFilter{FunctionID: "process-order", If: bigOnes})
	if err != nil {
		return err
	}
	fmt.Printf("Client.CancelMany(If: %s) cancelled %d run(s)\n", bigOnes, n)

	var problems []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			problems = append(problems, fmt.Errorf(format, args...))
		}
	}
	check(n == 1, "CancelMany of the big orders cancelled %d runs, want 1 (o3)", n)
	want := []durable.RunStatus{durable.RunCancelled, durable.RunCancelled, durable.RunCancelled, durable.RunRunning}
	fmt.Println("statuses:")
	for i, id := range runIDs {
		r, err := client.GetRun(ctx, id)
		if err != nil {
			return err
		}
		detail := r.Error
		if r.Status == durable.RunRunning && len(r.Steps) > 0 {
			detail = fmt.Sprintf("(step %s %s)", r.Steps[0].ID, r.Steps[0].Status)
		}
		fmt.Printf("  o%d run %s: %-9s %s\n", i+1, r.ID, r.Status, detail)
		check(r.Status == want[i], "o%d's run is %s, want %s", i+1, r.Status, want[i])
	}

	// 4. Tidy up: cancel whatever of the batch is still live (o4).
	n, err = client.CancelMany(ctx, durable.CancelFilter{FunctionID: "process-order", If: fmt.Sprintf("event.data.batch == %q", batch)})
	if err != nil {
		return err
	}
	fmt.Printf("Client.CancelMany(batch) cancelled %d run(s) (o4)\n", n)
	check(n == 1, "CancelMany of the batch cancelled %d runs, want 1 (o4)", n)

	// The cleanup function runs once per cancelled run.
	count := func() (map[string]int, error) {
		rows, err := pool.Query(ctx, `SELECT run_id, count(*) FROM `+cancelled+` WHERE batch = $1 GROUP BY run_id`, batch)
		if err != nil {
			return nil, err
		}
		m := map[string]int{}
		var id string
		var c int
		_, err = pgx.ForEachRow(rows, []any{&id, &c}, func() error { m[id] = c; return nil })
		return m, err
	}
	deadline := time.Now().Add(10 * time.Second)
	var cleaned map[string]int
	for {
		if cleaned, err = count(); err != nil {
			return err
		}
		if len(cleaned) == len(runIDs) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let a duplicate cleanup, if any, show up
	if cleaned, err = count(); err != nil {
		return err
	}
	fmt.Println("record-cancellation runs per cancelled run:")
	for i, id := range runIDs {
		var reason string
		if err := pool.QueryRow(ctx, `SELECT coalesce(min(reason), '') FROM `+cancelled+` WHERE run_id = $1`, id).Scan(&reason); err != nil {
			return err
		}
		fmt.Printf("  o%d run %s: %d (reason %q)\n", i+1, id, cleaned[id], reason)
		check(cleaned[id] == 1, "o%d's run was cleaned up %d times, want 1", i+1, cleaned[id])
	}
	return errors.Join(problems...)
}

// runOf returns the ID of the run an event started, waiting 10 s at most.
func runOf(ctx context.Context, client *durable.Client, eventID string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		runs, err := client.RunsForEvent(ctx, eventID)
		if err != nil {
			return "", err
		}
		if len(runs) > 0 {
			return runs[0].ID, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no run for event %s: %w", eventID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// untilSleeping returns once the run sleeps.
func untilSleeping(ctx context.Context, client *durable.Client, runID string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		r, err := client.GetRun(ctx, runID)
		if err != nil {
			return err
		}
		if len(r.Steps) > 0 && r.Steps[0].Status == "sleeping" {
			return nil
		}
		if r.Status.Done() {
			return fmt.Errorf("run %s ended %s before sleeping", runID, r.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("run %s is not sleeping: %w", runID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
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
