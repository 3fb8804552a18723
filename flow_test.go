package durable_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// gauge counts callers inside a section and remembers the most at once.
type gauge struct {
	mu       sync.Mutex
	now, max map[string]int
}

func newGauge() *gauge { return &gauge{now: map[string]int{}, max: map[string]int{}} }

func (g *gauge) enter(k string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now[k]++
	g.max[k] = max(g.max[k], g.now[k])
}

func (g *gauge) leave(k string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now[k]--
}

func (g *gauge) most(k string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max[k]
}

func TestFlowOptionsAreValidated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	noop := func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil }
	cases := []struct {
		name string
		opts durable.FunctionOpts
		want []string
	}{
		{"concurrency", durable.FunctionOpts{Concurrency: []durable.Concurrency{{Limit: 0}, {Limit: 1, Key: "event.data.("}, {Limit: 1}}},
			[]string{"3 Concurrency limits, at most 2", "Concurrency[0].Limit must be positive", "Concurrency[1].Key"}},
		{"scope", durable.FunctionOpts{Concurrency: []durable.Concurrency{{Limit: 1, Scope: "global"}, {Limit: 1, Scope: durable.ScopeShared}}},
			[]string{`Concurrency[0].Scope "global"`, "Concurrency[1]: ScopeShared needs a Key"}},
		{"throttle", durable.FunctionOpts{Throttle: &durable.Throttle{Limit: 0, Burst: -1}},
			[]string{"Throttle.Limit must be positive", "Throttle.Burst must not be negative", "Throttle.Period must be positive"}},
		{"rate limit", durable.FunctionOpts{RateLimit: &durable.RateLimit{Limit: 1, Period: time.Second, Key: "event.("}},
			[]string{"RateLimit.Key"}},
		{"debounce", durable.FunctionOpts{Debounce: &durable.Debounce{Period: time.Minute, Timeout: time.Second}},
			[]string{"Debounce.Timeout (1s) is shorter than Debounce.Period (1m0s)"}},
		{"batch", durable.FunctionOpts{Batch: &durable.Batch{MaxSize: 0, Timeout: time.Second, If: `"x"`},
			Idempotency: "event.id", Priority: &durable.Priority{Run: "1"}, CancelOn: []durable.CancelOn{{Event: "x"}}},
			[]string{"Batch.MaxSize must be at least 1", "Batch.If", "Batch cannot be combined with Idempotency",
				"Batch cannot be combined with Priority", "Batch cannot be combined with CancelOn"}},
		{"priority", durable.FunctionOpts{Priority: &durable.Priority{}}, []string{"Priority.Run is required"}},
		{"singleton", durable.FunctionOpts{Singleton: &durable.Singleton{Mode: "drop"}}, []string{`Singleton.Mode "drop"`}},
		{"checkpointing", durable.FunctionOpts{Checkpointing: &durable.Checkpointing{BufferedSteps: -1, MaxRuntime: time.Microsecond}},
			[]string{"Checkpointing.BufferedSteps must not be negative", "Checkpointing.MaxRuntime must be at least 10ms"}},
	}
	for _, tc := range cases {
		tc.opts.ID = "fn-" + tc.name
		_, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{durable.NewFunction(tc.opts, noop)}})
		require.Error(t, err, tc.name)
		for _, w := range tc.want {
			require.Contains(t, err.Error(), fmt.Sprintf("function %q", tc.opts.ID), tc.name)
			require.Contains(t, err.Error(), w, tc.name)
		}
	}
}

