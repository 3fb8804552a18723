package integration_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// countFunction is the "count" function every client of
// TestConcurrentClients defines: three plain Steps and one StepTx, each
// incrementing its own (run, step) counter, so that any step executed
// twice shows as a counter above 1.
func countFunction(e *env, pool *pgxpool.Pool, client int) durable.Function {
	upsert := e.sql(`INSERT INTO {{schema}}.counters (run_id, step, n, client) VALUES ($1, $2, 1, $3)
		ON CONFLICT (run_id, step) DO UPDATE SET n = counters.n + 1, client = excluded.client`)
	return durable.NewFunction(durable.FunctionOpts{
		ID:       "count",
		Triggers: []durable.Trigger{{Event: "count/start"}},
	}, func(ctx context.Context, in durable.Input[map[string]any]) (int, error) {
		for i := range 3 {
			key := fmt.Sprintf("s-%d", i)
			if _, err := durable.Step(ctx, key, func(ctx context.Context) (int, error) {
				_, err := pool.Exec(ctx, upsert, in.RunID, key, client)
				return i, err
			}); err != nil {
				return 0, err
			}
		}
		if _, err := durable.StepTx(ctx, "tx", func(ctx context.Context, tx pgx.Tx) (int, error) {
			_, err := tx.Exec(ctx, upsert, in.RunID, "tx", client)
			return 3, err
		}); err != nil {
			return 0, err
		}
		return 4, nil
	})
}

