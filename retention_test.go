package durable_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/maintenance"
	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/internal/store"
)

// Most tests here sweep with a pruner of their own, built like a client's:
// its first sweep reads every category from the start, and Sweep returns
// exact counts. Rows are made old by backdating their timestamps.

// keepAll keeps every category; tests set the one they look at.
var keepAll = maintenance.Retention{Completed: -1, Failed: -1, Cancelled: -1, Events: -1, Interval: time.Minute}

// pruner builds a fresh pruner on the bundle's schema.
func (b *bundle) pruner(ret maintenance.Retention) *maintenance.Pruner {
	b.t.Helper()
	schema, err := pgident.Schema(b.schema)
	require.NoError(b.t, err)
	q, err := store.Load(schema)
	require.NoError(b.t, err)
	return maintenance.NewPruner(b.pool, q, slog.New(slog.DiscardHandler), ret)
}

// sweep runs one sweep of a fresh pruner and returns its counts.
func (b *bundle) sweep(ret maintenance.Retention) maintenance.PruneCounts {
	b.t.Helper()
	counts, locked, err := b.pruner(ret).Sweep(b.ctx)
	require.NoError(b.t, err)
	require.True(b.t, locked, "no other process sweeps this schema")
	return counts
}

// exec runs sql on the bundle's schema ("S." stands for it).
func (b *bundle) exec(sql string, args ...any) {
	b.t.Helper()
	_, err := b.pool.Exec(b.ctx, b.sql(sql), args...)
	require.NoError(b.t, err)
}

func (b *bundle) count(sql string, args ...any) int {
	b.t.Helper()
	var n int
	require.NoError(b.t, b.pool.QueryRow(b.ctx, b.sql(sql), args...).Scan(&n))
	return n
}

// sql puts the bundle's schema in place of "S." before a table name.
func (b *bundle) sql(s string) string {
	return strings.ReplaceAll(s, "S.durable_", b.schema+".durable_")
}

// endedAgo backdates the end (and start) of runs to age ago.
func (b *bundle) endedAgo(age time.Duration, ids ...string) {
	b.t.Helper()
	b.exec(`UPDATE S.durable_run SET ended_at = now() - make_interval(secs => $1),
		created_at = now() - make_interval(secs => $1 + 1), started_at = now() - make_interval(secs => $1 + 1)
		WHERE id = ANY($2)`, age.Seconds(), ids)
}

// stepsOf returns how many steps a run has stored.
func (b *bundle) stepsOf(runID string) int {
	return b.count(`SELECT count(*) FROM S.durable_step WHERE run_id = $1`, runID)
}

// stepStatus waits until the run shows step key with status.
func (b *bundle) stepStatus(c *durable.Client, runID, key, status string) {
	b.t.Helper()
	require.EventuallyWithT(b.t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, runID)
		require.NoError(ct, err)
		for _, s := range run.Steps {
			if s.ID == key {
				assert.Equal(ct, status, s.Status)
				return
			}
		}
		assert.Fail(ct, "no step "+key)
	}, 10*time.Second, 10*time.Millisecond)
}

func (b *bundle) requireGone(c *durable.Client, ids ...string) {
	b.t.Helper()
	for _, id := range ids {
		_, err := c.GetRun(b.ctx, id)
		require.ErrorIs(b.t, err, durable.ErrRunNotFound, "run %s", id)
		require.Zero(b.t, b.stepsOf(id), "steps of run %s", id)
	}
}

func (b *bundle) requireKept(c *durable.Client, ids ...string) {
	b.t.Helper()
	for _, id := range ids {
		_, err := c.GetRun(b.ctx, id)
		require.NoError(b.t, err, "run %s", id)
	}
}

// twoSteps completes after two steps.
var twoSteps = durable.NewFunction(durable.FunctionOpts{ID: "ok", Triggers: []durable.Trigger{{Event: "ok/go"}}},
	func(ctx context.Context, in durable.Input[M]) (int, error) {
		a, err := durable.Step(ctx, "a", func(context.Context) (int, error) { return 1, nil })
		if err != nil {
			return 0, err
		}
		c, err := durable.Step(ctx, "b", func(context.Context) (int, error) { return 2, nil })
		return a + c, err
	})

