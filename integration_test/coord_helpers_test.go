package integration_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// Helpers of the coordination tests (waits_test.go, invoke_test.go,
// cancel_test.go), whose functions are defined in worker/coordination.go.

type M = map[string]any

// createCoordTables creates the tables the worker's coordination functions
// write to. No unique constraints: duplicates must be visible.
func (e *env) createCoordTables() {
	e.t.Helper()
	e.exec(`CREATE TABLE {{schema}}.outcomes (
		id bigserial PRIMARY KEY,
		run_id text NOT NULL,
		fn text NOT NULL,
		step text NOT NULL,
		worker text NOT NULL,
		detail text NOT NULL,
		at timestamptz NOT NULL DEFAULT clock_timestamp())`)
	e.exec(`CREATE TABLE {{schema}}.marks (
		id bigserial PRIMARY KEY,
		run_id text NOT NULL,
		what text NOT NULL,
		worker text NOT NULL,
		at timestamptz NOT NULL DEFAULT clock_timestamp())`)
}

// outcome is a row of the outcomes table.
type outcome struct {
	runID, fn, step, worker, detail string
}

// outcomesByRun returns the outcomes rows of a function, by run, in the
// order they were written.
func (e *env) outcomesByRun(fn string) map[string][]outcome {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT run_id, fn, step, worker, detail FROM {{schema}}.outcomes WHERE fn = $1 ORDER BY id`), fn)
	require.NoError(e.t, err)
	out := map[string][]outcome{}
	var o outcome
	_, err = pgx.ForEachRow(rows, []any{&o.runID, &o.fn, &o.step, &o.worker, &o.detail}, func() error {
		out[o.runID] = append(out[o.runID], o)
		return nil
	})
	require.NoError(e.t, err)
	return out
}

// count runs a count(*) query.
func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.pool.QueryRow(e.ctx, e.sql(sql), args...).Scan(&n))
	return n
}

// startRuns sends events that each start exactly one run, and returns the
// runs in the events' order.
func (e *env) startRuns(c *durable.Client, events []durable.Event) []string {
	e.t.Helper()
	ids, err := c.Send(e.ctx, events...)
	require.NoError(e.t, err)
	require.Len(e.t, ids, len(events))
	runIDs := make([]string, len(ids))
	for i, id := range ids {
		runs, err := c.RunsForEvent(e.ctx, id)
		require.NoError(e.t, err)
		require.Len(e.t, runs, 1, "event %s must start exactly one run", id)
		runIDs[i] = runs[0].ID
	}
	return runIDs
}

// senderClient is a send-only client on a pool of its own whose
// connections are already open, so that concurrent senders released
// together reach Postgres together.
func (e *env) senderClient(conns int32) *durable.Client {
	e.t.Helper()
	pool := newPool(e.t, e.url, conns)
	held := make([]interface{ Release() }, 0, conns)
	for range conns {
		conn, err := pool.Acquire(e.ctx)
		require.NoError(e.t, err)
		held = append(held, conn)
	}
	for _, c := range held {
		c.Release()
	}
	c, err := durable.NewClient(pool, &durable.Config{Schema: e.schema})
	require.NoError(e.t, err)
	return c
}

func randomTag() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stepByID returns a run's step by ID, or nil.
func stepByID(run *durable.Run, id string) *durable.RunStep {
	for i := range run.Steps {
		if run.Steps[i].ID == id {
			return &run.Steps[i]
		}
	}
	return nil
}

// eventIDOf decodes the ID of an event stored as a wait step's output.
func eventIDOf(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var ev struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(raw, &ev), "wait step output %s", raw)
	return ev.ID
}

func jsonString(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	require.NoError(t, json.Unmarshal(raw, &s), "output %s", raw)
	return s
}

// ctxFor returns a context that ends after d (and with the test).
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// assertNoTxConflicts fails the test if a worker's query failed with a
// deadlock or serialization failure (SQLSTATE class 40), as printed by the
// worker's tracer (worker/dberrors.go): the engine may absorb such an error
// (a timeout claim that loses a deadlock only ends the attempt, and the
// other side waited out deadlock_timeout), but a correct engine takes its
// locks in one order and never deadlocks.
func assertNoTxConflicts(t *testing.T, procs ...*proc) {
	t.Helper()
	for _, p := range procs {
		var lines []string
		for _, l := range strings.Split(p.out.String(), "\n") {
			if strings.Contains(l, ": SQLSTATE 40") {
				lines = append(lines, l)
			}
		}
		assert.Empty(t, lines, "worker %s: queries failed with a deadlock or serialization failure", p.name)
	}
}
