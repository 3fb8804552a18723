// Package durabletest runs your durable functions in your own tests,
// against a real Postgres, each test in a fresh schema:
//
//	func TestCheckout(t *testing.T) {
//		env := durabletest.New(t, checkout)
//		env.StubStep("charge", Receipt{ID: "r-1"}) // no call to the payment provider
//		env.SkipSleeps()                           // a Sleep resolves at once
//		run := env.Run(durable.Event{Name: "cart/checkout", Data: cart})
//		require.Equal(t, durable.RunCompleted, run.Status)
//	}
//
// The database is found as pgdurable's own tests find theirs:
// TEST_DATABASE_URL, then DATABASE_URL, then a local server on
// 127.0.0.1:5432 with trust auth, then a testcontainers Postgres where
// Docker is available. Retries back off in milliseconds.
package durabletest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/executor"
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

// Timeout bounds every wait of the harness (a run ending, a step reaching
// a status).
var Timeout = 30 * time.Second

// New starts a client with fns on a fresh schema of the test database,
// with retries backing off in milliseconds; everything is stopped and
// dropped when t ends.
func New(t testing.TB, fns ...durable.Function) *Env {
	t.Helper()
	ctx := context.Background()
	url, err := testdb.URL(ctx)
	if err != nil {
		t.Fatalf("durabletest: no test database: %v", err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatalf("durabletest: %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "durabletest_" + hex.EncodeToString(b[:])
	if err := migrate.Up(ctx, pool, schema); err != nil {
		pool.Close()
		t.Fatalf("durabletest: %v", err)
	}
	hooks := &executor.Hooks{}
	unregister := executor.RegisterHooks(schema, hooks)
	env := &Env{Pool: pool, Schema: schema, t: t, hooks: hooks}
	t.Cleanup(func() {
		if env.Client != nil {
			stop, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = env.Client.Stop(stop)
			cancel()
		}
		unregister()
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		pool.Close()
	})
	env.Client, err = durable.NewClient(pool, &durable.Config{
		Functions:    fns,
		Schema:       schema,
		RetryBackoff: func(int) time.Duration { return 5 * time.Millisecond },
		RecoverAfter: 2 * time.Second,
	})
	if err != nil {
		t.Fatalf("durabletest: %v", err)
	}
	if err := env.Client.Start(ctx); err != nil {
		t.Fatalf("durabletest: %v", err)
	}
	return env
}

// Env is a test's client, on a schema of its own.
type Env struct {
	Client *durable.Client
	Pool   *pgxpool.Pool
	Schema string

	t     testing.TB
	hooks *executor.Hooks
}

// SkipSleeps makes every Sleep and SleepUntil of the functions resolve at
// once (a run already asleep still waits out its sleep).
func (e *Env) SkipSleeps() { e.hooks.SkipSleeps.Store(true) }

// StubStep makes the step with this ID (with its counter suffix when the
// ID is reused, e.g. "fetch:1") return output without running, in every
// run of this Env. output is encoded as JSON, as the step's result would
// be.
func (e *Env) StubStep(stepID string, output any) {
	e.t.Helper()
	b, err := json.Marshal(output)
	if err != nil {
		e.t.Fatalf("durabletest: StubStep %q: %v", stepID, err)
	}
	e.hooks.Stub(stepID, b)
}

// Run sends the event, waits for the one run it starts to end, and returns
// it with its steps; it fails t if no run or more than one starts.
func (e *Env) Run(event durable.Event) *durable.Run {
	e.t.Helper()
	return e.Wait(e.Start(event))
}

// Start sends the event and returns the ID of the one run it starts,
// without waiting for it; it fails t if no run or more than one starts.
func (e *Env) Start(event durable.Event) string {
	e.t.Helper()
	ids := e.Send(event)
	runs, err := e.Client.RunsForEvent(e.t.Context(), ids[0])
	if err != nil {
		e.t.Fatalf("durabletest: %v", err)
	}
	if len(runs) != 1 {
		e.t.Fatalf("durabletest: event %q started %d runs, want 1 (is a function's trigger on %q?)", event.Name, len(runs), event.Name)
	}
	return runs[0].ID
}

// Send sends events (to wake a run waiting for one, say) and returns their
// IDs.
func (e *Env) Send(events ...durable.Event) []string {
	e.t.Helper()
	ids, err := e.Client.Send(e.t.Context(), events...)
	if err != nil {
		e.t.Fatalf("durabletest: Send: %v", err)
	}
	return ids
}

// Wait waits for a run to end and returns it with its steps; it fails t
// after Timeout.
func (e *Env) Wait(runID string) *durable.Run {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), Timeout)
	defer cancel()
	run, err := e.Client.WaitRun(ctx, runID)
	if err != nil {
		e.t.Fatalf("durabletest: run %s did not end within %s: %v (last seen: %+v)", runID, Timeout, err, run)
	}
	return run
}

// WaitStep waits until the run's step stepID has the status ("waiting",
// "sleeping", "completed", ...) and returns the run; it fails t after
// Timeout. Use it before sending the event a WaitForEvent waits for.
func (e *Env) WaitStep(runID, stepID, status string) *durable.Run {
	e.t.Helper()
	deadline := time.Now().Add(Timeout)
	var last *durable.Run
	for {
		run, err := e.Client.GetRun(e.t.Context(), runID)
		if err != nil {
			e.t.Fatalf("durabletest: %v", err)
		}
		last = run
		for _, s := range run.Steps {
			if s.ID == stepID && s.Status == status {
				return run
			}
		}
		if run.Status.Done() || time.Now().After(deadline) {
			e.t.Fatalf("durabletest: step %q of run %s never reached %q (run: %+v)", stepID, runID, status, last)
		}
		time.Sleep(5 * time.Millisecond) // a poll interval, bounded by the deadline above
	}
}