// napper sleeps for an hour after one step.
var napper = durable.NewFunction(durable.FunctionOpts{ID: "nap", Triggers: []durable.Trigger{{Event: "nap/go"}}},
	func(ctx context.Context, in durable.Input[M]) (int, error) {
		if _, err := durable.Step(ctx, "first", func(context.Context) (int, error) { return 1, nil }); err != nil {
			return 0, err
		}
		return 0, durable.Sleep(ctx, "zz", time.Hour)
	})

func TestRetentionPrunesEndedRunsByStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bad := durable.NewFunction(durable.FunctionOpts{ID: "bad", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "a", func(context.Context) (int, error) { return 0, errors.New("boom") })
		})
	c := b.client(durable.Config{Functions: []durable.Function{twoSteps, bad, napper},
		Retention: durable.Retention{Interval: -1}})
	okID, err := c.Invoke(b.ctx, "ok", nil)
	require.NoError(t, err)
	badID, err := c.Invoke(b.ctx, "bad", nil)
	require.NoError(t, err)
	napID, err := c.Invoke(b.ctx, "nap", nil)
	require.NoError(t, err)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, okID, 10*time.Second).Status)
	require.Equal(t, durable.RunFailed, b.waitRun(c, badID, 10*time.Second).Status)
	b.stepStatus(c, napID, "zz", "sleeping")
	require.NoError(t, c.Cancel(b.ctx, napID))
	require.Equal(t, durable.RunCancelled, b.waitRun(c, napID, 10*time.Second).Status)
	require.Equal(t, 2, b.stepsOf(okID))
	require.Equal(t, 2, b.stepsOf(napID))

	ret := keepAll
	ret.Completed, ret.Failed, ret.Cancelled = time.Hour, 2*time.Hour, 3*time.Hour
	// Each status goes once its own duration has passed since it ended.
	b.endedAgo(90*time.Minute, okID, badID, napID)
	require.Equal(t, maintenance.PruneCounts{Completed: 1, Steps: 2}, b.sweep(ret))
	b.requireGone(c, okID)
	b.requireKept(c, badID, napID)

	b.endedAgo(150*time.Minute, badID, napID)
	require.Equal(t, maintenance.PruneCounts{Failed: 1, Steps: 1}, b.sweep(ret))
	b.requireGone(c, badID)
	b.requireKept(c, napID)

	b.endedAgo(200*time.Minute, napID)
	require.Equal(t, maintenance.PruneCounts{Cancelled: 1, Steps: 2}, b.sweep(ret))
	b.requireGone(c, napID)
	require.Zero(t, b.count(`SELECT count(*) FROM S.durable_run`))
}

func TestRetentionNeverPrunesLiveRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	waiter := durable.NewFunction(durable.FunctionOpts{ID: "ret-waiter"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			ev, err := durable.WaitForEvent[M](ctx, "w", durable.WaitOpts{Event: "test/resume", Timeout: time.Hour})
			if err != nil {
				return "", err
			}
			return ev.ID, nil
		})
	retrier := durable.NewFunction(durable.FunctionOpts{ID: "retrier"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "flaky", func(context.Context) (int, error) {
				return 0, durable.RetryAfter(time.Hour, errors.New("later"))
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{twoSteps, napper, waiter, retrier},
		Retention: durable.Retention{Interval: -1}})
	// A run nobody executes stays queued: its client's queue has no worker.
	orphan := durable.NewFunction(durable.FunctionOpts{ID: "orphan"},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil })
	c2, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{orphan}, Queue: "nobody"})
	require.NoError(t, err)
	require.NoError(t, c2.Register(b.ctx))

	ids := map[string]string{}
	for _, fn := range []string{"ok", "nap", "ret-waiter", "retrier"} {
		id, err := c.Invoke(b.ctx, fn, nil)
		require.NoError(t, err)
		ids[fn] = id
	}
	ids["orphan"], err = c2.Invoke(b.ctx, "orphan", nil)
	require.NoError(t, err)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, ids["ok"], 10*time.Second).Status)
	b.stepStatus(c, ids["nap"], "zz", "sleeping")
	b.stepStatus(c, ids["ret-waiter"], "w", "waiting")
	b.stepStatus(c, ids["retrier"], "flaky", "retrying")
	run, err := c.GetRun(b.ctx, ids["orphan"])
	require.NoError(t, err)
	require.Equal(t, durable.RunQueued, run.Status)
	steps := map[string]int{}
	var all []string
	for fn, id := range ids {
		steps[fn] = b.stepsOf(id)
		all = append(all, id)
	}

	// However old they look, even with an end time set (which live runs
	// never have), only the completed run goes.
	b.endedAgo(1000*24*time.Hour, all...)
	ret := maintenance.Retention{Completed: time.Minute, Failed: time.Minute, Cancelled: time.Minute, Events: time.Minute, Interval: time.Minute}
	counts := b.sweep(ret)
	require.Equal(t, int64(1), counts.Runs(), "%+v", counts)
	require.Equal(t, int64(2), counts.Steps)
	b.requireGone(c, ids["ok"])
	for fn, id := range ids {
		if fn == "ok" {
			continue
		}
		run, err := c.GetRun(b.ctx, id)
		require.NoError(t, err, fn)
		require.False(t, run.Status.Done(), fn)
		require.Equal(t, steps[fn], b.stepsOf(id), fn)
	}
	// The waiting run's wait is intact: its event still resumes it.
	_, err = c.Send(b.ctx, durable.Event{Name: "test/resume"})
	require.NoError(t, err)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, ids["ret-waiter"], 10*time.Second).Status)
}

func TestRetentionNegativeKeepsForever(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bad := durable.NewFunction(durable.FunctionOpts{ID: "bad", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return 0, durable.NonRetriable(errors.New("boom"))
		})
	c := b.client(durable.Config{Functions: []durable.Function{twoSteps, bad}, Retention: durable.Retention{Interval: -1}})
	okID, err := c.Invoke(b.ctx, "ok", nil)
	require.NoError(t, err)
	badID, err := c.Invoke(b.ctx, "bad", nil)
	require.NoError(t, err)
	b.waitRun(c, okID, 10*time.Second)
	b.waitRun(c, badID, 10*time.Second)
	_, err = c.Send(b.ctx, durable.Event{ID: "old", Name: "nothing/listens"})
	require.NoError(t, err)
	b.endedAgo(1000*24*time.Hour, okID, badID)
	b.exec(`UPDATE S.durable_event SET received_at = now() - interval '1000 days' WHERE id = 'old'`)
	b.exec(`INSERT INTO S.durable_cron_tick (function_id, tick, run_id) VALUES ('ok', now() - interval '1000 days', $1)`, okID)

	// Completed and Events negative: only the failed run goes; cron ticks
	// are kept as long as completed runs, so forever too.
	ret := keepAll
	ret.Failed = time.Minute
	require.Equal(t, maintenance.PruneCounts{Failed: 1}, b.sweep(ret))
	b.requireGone(c, badID)
	b.requireKept(c, okID)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_event WHERE id = 'old'`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_cron_tick`))

	// The same rows with durations set go.
	ret.Completed, ret.Events = time.Minute, time.Minute
	counts := b.sweep(ret)
	require.Equal(t, int64(1), counts.Completed)
	require.Equal(t, int64(1), counts.CronTicks)
	require.Equal(t, int64(1), counts.Events)
	b.requireGone(c, okID)
}

func TestRetentionEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client(durable.Config{Functions: []durable.Function{twoSteps, napper}, Retention: durable.Retention{Interval: -1}})
	_, err := c.Send(b.ctx,
		durable.Event{ID: "e-live", Name: "nap/go"},
		durable.Event{ID: "e-done", Name: "ok/go"},
		durable.Event{ID: "e-none", Name: "nothing/listens"},
		durable.Event{ID: "e-young", Name: "nothing/listens"})
	require.NoError(t, err)
	live := b.runsFor(c, "e-live", 1)[0]
	done := b.runsFor(c, "e-done", 1)[0]
	b.stepStatus(c, live.ID, "zz", "sleeping")
	b.waitRun(c, done.ID, 10*time.Second)
	// A system event not yet routed (the client is stopped, so nothing
	// routes it behind the test's back).
	sctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, c.Stop(sctx))
	b.exec(`INSERT INTO S.durable_event (id, name, data, ts, routed) VALUES ('e-unrouted', 'durable/function.finished', '{}', now(), false)`)
	b.exec(`UPDATE S.durable_event SET received_at = now() - interval '10 days' WHERE id <> 'e-young'`)
	// Younger than MinEventAge, though older than Events.
	b.exec(`UPDATE S.durable_event SET received_at = now() - interval '30 minutes' WHERE id = 'e-young'`)

	ret := keepAll
	ret.Events = time.Minute
	require.Equal(t, maintenance.PruneCounts{Events: 2}, b.sweep(ret))
	var left []string
	rows, err := b.pool.Query(b.ctx, b.sql(`SELECT id FROM S.durable_event ORDER BY id`))
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		left = append(left, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"e-live", "e-unrouted", "e-young"}, left,
		"the live run's trigger, the unrouted system event and the young event are kept")

	// The dedupe window: an event ID still stored within 24 hours is a
	// duplicate; a pruned one is new when sent again.
	sender, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema})
	require.NoError(t, err)
	defer func() { _ = sender.Stop(b.ctx) }()
	_, err = sender.Send(b.ctx, durable.Event{ID: "e-done", Name: "ok/go"}, durable.Event{ID: "e-young", Name: "nothing/listens"})
	require.NoError(t, err)
	runs, err := sender.RunsForEvent(b.ctx, "e-done")
	require.NoError(t, err)
	require.Len(t, runs, 2, "the pruned event ID started a second run")
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_event WHERE id = 'e-young' AND received_at < now() - interval '29 minutes'`),
		"the kept event was a duplicate")
}

func TestRetentionIdempotencyKeysAndCronTicks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	once := durable.NewFunction(durable.FunctionOpts{ID: "once", Idempotency: "event.data.k", Triggers: []durable.Trigger{{Event: "once/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	c := b.client(durable.Config{Functions: []durable.Function{once}, Retention: durable.Retention{Interval: -1}})
	send := func(k string) int {
		ids, err := c.Send(b.ctx, durable.Event{Name: "once/go", Data: M{"k": k}})
		require.NoError(t, err)
		runs, err := c.RunsForEvent(b.ctx, ids[0])
		require.NoError(t, err)
		return len(runs)
	}
	require.Equal(t, 1, send("a"))
	require.Equal(t, 0, send("a"), "the key is held")
	require.Equal(t, 1, send("b"))
	b.exec(`UPDATE S.durable_idempotency SET expires_at = now() - interval '1 second' WHERE key = 'a'`)
	b.exec(`INSERT INTO S.durable_cron_tick (function_id, tick, run_id) VALUES
		('once', now() - interval '8 days', 'r1'), ('once', now() - interval '6 days', 'r2')`)

	// Expired keys go, whatever the durations; cron ticks after
	// max(7 days, Completed).
	ret := keepAll
	ret.Completed = time.Hour
	require.Equal(t, maintenance.PruneCounts{IdempotencyKeys: 1, CronTicks: 1}, b.sweep(ret))
	require.Equal(t, []int{0, 1}, []int{
		b.count(`SELECT count(*) FROM S.durable_idempotency WHERE key = 'a'`),
		b.count(`SELECT count(*) FROM S.durable_idempotency WHERE key = 'b'`)})
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_cron_tick WHERE run_id = 'r2'`))
	require.Equal(t, 1, send("a"), "the pruned key is claimed again")
	require.Equal(t, 0, send("b"), "the unexpired key is still held")

	ret.Completed = 10 * 24 * time.Hour
	b.exec(`INSERT INTO S.durable_cron_tick (function_id, tick, run_id) VALUES ('once', now() - interval '8 days', 'r1')`)
	require.Equal(t, maintenance.PruneCounts{}, b.sweep(ret), "ticks live as long as completed runs")
}

