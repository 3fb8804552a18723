package durable_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// RateLimit: over the limit an event starts no run; its run is recorded as
// skipped, naming the option; other keys are not affected.
func TestRateLimitRecordsSkippedRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "limited", Triggers: []durable.Trigger{{Event: "hit"}},
		RateLimit: &durable.RateLimit{Limit: 2, Period: time.Hour, Key: "event.data.user"}},
		func(ctx context.Context, in durable.Input[M]) (string, error) { return "ran", nil })
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	var ids []string
	for _, u := range []string{"a", "a", "a", "b"} {
		id, err := c.Send(b.ctx, durable.Event{Name: "hit", Data: M{"user": u}})
		require.NoError(t, err)
		ids = append(ids, id[0])
	}
	statuses := []durable.RunStatus{}
	for _, id := range ids {
		run := b.runsFor(c, id, 1)[0]
		statuses = append(statuses, b.waitRun(c, run.ID, 10*time.Second).Status)
		if run.Status == durable.RunSkipped {
			require.Contains(t, run.Error, "RateLimit")
			require.Contains(t, run.Error, `key "a"`)
			require.NotNil(t, run.EndedAt)
			require.Nil(t, run.StartedAt)
		}
	}
	require.Equal(t, []durable.RunStatus{durable.RunCompleted, durable.RunCompleted, durable.RunSkipped, durable.RunCompleted}, statuses)
	require.True(t, durable.RunSkipped.Done())
	page, err := c.ListRuns(b.ctx, durable.RunFilter{Status: []durable.RunStatus{durable.RunSkipped}})
	require.NoError(t, err)
	require.Len(t, page.Runs, 1)
}

// Singleton skip: while a run is active for the key, a newcomer is
// recorded as skipped; once it ended, a newcomer runs.
func TestSingletonSkipAndCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mk := func(id string, mode durable.SingletonMode) durable.Function {
		return durable.NewFunction(durable.FunctionOpts{ID: id, Triggers: []durable.Trigger{{Event: id}},
			Singleton: &durable.Singleton{Key: "event.data.k", Mode: mode}},
			func(ctx context.Context, in durable.Input[M]) (string, error) {
				if err := durable.Sleep(ctx, "hold", time.Hour); err != nil {
					return "", err
				}
				return "done", nil
			})
	}
	c := b.client(durable.Config{Functions: []durable.Function{mk("skip", durable.SingletonSkip), mk("cancel", durable.SingletonCancel)}})
	send := func(name, k string) *durable.Run {
		ids, err := c.Send(b.ctx, durable.Event{Name: name, Data: M{"k": k}})
		require.NoError(t, err)
		return b.runsFor(c, ids[0], 1)[0]
	}
	first := send("skip", "x")
	second := send("skip", "x")
	other := send("skip", "y")
	require.Equal(t, durable.RunSkipped, second.Status)
	require.Contains(t, second.Error, first.ID)
	require.Contains(t, second.Error, "Singleton")
	require.NotEqual(t, durable.RunSkipped, other.Status, "another key is not affected")
	require.NoError(t, c.Cancel(b.ctx, first.ID))
	third := send("skip", "x")
	require.NotEqual(t, durable.RunSkipped, third.Status, "the key is free once its run ended")

	old := send("cancel", "x")
	newer := send("cancel", "x")
	require.Equal(t, durable.RunCancelled, b.waitRun(c, old.ID, 10*time.Second).Status)
	got, err := c.GetRun(b.ctx, old.ID)
	require.NoError(t, err)
	require.Contains(t, got.Error, "Singleton")
	require.Contains(t, []durable.RunStatus{durable.RunQueued, durable.RunRunning}, newer.Status)
}

