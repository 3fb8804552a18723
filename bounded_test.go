package durable_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// A wait finds a matching event committed after it began even when more
// than a page of events of the same name came first.
func TestWaitFindsMatchBeyondFirstPageOfEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const noise = 1200
	var client *durable.Client
	var once sync.Once
	var sendErr error // the hook runs on the run's goroutine: checked after the run
	durable.SetTestHookWaitBegan("bulk-waiter", func(json.RawMessage) {
		once.Do(func() {
			// After the wait began, before the run suspends: many events
			// of the name that do not match, then the one that does.
			ctx := context.Background()
			for start := 0; start < noise && sendErr == nil; start += 300 {
				var evs []durable.Event
				for i := start; i < start+300; i++ {
					evs = append(evs, durable.Event{Name: "bulk/x", Data: M{"n": i}})
				}
				_, sendErr = client.Send(ctx, evs...)
			}
			if sendErr == nil {
				_, sendErr = client.Send(ctx, durable.Event{Name: "bulk/x", Data: M{"n": noise}})
			}
		})
	})
	fn := durable.NewFunction(durable.FunctionOpts{ID: "bulk-waiter"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			ev, err := durable.WaitForEvent[M](ctx, "x", durable.WaitOpts{
				Event: "bulk/x", If: fmt.Sprintf("async.data.n == %d", noise), Timeout: 20 * time.Second,
			})
			if errors.Is(err, durable.ErrEventTimeout) {
				return "timed out", nil
			}
			if err != nil {
				return "", err
			}
			return fmt.Sprint(ev.Data["n"]), nil
		})
	client = b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := client.Invoke(b.ctx, "bulk-waiter", nil)
	require.NoError(t, err)
	run := b.waitRun(client, runID, 30*time.Second)
	once.Do(func() {}) // the hook ran (or never will): sendErr is settled
	require.NoError(t, sendErr)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, fmt.Sprintf(`"%d"`, noise), string(run.Output), "the matching event, not a timeout")
	require.Equal(t, "completed", run.Steps[0].Status)
}