// Concurrency counts executing attempts across processes: two clients,
// Limit 2, twelve runs each holding its slot for a while: never more than
// two at once, every run completes, and the limit is used (two at once).
func TestConcurrencyLimitAcrossProcesses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	g := newGauge()
	release := make(chan struct{})
	var started atomic.Int32
	mk := func() durable.Function {
		return durable.NewFunction(durable.FunctionOpts{ID: "limited", Triggers: []durable.Trigger{{Event: "go"}},
			Concurrency: []durable.Concurrency{{Limit: 2}}},
			func(ctx context.Context, in durable.Input[M]) (int, error) {
				return durable.Step(ctx, "work", func(ctx context.Context) (int, error) {
					g.enter("")
					defer g.leave("")
					started.Add(1)
					select {
					case <-release:
					case <-time.After(30 * time.Millisecond):
					}
					return 1, nil
				})
			})
	}
	c1 := b.client(durable.Config{Functions: []durable.Function{mk()}})
	b.client(durable.Config{Functions: []durable.Function{mk()}})
	var evs []durable.Event
	for i := 0; i < 12; i++ {
		evs = append(evs, durable.Event{Name: "go", Data: M{"i": i}})
	}
	ids, err := c1.Send(b.ctx, evs...)
	require.NoError(t, err)
	for _, id := range ids {
		run := b.waitRun(c1, b.runsFor(c1, id, 1)[0].ID, 30*time.Second)
		require.Equal(t, durable.RunCompleted, run.Status)
	}
	close(release)
	require.Equal(t, 2, g.most(""), "at most two attempts at once, and the limit is used")
	require.EqualValues(t, 12, started.Load())
}

// A sleeping run holds no slot: with Limit 1, a run sleeping for a while
// lets the next run start and finish during its sleep.
func TestConcurrencySleepingRunHoldsNoSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "sleepy", Triggers: []durable.Trigger{{Event: "s"}},
		Concurrency: []durable.Concurrency{{Limit: 1}}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			if in.Event.Data["sleep"] == true {
				if err := durable.Sleep(ctx, "nap", 3*time.Second); err != nil {
					return "", err
				}
			}
			return durable.Step(ctx, "done", func(ctx context.Context) (string, error) { return "ok", nil })
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	ids, err := c.Send(b.ctx, durable.Event{Name: "s", Data: M{"sleep": true}})
	require.NoError(t, err)
	sleeper := b.runsFor(c, ids[0], 1)[0].ID
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		r, err := c.GetRun(b.ctx, sleeper)
		require.NoError(ct, err)
		require.Len(ct, r.Steps, 1)
		require.Equal(ct, "sleeping", r.Steps[0].Status)
	}, 10*time.Second, 10*time.Millisecond)
	ids, err = c.Send(b.ctx, durable.Event{Name: "s", Data: M{"sleep": false}})
	require.NoError(t, err)
	other := b.waitRun(c, b.runsFor(c, ids[0], 1)[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, other.Status)
	r, err := c.GetRun(b.ctx, sleeper)
	require.NoError(t, err)
	require.Equal(t, durable.RunRunning, r.Status, "the second run finished while the first slept")
	require.Equal(t, durable.RunCompleted, b.waitRun(c, sleeper, 20*time.Second).Status)
}

// ScopeShared: functions sharing a key value share its count; another
// value is not held back; a backlog on one key never delays another.
func TestConcurrencySharedScopeAndKeyIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	block := make(chan struct{})
	var mu sync.Mutex
	var started []string
	mk := func(id string) durable.Function {
		return durable.NewFunction(durable.FunctionOpts{ID: id, Triggers: []durable.Trigger{{Event: id}},
			Concurrency: []durable.Concurrency{{Limit: 1, Key: "event.data.acct", Scope: durable.ScopeShared}}},
			func(ctx context.Context, in durable.Input[M]) (int, error) {
				return durable.Step(ctx, "call", func(ctx context.Context) (int, error) {
					mu.Lock()
					started = append(started, id+":"+in.Event.Data["acct"].(string))
					mu.Unlock()
					if in.Event.Data["block"] == true {
						<-block
					}
					return 1, nil
				})
			})
	}
	c := b.client(durable.Config{Functions: []durable.Function{mk("f1"), mk("f2")}})
	send := func(name, acct string, blocking bool) string {
		ids, err := c.Send(b.ctx, durable.Event{Name: name, Data: M{"acct": acct, "block": blocking}})
		require.NoError(t, err)
		return b.runsFor(c, ids[0], 1)[0].ID
	}
	holder := send("f1", "x", true)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		require.Equal(ct, []string{"f1:x"}, started)
	}, 10*time.Second, 5*time.Millisecond)
	var waiting []string
	for i := 0; i < 5; i++ {
		waiting = append(waiting, send("f2", "x", false))
	}
	other := send("f2", "y", false)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, other, 10*time.Second).Status, "another key value runs at once")
	never(t, 300*time.Millisecond, 10*time.Millisecond, "f2 ran for x while f1 held x", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range started {
			if s == "f2:x" {
				return true, nil
			}
		}
		return false, nil
	})
	close(block)
	for _, id := range append(waiting, holder) {
		require.Equal(t, durable.RunCompleted, b.waitRun(c, id, 20*time.Second).Status)
	}
}