// Debounce: a burst of events starts one run, after the quiet period,
// with the last event; every folded event finds the run; an event older
// (by timestamp) than the one held is folded but not used.
func TestDebounceRunsOnceWithTheLastEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var got []string
	fn := durable.NewFunction(durable.FunctionOpts{ID: "deb", Triggers: []durable.Trigger{{Event: "typed"}},
		Debounce: &durable.Debounce{Period: 700 * time.Millisecond, Key: "event.data.doc"}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			mu.Lock()
			got = append(got, in.Event.Data["text"].(string))
			mu.Unlock()
			return in.Event.Data["text"].(string), nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	now := time.Now()
	var ids []string
	for i, text := range []string{"h", "he", "hel"} {
		id, err := c.Send(b.ctx, durable.Event{Name: "typed", Data: M{"doc": 1, "text": text}, Timestamp: now.Add(time.Duration(i) * time.Second)})
		require.NoError(t, err)
		ids = append(ids, id[0])
	}
	// Late and stale: folded in, not used.
	id, err := c.Send(b.ctx, durable.Event{Name: "typed", Data: M{"doc": 1, "text": "stale"}, Timestamp: now.Add(-time.Minute)})
	require.NoError(t, err)
	ids = append(ids, id[0])
	otherDoc, err := c.Send(b.ctx, durable.Event{Name: "typed", Data: M{"doc": 2, "text": "x"}})
	require.NoError(t, err)
	runID := b.runsFor(c, ids[0], 1)[0].ID
	for _, id := range ids {
		runs := b.runsFor(c, id, 1)
		require.Equal(t, runID, runs[0].ID, "every folded event finds the run")
	}
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.JSONEq(t, `"hel"`, string(run.Output))
	require.Len(t, run.EventIDs, 4)
	require.NotEqual(t, runID, b.runsFor(c, otherDoc[0], 1)[0].ID, "another key has its own run")
	require.GreaterOrEqual(t, run.StartedAt.Sub(run.CreatedAt), 600*time.Millisecond, "the run waited for the quiet period")
	// After the run started, a new event starts a new run.
	next, err := c.Send(b.ctx, durable.Event{Name: "typed", Data: M{"doc": 1, "text": "again"}})
	require.NoError(t, err)
	nextRun := b.waitRun(c, b.runsFor(c, next[0], 1)[0].ID, 15*time.Second)
	require.NotEqual(t, runID, nextRun.ID)
	require.JSONEq(t, `"again"`, string(nextRun.Output))
}

// Batch: MaxSize events start a run at once, with every event in arrival
// order; fewer start one at the Timeout; If false runs alone at once.
func TestBatchCollectsEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "batch", Triggers: []durable.Trigger{{Event: "item"}},
		Batch: &durable.Batch{MaxSize: 3, Timeout: time.Second, Key: "event.data.tenant", If: "event.data.bulk == true"}},
		func(ctx context.Context, in durable.Input[M]) ([]float64, error) {
			var ns []float64
			for _, e := range in.Events {
				ns = append(ns, e.Data["n"].(float64))
			}
			require.Equal(t, in.Events[0].ID, in.Event.ID)
			return ns, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	var ids []string
	for i := 1; i <= 4; i++ {
		id, err := c.Send(b.ctx, durable.Event{Name: "item", Data: M{"tenant": "t1", "n": i, "bulk": true}})
		require.NoError(t, err)
		ids = append(ids, id[0])
	}
	full := b.runsFor(c, ids[0], 1)[0]
	for _, id := range ids[:3] {
		require.Equal(t, full.ID, b.runsFor(c, id, 1)[0].ID)
	}
	run := b.waitRun(c, full.ID, 10*time.Second)
	require.JSONEq(t, `[1,2,3]`, string(run.Output))
	rest := b.runsFor(c, ids[3], 1)[0]
	require.NotEqual(t, full.ID, rest.ID, "a full batch starts the next one")
	restRun := b.waitRun(c, rest.ID, 10*time.Second)
	require.JSONEq(t, `[4]`, string(restRun.Output))
	require.GreaterOrEqual(t, restRun.StartedAt.Sub(restRun.CreatedAt), 900*time.Millisecond, "a partial batch waits for its Timeout")

	alone, err := c.Send(b.ctx, durable.Event{Name: "item", Data: M{"tenant": "t1", "n": 9, "bulk": false}})
	require.NoError(t, err)
	aloneRun := b.waitRun(c, b.runsFor(c, alone[0], 1)[0].ID, 10*time.Second)
	require.JSONEq(t, `[9]`, string(aloneRun.Output))
	require.Less(t, aloneRun.StartedAt.Sub(aloneRun.CreatedAt), 900*time.Millisecond, "If false: runs alone, at once")
}