// captured records the log records of one client.
type captured struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *captured) Enabled(context.Context, slog.Level) bool { return true }
func (h *captured) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *captured) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captured) WithGroup(string) slog.Handler      { return h }

// pruned returns the completed_runs of each "retention pruned" line.
func (h *captured) pruned() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []int64
	for _, r := range h.recs {
		if r.Message != "durable: retention pruned" {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "completed_runs" {
				out = append(out, a.Value.Int64())
			}
			return true
		})
	}
	return out
}

func TestRetentionLoopSweepsFromOneProcessAtATime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ret := durable.Retention{Completed: time.Hour, Failed: -1, Cancelled: -1, Events: -1, Interval: 20 * time.Millisecond}
	logs := map[string]*captured{"A": {}, "B": {}}
	clients := map[string]*durable.Client{}
	for name, h := range logs {
		clients[name] = b.client(durable.Config{Functions: []durable.Function{twoSteps}, Retention: ret, Logger: slog.New(h)})
	}
	var ids []string
	for range 3 {
		id, err := clients["A"].Invoke(b.ctx, "ok", nil)
		require.NoError(t, err)
		b.waitRun(clients["A"], id, 10*time.Second)
		ids = append(ids, id)
	}

	// The first sweep to take the lock from now on holds it until gate
	// closes; meanwhile the other client's sweeps must all skip.
	var (
		armed    atomic.Bool
		holder   atomic.Pointer[string] // name of the client holding the sweep
		held     = make(chan struct{})
		gate     = make(chan struct{})
		released atomic.Bool
		skipped  sync.Map // name -> *atomic.Int64, sweeps skipped while held
		lockedBy sync.Map // name -> *atomic.Int64, sweeps that took the lock while held
		calls    atomic.Int64
	)
	counter := func(m *sync.Map, name string) *atomic.Int64 {
		v, _ := m.LoadOrStore(name, new(atomic.Int64))
		return v.(*atomic.Int64)
	}
	var once sync.Once
	defer once.Do(func() { close(gate) })
	for name, c := range clients {
		p := durable.PrunerForTest(c)
		require.NotNil(t, p)
		p.SetHook(func(stage, _ string, _ int) {
			calls.Add(1)
			if !armed.Load() {
				return
			}
			switch stage {
			case "locked":
				if holder.CompareAndSwap(nil, &name) {
					close(held)
					<-gate
					return
				}
				if !released.Load() {
					counter(&lockedBy, name).Add(1)
				}
			case "skipped":
				if !released.Load() && holder.Load() != nil {
					counter(&skipped, name).Add(1)
				}
			}
		})
	}
	armed.Store(true)
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("no sweep took the lock")
	}
	h := *holder.Load()
	other := map[string]string{"A": "B", "B": "A"}[h]
	// Old enough for Completed, and within the window a frontier sweep reads.
	b.endedAgo(90*time.Minute, ids...)
	require.Eventually(t, func() bool { return counter(&skipped, other).Load() >= 5 }, 10*time.Second, 5*time.Millisecond,
		"the other client's sweeps skip while one holds the lock")
	released.Store(true)
	require.Zero(t, counter(&lockedBy, other).Load(), "two sweeps held the lock at once")
	once.Do(func() { close(gate) })

	// The holder prunes the three runs: one log line; nobody prunes them
	// twice.
	require.Eventually(t, func() bool { return len(logs[h].pruned()) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, []int64{3}, logs[h].pruned())
	b.requireGone(clients[h], ids...)
	never(t, 300*time.Millisecond, 20*time.Millisecond, "another pruning line", func() (bool, error) {
		return len(logs["A"].pruned())+len(logs["B"].pruned()) > 1, nil
	})

	// Stop stops the loops.
	for _, c := range clients {
		sctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
		require.NoError(t, c.Stop(sctx))
		cancel()
	}
	n := calls.Load()
	never(t, 300*time.Millisecond, 20*time.Millisecond, "a sweep after Stop", func() (bool, error) {
		return calls.Load() != n, nil
	})
}

func TestRetentionBatchShrinksAfterTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client(durable.Config{Functions: []durable.Function{twoSteps}, Retention: durable.Retention{Interval: -1}})
	require.Nil(t, durable.PrunerForTest(c), "a negative Interval never sweeps")
	var ids []string
	for range 3 {
		id, err := c.Invoke(b.ctx, "ok", nil)
		require.NoError(t, err)
		b.waitRun(c, id, 10*time.Second)
		ids = append(ids, id)
	}
	b.endedAgo(24*time.Hour, ids...)
	ret := keepAll
	ret.Completed = time.Hour
	p := b.pruner(ret)
	p.SetStatementTimeout(150 * time.Millisecond)
	var mu sync.Mutex
	var timeouts []int
	p.SetHook(func(stage, category string, n int) {
		if stage == "timeout" && category == "completed" {
			mu.Lock()
			timeouts = append(timeouts, n)
			mu.Unlock()
		}
	})

	// A step row held by another transaction makes each batch's delete
	// wait past the statement timeout.
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	_, err = tx.Exec(b.ctx, b.sql(`SELECT 1 FROM S.durable_step WHERE run_id = $1 FOR UPDATE`), ids[1])
	require.NoError(t, err)
	counts, locked, err := p.Sweep(b.ctx)
	require.True(t, locked)
	require.ErrorContains(t, err, "exceeded the statement timeout")
	require.Zero(t, counts.Runs())
	mu.Lock()
	require.Equal(t, []int{maintenance.RunBatch, maintenance.RunBatch / 2, maintenance.RunBatch / 4}, timeouts, "halved after each timeout")
	mu.Unlock()
	require.Equal(t, maintenance.RunBatch/8, p.BatchSizes()["completed"])
	require.Equal(t, maintenance.RowBatch, p.BatchSizes()["idempotency_keys"], "other categories go on, unaffected")
	b.requireKept(c, ids...)

	// Once the lock is gone the next sweep prunes them, and the batch
	// grows back gradually.
	require.NoError(t, tx.Rollback(b.ctx))
	p.SetStatementTimeout(maintenance.RetentionTimeout)
	counts, _, err = p.Sweep(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), counts.Completed)
	b.requireGone(c, ids...)
	require.Equal(t, maintenance.RunBatch/8+maintenance.RunBatch/32, p.BatchSizes()["completed"])
}

// Flow-control state no run needs is pruned: GCRA state an hour past,
// Singleton keys of ended runs, collecting keys of started runs; the
// state of live runs stays.
func TestRetentionPrunesFlowState(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`INSERT INTO S.durable_run (id, function_id, status, event_id, event_ids, events) VALUES
		('live', 'f', 'queued', 'e1', '{e1}', '[]'), ('ended', 'f', 'completed', 'e2', '{e2}', '[]'), ('started', 'f', 'running', 'e3', '{e3}', '[]')`)
	b.exec(`INSERT INTO S.durable_gcra (gate, tat) VALUES ('r:f:old', now() - interval '2 hours'), ('r:f:new', now())`)
	b.exec(`INSERT INTO S.durable_singleton (function_id, key, run_id) VALUES ('f', 'a', 'live'), ('f', 'b', 'ended'), ('f', 'c', 'gone')`)
	b.exec(`INSERT INTO S.durable_collect (function_id, key, run_id) VALUES ('f', 'a', 'live'), ('f', 'b', 'started')`)
	counts := b.sweep(keepAll)
	require.EqualValues(t, 2, counts.FlowState, "the most rows of one kind in the batch")
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_gcra WHERE gate = 'r:f:new'`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_gcra`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_singleton WHERE run_id = 'live'`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_singleton`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_collect WHERE run_id = 'live'`))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM S.durable_collect`))
}