// TestConcurrentClients runs four clients on one schema, each sending and
// executing, with every event sent twice (same ID, two clients, at the same
// moment): each event must start exactly one run, and every step of every
// run must execute exactly once.
func TestConcurrentClients(t *testing.T) {
	t.Parallel()
	const nClients, nEvents = 4, 200
	e := setup(t, 4)
	e.exec(`CREATE TABLE {{schema}}.counters (
		run_id text NOT NULL,
		step text NOT NULL,
		n integer NOT NULL,
		client integer NOT NULL,
		PRIMARY KEY (run_id, step))`)

	clients := make([]*durable.Client, nClients)
	for i := range clients {
		pool := newPool(t, e.url, 8)
		c, err := durable.NewClient(pool, &durable.Config{
			Functions:    []durable.Function{countFunction(e, pool, i)},
			MaxWorkers:   10,
			Schema:       e.schema,
			RecoverAfter: 5 * time.Second,
			RetryBackoff: func(int) time.Duration { return 20 * time.Millisecond },
		})
		require.NoError(t, err)
		clients[i] = c
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			assert.NoError(t, c.Stop(ctx), "stopping client %d", i)
		})
	}
	// Start them all at once.
	var wg sync.WaitGroup
	startErrs := make([]error, nClients)
	for i, c := range clients {
		wg.Go(func() { startErrs[i] = c.Start(e.ctx) })
	}
	wg.Wait()
	for i, err := range startErrs {
		require.NoError(t, err, "starting client %d", i)
	}

	// Every event is sent by two clients at the same moment, with the same
	// ID; up to 10 pairs race at a time.
	type sendResult struct {
		ids []string
		err error
	}
	results := make([][2]sendResult, nEvents)
	sem := make(chan struct{}, 10)
	start := time.Now()
	for i := range nEvents {
		sem <- struct{}{}
		var pair sync.WaitGroup
		pair.Add(2)
		var sent sync.WaitGroup
		for j := range 2 {
			c := clients[(i+j)%nClients]
			sent.Add(1)
			wg.Go(func() {
				defer sent.Done()
				pair.Done()
				pair.Wait() // both senders go together
				ids, err := c.Send(e.ctx, durable.Event{ID: fmt.Sprintf("evt-%03d", i), Name: "count/start", Data: map[string]any{"i": i}})
				results[i][j] = sendResult{ids, err}
			})
		}
		wg.Go(func() { sent.Wait(); <-sem })
	}
	wg.Wait()
	t.Logf("sent %d events twice in %s", nEvents, time.Since(start).Round(time.Millisecond))
	for i, r := range results {
		want := fmt.Sprintf("evt-%03d", i)
		for j := range 2 {
			require.NoError(t, r[j].err, "event %s, sender %d", want, j)
			require.Equal(t, []string{want}, r[j].ids, "event %s, sender %d: Send must return the event's ID", want, j)
		}
	}

	// Wait until every run has ended.
	var total, done, bad int
	waitFor(t, 120*time.Second, "all runs to end", func() (bool, error) {
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*),
			count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')),
			count(*) FILTER (WHERE status IN ('failed', 'cancelled'))
			FROM {{schema}}.durable_run`)).Scan(&total, &done, &bad)
		return err == nil && (bad > 0 || (total >= nEvents && done == total)), err
	})
	t.Logf("%d runs ended %s after the first send", done, time.Since(start).Round(time.Millisecond))

	// Exactly one run per distinct event ID.
	assert.Equal(t, nEvents, total, "runs (one per distinct event ID)")
	assert.Zero(t, bad, "failed or cancelled runs")
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT event_id, count(*), array_agg(status) FROM {{schema}}.durable_run GROUP BY event_id`))
	require.NoError(t, err)
	perEvent := map[string]int{}
	var evID string
	var n int
	var statuses []string
	_, err = pgx.ForEachRow(rows, []any{&evID, &n, &statuses}, func() error {
		perEvent[evID] = n
		for _, s := range statuses {
			assert.Equal(t, "completed", s, "run of event %s", evID)
		}
		return nil
	})
	require.NoError(t, err)
	for i := range nEvents {
		id := fmt.Sprintf("evt-%03d", i)
		assert.Equal(t, 1, perEvent[id], "runs of event %s", id)
	}
	assert.Len(t, perEvent, nEvents, "distinct event IDs with runs")
	var storedEvents int
	require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.durable_event WHERE name = 'count/start'`)).Scan(&storedEvents))
	assert.Equal(t, nEvents, storedEvents, "stored count/start events (one per distinct ID)")

	// Every step of every run executed exactly once.
	rows, err = e.pool.Query(e.ctx, e.sql(`SELECT r.id, c.step, c.n
		FROM {{schema}}.durable_run r LEFT JOIN {{schema}}.counters c ON c.run_id = r.id`))
	require.NoError(t, err)
	perRun := map[string]map[string]int{}
	var runID string
	var step *string
	var cnt *int
	_, err = pgx.ForEachRow(rows, []any{&runID, &step, &cnt}, func() error {
		if perRun[runID] == nil {
			perRun[runID] = map[string]int{}
		}
		if step != nil {
			perRun[runID][*step] = *cnt
		}
		return nil
	})
	require.NoError(t, err)
	over := 0
	for runID, steps := range perRun {
		for _, s := range []string{"s-0", "s-1", "s-2", "tx"} {
			if !assert.Equal(t, 1, steps[s], "run %s: step %s executed %d times", runID, s, steps[s]) {
				over++
			}
		}
		assert.Len(t, steps, 4, "run %s counters: %v", runID, steps)
	}
	assert.Zero(t, over, "steps not executed exactly once")
	var counterRows int
	require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.counters`)).Scan(&counterRows))
	assert.Equal(t, nEvents*4, counterRows, "counter rows")

	// Which clients executed the steps (informative: all should take part).
	rows, err = e.pool.Query(e.ctx, e.sql(`SELECT client, count(*) FROM {{schema}}.counters WHERE step = 'tx' GROUP BY client ORDER BY client`))
	require.NoError(t, err)
	var cl, k int
	_, err = pgx.ForEachRow(rows, []any{&cl, &k}, func() error {
		t.Logf("client %d finished %d runs", cl, k)
		return nil
	})
	require.NoError(t, err)
}