// planNode is a node of EXPLAIN (FORMAT JSON).
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	ActualRows   float64    `json:"Actual Rows"`
	ActualLoops  float64    `json:"Actual Loops"`
	RowsRemoved  float64    `json:"Rows Removed by Filter"`
	SharedHit    int64      `json:"Shared Hit Blocks"`
	SharedRead   int64      `json:"Shared Read Blocks"`
	Plans        []planNode `json:"Plans"`
}

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// The waker's query reads index ranges only: jobs scheduled far ahead (an
// Invoke without timeout waits ten years) are never read, however many.
func TestWakeQueryIgnoresFarFutureJobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const far = 20000
	_, err := b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.river_job (args, kind, max_attempts, queue, state, scheduled_at)
		SELECT jsonb_build_object('run_id', 'r' || g), 'durable_run', 1000, $1, 'scheduled',
			now() + interval '10 years' + g * interval '1 second'
		FROM generate_series(1, $2::int) g`, durable.DefaultQueue, far)
	require.NoError(t, err)
	// Work of other kinds, which the waker must not read through either:
	// available jobs (a backlog) and a job due in a moment.
	_, err = b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.river_job (args, kind, max_attempts, queue, state, scheduled_at)
		SELECT jsonb_build_object('run_id', 'a' || g), 'durable_run', 1000, $1, 'available', now() - interval '1 minute'
		FROM generate_series(1, 2000) g`, durable.DefaultQueue)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `ANALYZE `+b.schema+`.river_job`)
	require.NoError(t, err)

	wake, err := durable.QueryForTest(b.schema, "Wake")
	require.NoError(t, err)
	// Run it for real (ANALYZE), in transactions rolled back: twice, the
	// second time after a due job and a soon-due one appear.
	explain := func() (planNode, *time.Time, int) {
		args := []any{durable.DefaultQueue, "chan", "{}", false, 1.0}
		var out []struct{ Plan planNode }
		var promoted, notified int
		var due *time.Time
		for _, q := range []string{"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + wake, wake} {
			tx, err := b.pool.Begin(b.ctx)
			require.NoError(t, err)
			if q == wake {
				err = tx.QueryRow(b.ctx, q, args...).Scan(&promoted, &notified, &due)
			} else {
				err = tx.QueryRow(b.ctx, q, args...).Scan(&out)
			}
			require.NoError(t, err)
			require.NoError(t, tx.Rollback(b.ctx))
		}
		require.Len(t, out, 1)
		return out[0].Plan, due, promoted
	}
	check := func(plan planNode) {
		t.Helper()
		var scans int
		plan.walk(func(n planNode) {
			if n.RelationName != "river_job" || !strings.HasSuffix(n.NodeType, "Scan") {
				return // not a read of river_job (the update itself, say)
			}
			scans++
			require.NotEqual(t, "Seq Scan", n.NodeType, "a sequential scan of river_job")
			require.NotEmpty(t, n.IndexName, "%s of river_job without an index", n.NodeType)
			require.LessOrEqual(t, n.ActualRows*n.ActualLoops, 10.0, "rows read by %s on %s", n.NodeType, n.IndexName)
			require.Zero(t, n.RowsRemoved, "rows read and filtered out by %s on %s", n.NodeType, n.IndexName)
		})
		require.NotZero(t, scans)
		// Buffers touched by the whole statement: a few index pages, not
		// the hundreds the far-future jobs and the backlog occupy.
		t.Logf("Wake read %d pages", plan.SharedHit+plan.SharedRead)
		require.Less(t, plan.SharedHit+plan.SharedRead, int64(60), "pages read")
	}
	plan, due, promoted := explain()
	check(plan)
	require.Nil(t, due, "nothing due within the window")
	require.Zero(t, promoted)

	_, err = b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.river_job (args, kind, max_attempts, queue, state, scheduled_at)
		VALUES ('{"run_id":"d1"}', 'durable_run', 1000, $1, 'scheduled', now() - interval '1 second'),
		       ('{"run_id":"d2"}', 'durable_run', 1000, $1, 'scheduled', now() + interval '500 milliseconds')`, durable.DefaultQueue)
	require.NoError(t, err)
	plan, due, promoted = explain()
	check(plan)
	require.Equal(t, 1, promoted, "the due job is made available")
	require.NotNil(t, due, "the job due within the window is reported")
	require.WithinDuration(t, time.Now().Add(500*time.Millisecond), *due, 2*time.Second)
}

// countingHandler counts the log records whose message contains match.
type countingHandler struct {
	match string
	n     *atomic.Int32
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// A cron tick that fails is retried with backoff, not in a tight loop;
// the loop still ends at once on Stop, and the tick fires once the
// database recovers.
func TestCronTickFailureBacksOff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.pool.Exec(b.ctx, `ALTER TABLE `+b.schema+`.durable_cron_tick RENAME TO durable_cron_tick_away`)
	require.NoError(t, err)
	newClient := func(id string) (*durable.Client, *atomic.Int32) {
		var n atomic.Int32
		fn := durable.NewFunction(durable.FunctionOpts{ID: id, Triggers: []durable.Trigger{{Cron: "@every 1s"}}},
			func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil })
		c := b.client(durable.Config{Functions: []durable.Function{fn},
			Logger: slog.New(countingHandler{match: "cron tick failed", n: &n})})
		return c, &n
	}
	_, fails := newClient("ticker")
	stopper, stopperFails := newClient("ticker-stopped")

	require.Eventually(t, func() bool { return fails.Load() >= 1 }, 10*time.Second, 10*time.Millisecond)
	// 1s, 2s, 4s... between attempts: at most a handful in 3 seconds
	// (retrying at once made it hundreds).
	require.Never(t, func() bool { return fails.Load() > 4 || stopperFails.Load() > 4 }, 3*time.Second, 20*time.Millisecond,
		"cron tick retried without backoff")

	// Stopping does not wait out the backoff: 4s after the third failure.
	require.Eventually(t, func() bool { return stopperFails.Load() >= 3 }, 10*time.Second, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, stopper.Stop(ctx))
	require.Less(t, time.Since(start), 2*time.Second, "Stop waited for the cron backoff")

	// Once the table is back, the next retry fires the tick.
	_, err = b.pool.Exec(b.ctx, `ALTER TABLE `+b.schema+`.durable_cron_tick_away RENAME TO durable_cron_tick`)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var n int
		require.NoError(ct, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+b.schema+`.durable_run WHERE function_id = 'ticker'`).Scan(&n))
		require.Positive(ct, n, "runs of the cron trigger")
	}, 20*time.Second, 50*time.Millisecond)
}

func TestCronBackoffDoublesToAMinute(t *testing.T) {
	t.Parallel()
	var got []time.Duration
	for n := 1; n <= 9; n++ {
		got = append(got, durable.CronBackoffForTest(n))
	}
	s := time.Second
	require.Equal(t, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, time.Minute, time.Minute, time.Minute}, got)
	require.Equal(t, time.Minute, durable.CronBackoffForTest(1000))
}

// CancelMany reads its candidates in batches, keyed on (created_at, id):
// runs created in one transaction share created_at, and runs its filter
// rejects stay behind without being read again.
func TestCancelManyPagesThroughCandidates(t *testing.T) {
	b := setup(t)
	defer durable.SetCancelBatchForTest(3)()
	var mu sync.Mutex
	var batches []int
	durable.SetTestHookCancelBatch(func(n int) {
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, n)
	})
	defer durable.SetTestHookCancelBatch(nil)

	fn := durable.NewFunction(durable.FunctionOpts{ID: "many", Triggers: []durable.Trigger{{Event: "many/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil })
	other := durable.NewFunction(durable.FunctionOpts{ID: "other-fn", Triggers: []durable.Trigger{{Event: "many/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil })
	// No River client works the queue: the runs stay queued.
	c := b.client(durable.Config{Functions: []durable.Function{fn, other}, ExternalRiver: true})
	var evs []durable.Event
	for i := 0; i < 10; i++ {
		evs = append(evs, durable.Event{Name: "many/go", Data: M{"i": i}})
	}
	_, err := c.Send(b.ctx, evs...) // ten runs with one created_at
	require.NoError(t, err)
	for i := 10; i < 14; i++ {
		_, err := c.Invoke(b.ctx, "many", M{"i": i})
		require.NoError(t, err)
	}
	count := func(fnID, status string) int {
		var n int
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+b.schema+`.durable_run WHERE function_id = $1 AND status = $2`, fnID, status).Scan(&n))
		return n
	}
	require.Equal(t, 14, count("many", "queued"))

	n, err := c.CancelMany(b.ctx, durable.CancelFilter{FunctionID: "many", If: "int(event.data.i) % 2 == 0"})
	require.NoError(t, err)
	require.Equal(t, 7, n)
	require.Equal(t, 7, count("many", "cancelled"))
	require.Equal(t, 7, count("many", "queued"), "the filter's rejects are left alone")
	require.Equal(t, 10, count("other-fn", "queued"), "other functions' runs are left alone")
	mu.Lock()
	require.Equal(t, []int{3, 3, 3, 3, 2}, batches, "batches of at most 3, each candidate read once")
	batches = nil
	mu.Unlock()

	n, err = c.CancelMany(b.ctx, durable.CancelFilter{FunctionID: "many"})
	require.NoError(t, err)
	require.Equal(t, 7, n)
	require.Equal(t, 0, count("many", "queued"))
	mu.Lock()
	require.Equal(t, []int{3, 3, 1}, batches)
	mu.Unlock()
}

// The timeouts sweep cancels every expired run in one pass, in batches
// (of 100: it used to cancel one batch a second).
func TestExpireRunsDrainsEveryBatchInOneSweep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const runs = 250
	late := durable.NewFunction(durable.FunctionOpts{ID: "late-many", Timeouts: durable.Timeouts{Start: time.Second},
		Triggers: []durable.Trigger{{Event: "late/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	// Register the function, then stop: no background sweep from here on,
	// so the one below is the only one.
	reg := b.client(durable.Config{Functions: []durable.Function{late}, ExternalRiver: true})
	require.NoError(t, reg.Stop(b.ctx))
	c, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{late}, ExternalRiver: true})
	require.NoError(t, err)
	var evs []durable.Event
	for i := 0; i < runs; i++ {
		evs = append(evs, durable.Event{Name: "late/go", Data: M{"i": i}})
	}
	_, err = c.Send(b.ctx, evs...)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var n int
		require.NoError(ct, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+b.schema+`.durable_run WHERE start_deadline < now()`).Scan(&n))
		require.Equal(ct, runs, n, "runs past their start deadline")
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, durable.ExpireRunsForTest(b.ctx, c))
	var cancelled int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+b.schema+`.durable_run WHERE status = 'cancelled' AND error LIKE '%Timeouts.Start%'`).Scan(&cancelled))
	require.Equal(t, runs, cancelled, "one sweep cancels them all")
}

// RunsForEvent reads indexes only, whatever the number of runs: by the
// event's first-event index and the folded events' table, never a scan of
// durable_run (an OR of the two was planned as one).
func TestRunsForEventReadsIndexes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.durable_run (id, function_id, status, event_id, event_ids, events)
		SELECT 'r' || g, 'f', 'completed', 'e' || g, ARRAY['e' || g], '[]' FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.durable_run_event (event_id, run_id)
		SELECT 'f' || g, 'r' || g FROM generate_series(1, 2000) g`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `ANALYZE `+b.schema+`.durable_run; ANALYZE `+b.schema+`.durable_run_event`)
	require.NoError(t, err)
	q, err := durable.QueryForTest(b.schema, "RunsForEvent")
	require.NoError(t, err)
	for _, ev := range []string{"e7", "f7"} {
		var plan []byte
		require.NoError(t, b.pool.QueryRow(b.ctx, "EXPLAIN (FORMAT JSON) "+q, ev).Scan(&plan))
		require.NotRegexp(t, `"Node Type": "Seq Scan"[^}]*"Relation Name": "durable_run"[,\s]`, string(plan))
		runs, err := b.client(durable.Config{}).RunsForEvent(b.ctx, ev)
		require.NoError(t, err)
		require.Len(t, runs, 1, "event %s", ev)
		require.Equal(t, "r7", runs[0].ID)
	}
}