// Throttle with Timeouts.Start sheds a stale backlog: runs that wait
// longer than Timeouts.Start at the throttle are cancelled, saying why.
func TestThrottleBacklogShedByStartTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "shed", Triggers: []durable.Trigger{{Event: "shed"}},
		Throttle: &durable.Throttle{Limit: 1, Period: time.Hour}, Timeouts: durable.Timeouts{Start: time.Second}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	var runs []string
	for i := 0; i < 3; i++ {
		ids, err := c.Send(b.ctx, durable.Event{Name: "shed", Data: M{"i": i}})
		require.NoError(t, err)
		runs = append(runs, b.runsFor(c, ids[0], 1)[0].ID)
		if i == 0 {
			// The first takes the hour's only start (a loaded machine may
			// take longer than Timeouts.Start to start it: wait for it).
			require.EventuallyWithT(t, func(ct *assert.CollectT) {
				r, err := c.GetRun(b.ctx, runs[0])
				require.NoError(ct, err)
				require.NotEqual(ct, durable.RunQueued, r.Status)
			}, 10*time.Second, 5*time.Millisecond)
		}
	}
	var statuses []durable.RunStatus
	for _, id := range runs {
		r := b.waitRun(c, id, 20*time.Second)
		statuses = append(statuses, r.Status)
		if r.Status == durable.RunCancelled {
			require.Contains(t, r.Error, "Timeouts.Start")
		}
	}
	require.Equal(t, []durable.RunStatus{durable.RunCompleted, durable.RunCancelled, durable.RunCancelled}, statuses)
	var waits int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_gate_wait").Scan(&waits))
	require.Zero(t, waits, "a cancelled run leaves the gate's queue")
}

// A run that joined a gate's queue just as its last slot freed (no
// release left to promote it) is promoted by the maintenance loop within
// a second or so: here the race is staged by hand, the run put back in the
// queue with no slot held and its job far ahead.
func TestReaperPromotesARunStrandedInAQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hold := make(chan struct{})
	holding := make(chan struct{}, 1)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "stranded", Triggers: []durable.Trigger{{Event: "s"}},
		Concurrency: []durable.Concurrency{{Limit: 1}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "work", func(ctx context.Context) (int, error) {
				if in.Event.Data["hold"] == true {
					holding <- struct{}{}
					<-hold
				}
				return 1, nil
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	first, err := c.Send(b.ctx, durable.Event{Name: "s", Data: M{"hold": true}})
	require.NoError(t, err)
	holder := b.runsFor(c, first[0], 1)[0].ID
	second, err := c.Send(b.ctx, durable.Event{Name: "s", Data: M{"hold": false}})
	require.NoError(t, err)
	waiter := b.runsFor(c, second[0], 1)[0].ID
	// The waiter is queued behind the holder.
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_gate_wait WHERE run_id = $1", waiter).Scan(&n))
	require.Equal(t, 1, n)
	// Stage the race once the holder runs (its attempt has taken the slot
	// reserved for it: deleting the reservation before that would let
	// the holder's attempt take a fresh slot, ahead of the waiter): the
	// holder's slot vanishes without a promotion.
	select {
	case <-holding:
	case <-time.After(15 * time.Second):
		t.Fatal("the holder's step did not start")
	}
	_, err = b.pool.Exec(b.ctx, "DELETE FROM "+b.schema+".durable_slot WHERE run_id = $1", holder)
	require.NoError(t, err)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, waiter, 15*time.Second).Status)
	close(hold)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, holder, 15*time.Second).Status)
}