// Throttle spreads run starts: Limit 2 per second, no burst: five runs
// start in order at least ~500 ms apart; none is dropped.
func TestThrottleSpreadsStartsInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var order []float64
	var at []time.Time
	fn := durable.NewFunction(durable.FunctionOpts{ID: "thr", Triggers: []durable.Trigger{{Event: "t"}},
		Throttle: &durable.Throttle{Limit: 2, Period: time.Second}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			mu.Lock()
			order = append(order, in.Event.Data["i"].(float64))
			at = append(at, time.Now())
			mu.Unlock()
			return 0, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	var ids []string
	for i := 0; i < 5; i++ {
		id, err := c.Send(b.ctx, durable.Event{Name: "t", Data: M{"i": i}})
		require.NoError(t, err)
		ids = append(ids, id[0])
	}
	for _, id := range ids {
		require.Equal(t, durable.RunCompleted, b.waitRun(c, b.runsFor(c, id, 1)[0].ID, 20*time.Second).Status)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []float64{0, 1, 2, 3, 4}, order, "FIFO")
	require.GreaterOrEqual(t, at[4].Sub(at[0]), 1900*time.Millisecond, "five starts at two per second take two seconds")
}

// Priority orders runs waiting behind a concurrency limit: with Limit 1
// and a blocker holding the slot, a run with +60 s starts before the
// runs queued ahead of it.
func TestPriorityOrdersWaitingRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var order []string
	unblock := make(chan struct{})
	fn := durable.NewFunction(durable.FunctionOpts{ID: "prio", Triggers: []durable.Trigger{{Event: "p"}},
		Concurrency: []durable.Concurrency{{Limit: 1}}, Priority: &durable.Priority{Run: "event.data.boost"}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			name := in.Event.Data["name"].(string)
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			if name == "blocker" {
				<-unblock
			}
			return 0, nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	blk, err := c.Send(b.ctx, durable.Event{Name: "p", Data: M{"name": "blocker", "boost": 0}})
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		require.Equal(ct, []string{"blocker"}, order)
	}, 10*time.Second, 5*time.Millisecond)
	var ids []string
	for _, e := range []M{{"name": "a", "boost": 0}, {"name": "b", "boost": 0}, {"name": "vip", "boost": 60}, {"name": "odd", "boost": "x"}} {
		id, err := c.Send(b.ctx, durable.Event{Name: "p", Data: e})
		require.NoError(t, err)
		ids = append(ids, id[0])
	}
	// Every newcomer waits at the gate before the slot frees.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var n int
		require.NoError(ct, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_gate_wait").Scan(&n))
		require.Equal(ct, 4, n)
	}, 10*time.Second, 10*time.Millisecond)
	close(unblock)
	for _, id := range append(ids, blk[0]) {
		require.Equal(t, durable.RunCompleted, b.waitRun(c, b.runsFor(c, id, 1)[0].ID, 20*time.Second).Status)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"blocker", "vip", "a", "b", "odd"}, order)
}

// Debounce.Timeout caps the delay from the first event: a steady stream
// of events (never a quiet Period) still starts a run once Timeout has
// passed since the first; the events after it start the next run.
func TestDebounceTimeoutCapsTheDelay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "deb-cap", Triggers: []durable.Trigger{{Event: "tick"}},
		Debounce: &durable.Debounce{Period: time.Second, Timeout: 1500 * time.Millisecond}},
		func(ctx context.Context, in durable.Input[M]) (float64, error) {
			return in.Event.Data["i"].(float64), nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	first := time.Now()
	var ids []string
	for i := 0; time.Since(first) < 3500*time.Millisecond; i++ {
		id, err := c.Send(b.ctx, durable.Event{Name: "tick", Data: M{"i": i}})
		require.NoError(t, err)
		ids = append(ids, id[0])
		time.Sleep(250 * time.Millisecond) // a steady stream, quieter than the Period never
	}
	run := b.waitRun(c, b.runsFor(c, ids[0], 1)[0].ID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.Less(t, run.StartedAt.Sub(run.CreatedAt), 3*time.Second, "started by the Timeout, not after the stream ended")
	require.GreaterOrEqual(t, run.StartedAt.Sub(run.CreatedAt), 1400*time.Millisecond, "not before the Timeout")
	last := b.runsFor(c, ids[len(ids)-1], 1)[0]
	require.NotEqual(t, run.ID, last.ID, "events after the first run started start another")
	require.Less(t, len(run.EventIDs), len(ids))
}

// A full batch's run is available the moment the event that filled it
// commits (not left scheduled for a poll), and concurrent senders of a
// key's first events fold them into one batch instead of starting two.
func TestBatchFullStartsAtOnceAndConcurrentSendersShareIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "pairs", Triggers: []durable.Trigger{{Event: "pair"}},
		Batch: &durable.Batch{MaxSize: 2, Timeout: time.Hour, Key: "event.data.k"}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return len(in.Events), nil })
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	for round := 0; round < 8; round++ {
		key := fmt.Sprint("k", round)
		var wg sync.WaitGroup
		ids := make([]string, 2)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := c.Send(b.ctx, durable.Event{Name: "pair", Data: M{"k": key}})
				if assert.NoError(t, err) {
					ids[i] = id[0]
				}
			}()
		}
		wg.Wait()
		require.False(t, t.Failed())
		runs := b.runsFor(c, ids[0], 1)
		require.Equal(t, runs[0].ID, b.runsFor(c, ids[1], 1)[0].ID, "round %d: one batch for both events", round)
		var state string
		require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT j.state FROM "+b.schema+".river_job j JOIN "+b.schema+
			".durable_run r ON r.job_id = j.id WHERE r.id = $1", runs[0].ID).Scan(&state))
		require.NotEqual(t, "scheduled", state, "round %d: the full batch's job is not left scheduled", round)
		require.JSONEq(t, "2", string(b.waitRun(c, runs[0].ID, 10*time.Second).Output))
	}
}
