// Command quickstart runs pgdurable's main example end to end and prints
// what happened: an "order/created" event, sent inside the app's own
// transaction, starts a durable function that charges the order in a StepTx
// (the app's write and the step commit together), sleeps durably, then
// sends a receipt.
//
//	go run ./examples/quickstart
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_quickstart, which it drops and recreates on each run and
// leaves afterwards for inspection.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// Order is the data of an "order/created" event.
type Order struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
	Email  string  `json:"email"`
}

// Charge is what the charge step records.
type Charge struct {
	ChargeID string  `json:"charge_id"`
	Amount   float64 `json:"amount"`
}

// Receipt is the function's result.
type Receipt struct {
	OrderID  string `json:"order_id"`
	ChargeID string `json:"charge_id"`
	SentTo   string `json:"sent_to"`
}

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_quickstart"

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
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

	// 1. Tables: River's and pgdurable's, plus the app's own.
	charges := pgx.Identifier{schema, "charges"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+charges+` (
		order_id text PRIMARY KEY, charge_id text NOT NULL, amount numeric NOT NULL)`); err != nil {
		return err
	}

	// 2. A durable function.
	processOrder := durable.NewFunction(durable.FunctionOpts{
		ID:       "process-order",
		Triggers: []durable.Trigger{{Event: "order/created", If: "event.data.amount > 100"}},
	}, func(ctx context.Context, in durable.Input[Order]) (Receipt, error) {
		log := durable.Logger(ctx) // logs once per run, not on replays
		charge, err := durable.StepTx(ctx, "charge", func(ctx context.Context, tx pgx.Tx) (Charge, error) {
			c := Charge{ChargeID: "ch_" + in.Event.Data.ID, Amount: in.Event.Data.Amount}
			_, err := tx.Exec(ctx, `INSERT INTO `+charges+` VALUES ($1, $2, $3)`, in.Event.Data.ID, c.ChargeID, c.Amount)
			return c, err // the insert and the step's completion commit together
		})
		if err != nil {
			return Receipt{}, err
		}
		log.Info("charged", "charge_id", charge.ChargeID)
		// A durable sleep: no goroutine, connection or worker slot is held.
		if err := durable.Sleep(ctx, "cool-off", 2*time.Second); err != nil {
			return Receipt{}, err
		}
		return durable.Step(ctx, "email", func(ctx context.Context) (Receipt, error) {
			return Receipt{OrderID: in.Event.Data.ID, ChargeID: charge.ChargeID, SentTo: in.Event.Data.Email}, nil
		})
	})

	// 3. A client that executes it.
	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{processOrder}})
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

	// 4. The app records an order and sends the event in one transaction.
	order := Order{ID: fmt.Sprintf("o-%d", time.Now().UnixNano()), Amount: 149.90, Email: "ada@example.com"}
	var eventID string
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ids, err := client.SendTx(ctx, tx, durable.Event{Name: "order/created", Data: order})
		if err != nil {
			return err
		}
		eventID = ids[0]
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("sent order/created %s (event %s)\n", order.ID, eventID)

	// 5. Watch the run, for 30 s at most.
	const watchFor = 30 * time.Second
	waitCtx, cancel := context.WithTimeout(ctx, watchFor)
	defer cancel()
	var runs []*durable.Run
	for {
		if runs, err = client.RunsForEvent(waitCtx, eventID); err != nil {
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
	run, err := client.WaitRun(waitCtx, runs[0].ID)
	if err != nil {
		return fmt.Errorf("run %s did not end within %s: %w", runs[0].ID, watchFor, err)
	}
	fmt.Printf("run %s of %s: %s in %s\n", run.ID, run.FunctionID, run.Status, run.EndedAt.Sub(run.CreatedAt).Round(time.Millisecond))
	for _, s := range run.Steps {
		fmt.Printf("  step %-9s %-6s %-9s attempts=%d output=%s\n", s.ID, s.Kind, s.Status, s.Attempts, s.Output)
	}
	fmt.Printf("result: %s\n", run.Output)
	var charged int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+charges+` WHERE order_id = $1`, order.ID).Scan(&charged); err != nil {
		return err
	}
	fmt.Printf("charges rows for %s: %d (exactly once)\n", order.ID, charged)
	if run.Status != durable.RunCompleted {
		return fmt.Errorf("run ended %s: %s", run.Status, run.Error)
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
