package durable_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// idleClient is a client that knows fns (and registers them, so that
// events start their runs) but executes nothing: their runs stay queued.
func (b *bundle) idleClient(fns ...durable.Function) *durable.Client {
	b.t.Helper()
	c, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: fns})
	require.NoError(b.t, err)
	require.NoError(b.t, c.Register(b.ctx))
	return c
}

// listAll pages through every run the filter selects.
func listAll(t *testing.T, ctx context.Context, c *durable.Client, f durable.RunFilter) []*durable.Run {
	t.Helper()
	var all []*durable.Run
	for i := 0; ; i++ {
		require.Less(t, i, 100, "too many pages")
		page, err := c.ListRuns(ctx, f)
		require.NoError(t, err)
		all = append(all, page.Runs...)
		if page.Next == "" {
			return all
		}
		f.Cursor = page.Next
	}
}

func runIDs(runs []*durable.Run) []string {
	ids := make([]string, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	return ids
}

func noop(context.Context, durable.Input[M]) (string, error) { return "", nil }

func TestListRunsPagesNewestFirstWhileRunsAreCreated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	fn := durable.NewFunction(durable.FunctionOpts{ID: "pager", Triggers: []durable.Trigger{{Event: "list/page"}}}, noop)
	c := b.idleClient(fn)
	// 15 Send calls of 8 events: runs created in one transaction share
	// created_at, so pages end inside such groups (50 = 6x8 + 2).
	send := func(n int) {
		events := make([]durable.Event, n)
		for i := range events {
			events[i] = durable.Event{Name: "list/page"}
		}
		_, err := c.Send(ctx, events...)
		require.NoError(t, err)
	}
	for range 15 {
		send(8)
	}
	rows, err := b.pool.Query(ctx, "SELECT id FROM "+b.schema+".durable_run ORDER BY created_at DESC, id DESC")
	require.NoError(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Len(t, want, 120)

	var got []string
	var sizes []int
	f := durable.RunFilter{Limit: 50}
	for {
		page, err := c.ListRuns(ctx, f)
		require.NoError(t, err)
		sizes = append(sizes, len(page.Runs))
		for _, r := range page.Runs {
			got = append(got, r.ID)
			require.Equal(t, "pager", r.FunctionID)
			require.Equal(t, durable.RunQueued, r.Status)
			require.Len(t, r.EventIDs, 1)
			require.Nil(t, r.Steps, "ListRuns returns runs without their steps")
		}
		if page.Next == "" {
			break
		}
		require.Less(t, len(sizes), 5, "too many pages")
		send(8) // newer runs: they must not shift the pages that follow
		f.Cursor = page.Next
	}
	require.Equal(t, []int{50, 50, 20}, sizes)
	require.Equal(t, want, got, "newest first, no duplicates, no gaps")

	// The default page size is 50; the newest runs are now those sent
	// between pages.
	page, err := c.ListRuns(ctx, durable.RunFilter{})
	require.NoError(t, err)
	require.Len(t, page.Runs, 50)
	require.NotEmpty(t, page.Next)
	require.NotContains(t, runIDs(page.Runs[:16]), want[0])
	require.Equal(t, want[0], page.Runs[16].ID)
	page, err = c.ListRuns(ctx, durable.RunFilter{Limit: durable.MaxListLimit})
	require.NoError(t, err)
	require.Len(t, page.Runs, 136)
	require.Empty(t, page.Next)
}

// filterFixture is a schema with runs of three functions in every final
// status and queued: "ok" completed (data.n 1 to 3, output total 10n),
// "bad" failed, "idle" queued and cancelled.
type filterFixture struct {
	c   *durable.Client
	all []*durable.Run // newest first
}

func newFilterFixture(t *testing.T, b *bundle, ctx context.Context) *filterFixture {
	ok := durable.NewFunction(durable.FunctionOpts{ID: "ok", Triggers: []durable.Trigger{{Event: "list/ok"}}},
		func(ctx context.Context, in durable.Input[M]) (M, error) {
			return M{"total": in.Event.Data["n"].(float64) * 10}, nil
		})
	bad := durable.NewFunction(durable.FunctionOpts{ID: "bad", Triggers: []durable.Trigger{{Event: "list/bad"}}},
		func(ctx context.Context, in durable.Input[M]) (M, error) {
			return nil, durable.NonRetriable(errors.New("broken"))
		})
	idle := durable.NewFunction(durable.FunctionOpts{ID: "idle", Triggers: []durable.Trigger{{Event: "list/idle"}}}, noop)
	c := b.client(durable.Config{Functions: []durable.Function{ok, bad}})
	sender := b.idleClient(idle)
	var ended []string
	for i, name := range []string{"list/ok", "list/bad", "list/ok", "list/idle", "list/bad", "list/idle", "list/ok"} {
		data := M{"i": i}
		if name == "list/ok" {
			data["n"] = len(ended) + 1
		}
		ids, err := sender.Send(ctx, durable.Event{Name: name, Data: data})
		require.NoError(t, err)
		runs := b.runsFor(c, ids[0], 1)
		switch name {
		case "list/ok":
			ended = append(ended, runs[0].ID)
		case "list/bad":
			b.waitRun(c, runs[0].ID, 10*time.Second)
		case "list/idle":
			if i == 3 {
				require.NoError(t, c.Cancel(ctx, runs[0].ID))
			}
		}
	}
	for _, id := range ended {
		b.waitRun(c, id, 10*time.Second)
	}
	all := listAll(t, ctx, c, durable.RunFilter{})
	require.Len(t, all, 7)
	return &filterFixture{c: c, all: all}
}

// total is the "total" of a run's output (0 without one).
func total(r *durable.Run) float64 {
	var out struct{ Total float64 }
	_ = json.Unmarshal(r.Output, &out)
	return out.Total
}

// want returns the fixture's runs (newest first) that keep says.
func (fx *filterFixture) want(keep func(r *durable.Run) bool) []string {
	ids := []string{}
	for _, r := range fx.all {
		if keep(r) {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

func TestListRunsFilters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	fx := newFilterFixture(t, b, ctx)
	require.True(t, sort.SliceIsSorted(fx.all, func(i, j int) bool {
		a, z := fx.all[i], fx.all[j]
		return a.CreatedAt.After(z.CreatedAt) || a.CreatedAt.Equal(z.CreatedAt) && a.ID > z.ID
	}), "newest first")
	statuses := map[durable.RunStatus]int{}
	for _, r := range fx.all {
		statuses[r.Status]++
	}
	require.Equal(t, map[durable.RunStatus]int{durable.RunCompleted: 3, durable.RunFailed: 2, durable.RunQueued: 1, durable.RunCancelled: 1}, statuses)

	mid := fx.all[3].CreatedAt // the 4th newest
	old := fx.all[5].CreatedAt // the 6th newest
	for _, tc := range []struct {
		name   string
		filter durable.RunFilter
		keep   func(r *durable.Run) bool
	}{
		{"function", durable.RunFilter{FunctionID: "ok"},
			func(r *durable.Run) bool { return r.FunctionID == "ok" }},
		{"status", durable.RunFilter{Status: []durable.RunStatus{durable.RunFailed}},
			func(r *durable.Run) bool { return r.Status == durable.RunFailed }},
		{"statuses", durable.RunFilter{Status: []durable.RunStatus{durable.RunQueued, durable.RunCancelled}},
			func(r *durable.Run) bool { return r.FunctionID == "idle" }},
		{"created after", durable.RunFilter{CreatedAfter: mid},
			func(r *durable.Run) bool { return r.CreatedAt.After(mid) }},
		{"created before", durable.RunFilter{CreatedBefore: mid},
			func(r *durable.Run) bool { return r.CreatedAt.Before(mid) }},
		{"time range", durable.RunFilter{CreatedAfter: old, CreatedBefore: fx.all[1].CreatedAt},
			func(r *durable.Run) bool { return r.CreatedAt.After(old) && r.CreatedAt.Before(fx.all[1].CreatedAt) }},
		{"function and status", durable.RunFilter{FunctionID: "idle", Status: []durable.RunStatus{durable.RunCancelled}},
			func(r *durable.Run) bool { return r.FunctionID == "idle" && r.Status == durable.RunCancelled }},
		{"function and other status", durable.RunFilter{FunctionID: "ok", Status: []durable.RunStatus{durable.RunFailed}},
			func(r *durable.Run) bool { return false }},
		{"function, status and time", durable.RunFilter{FunctionID: "ok", Status: []durable.RunStatus{durable.RunCompleted}, CreatedBefore: mid},
			func(r *durable.Run) bool { return r.FunctionID == "ok" && r.CreatedAt.Before(mid) }},
		{"if over event", durable.RunFilter{If: "event.data.n >= 2"},
			func(r *durable.Run) bool { return total(r) >= 20 }},
		{"if over output", durable.RunFilter{If: "output.total == 30"},
			func(r *durable.Run) bool { return total(r) == 30 }},
		{"if over both", durable.RunFilter{If: "event.data.n >= 2 && output.total < 30"},
			func(r *durable.Run) bool { return total(r) == 20 }},
		{"if without output", durable.RunFilter{If: "output == null && event.name != 'list/idle'"},
			func(r *durable.Run) bool { return r.FunctionID == "bad" }},
		{"if, function, status and time", durable.RunFilter{If: "event.data.i >= 0", FunctionID: "idle", Status: []durable.RunStatus{durable.RunQueued}, CreatedAfter: old},
			func(r *durable.Run) bool { return r.FunctionID == "idle" && r.Status == durable.RunQueued }},
		{"if on a missing field", durable.RunFilter{If: "output.nope > 1"},
			func(r *durable.Run) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := fx.want(tc.keep)
			got := runIDs(listAll(t, ctx, fx.c, tc.filter))
			require.Equal(t, want, got)
			// One run per page gives the same runs.
			tc.filter.Limit = 1
			require.Equal(t, want, runIDs(listAll(t, ctx, fx.c, tc.filter)), "a page at a time")
		})
	}
	// The sanity of the fixture the cases rely on.
	require.Len(t, fx.want(func(r *durable.Run) bool { return r.CreatedAt.After(mid) }), 3)
	require.Len(t, fx.want(func(r *durable.Run) bool { return total(r) == 20 }), 1)
}

func TestListRunsRejectsBadFilters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	c := b.idleClient()
	for _, tc := range []struct {
		filter durable.RunFilter
		field  string
	}{
		{durable.RunFilter{Limit: 1001}, "RunFilter.Limit"},
		{durable.RunFilter{Limit: -1}, "RunFilter.Limit"},
		{durable.RunFilter{Status: []durable.RunStatus{"done"}}, "RunFilter.Status[0]"},
		{durable.RunFilter{If: "event.data.n >"}, "RunFilter.If"},
		{durable.RunFilter{If: `"not a bool"`}, "RunFilter.If"},
		{durable.RunFilter{If: "async.data.n == 1"}, "RunFilter.If"},
		{durable.RunFilter{Cursor: "not a cursor!"}, "RunFilter.Cursor"},
		{durable.RunFilter{Cursor: base64.RawURLEncoding.EncodeToString([]byte("short"))}, "RunFilter.Cursor"},
		{durable.RunFilter{Cursor: base64.RawURLEncoding.EncodeToString([]byte("\x02\x00\x00\x00\x00\x00\x00\x00\x01run"))}, "RunFilter.Cursor"},
		{durable.RunFilter{Cursor: base64.RawURLEncoding.EncodeToString([]byte("\x01\x00\x00\x00\x00\x00\x00\x00\x01"))}, "RunFilter.Cursor"},
	} {
		page, err := c.ListRuns(ctx, tc.filter)
		require.ErrorContains(t, err, tc.field, "%+v", tc.filter)
		require.Nil(t, page)
	}
	for _, limit := range []int{1, durable.MaxListLimit} {
		page, err := c.ListRuns(ctx, durable.RunFilter{Limit: limit})
		require.NoError(t, err)
		require.Empty(t, page.Runs)
		require.Empty(t, page.Next)
	}
}

// insertRuns inserts n runs of function fn directly, one a millisecond
// back from now, the oldest with status oldest and the others queued.
func (b *bundle) insertRuns(ctx context.Context, fn string, n int, oldest string) {
	b.t.Helper()
	_, err := b.pool.Exec(ctx, "INSERT INTO "+b.schema+`.durable_run (id, function_id, status, event_id, event_ids, events, created_at)
		SELECT $1 || lpad(i::text, 8, '0'), $1, CASE WHEN i = 1 THEN $3 ELSE 'queued' END, 'ev' || i, ARRAY['ev' || i],
			jsonb_build_array(jsonb_build_object('id', 'ev' || i, 'name', 'bulk', 'data', jsonb_build_object('i', i), 'ts', now())),
			now() - make_interval(secs => ($2 - i) / 1000.0)
		FROM generate_series(1, $2::int) AS i`, fn, n, oldest)
	require.NoError(b.t, err)
}

func TestListRunsScanIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	c := b.idleClient()
	b.insertRuns(ctx, "bulk", durable.ListScanLimit+1, "failed")
	b.insertRuns(ctx, "other", 3, "queued")
	for _, tc := range []struct {
		f     durable.RunFilter
		empty int // pages with no run before the one with the match
	}{
		{durable.RunFilter{FunctionID: "bulk", Status: []durable.RunStatus{durable.RunFailed}}, 1},
		{durable.RunFilter{Status: []durable.RunStatus{durable.RunFailed}, CreatedAfter: time.Now().Add(-time.Hour)}, 1},
		// If is evaluated on at most ListEvalLimit runs a call.
		{durable.RunFilter{FunctionID: "bulk", If: "event.data.i == 1"}, durable.ListScanLimit / durable.ListEvalLimit},
		{durable.RunFilter{FunctionID: "bulk", Status: []durable.RunStatus{durable.RunFailed}, If: "event.data.i == 1"}, 1},
	} {
		// The only match is the oldest run, past the bounds of a call:
		// the first pages are empty but say to go on.
		f := tc.f
		for i := range tc.empty {
			page, err := c.ListRuns(ctx, f)
			require.NoError(t, err, "%+v", f)
			require.Empty(t, page.Runs, "page %d of %+v", i, f)
			require.NotEmpty(t, page.Next, "page %d of %+v", i, f)
			f.Cursor = page.Next
		}
		page, err := c.ListRuns(ctx, f)
		require.NoError(t, err)
		require.Len(t, page.Runs, 1, "%+v", f)
		require.Equal(t, "bulk00000001", page.Runs[0].ID)
		require.Empty(t, page.Next)
	}
	// Without a filter to sift, pages are full.
	page, err := c.ListRuns(ctx, durable.RunFilter{FunctionID: "bulk", Limit: 1000})
	require.NoError(t, err)
	require.Len(t, page.Runs, 1000)
	require.Equal(t, fmt.Sprintf("bulk%08d", durable.ListScanLimit+1), page.Runs[0].ID)
}

// stepCounter counts the executions of step bodies by step ID.
type stepCounter struct{ a, b, c atomic.Int32 }

// abcFunction runs steps a, b and c; b fails (with no retries) while
// failB is set.
func abcFunction(id string, n *stepCounter, failB *atomic.Bool, opts durable.FunctionOpts) durable.Function {
	opts.ID, opts.Retries = id, durable.Ptr(0)
	return durable.NewFunction(opts, func(ctx context.Context, in durable.Input[M]) (string, error) {
		a, err := durable.Step(ctx, "a", func(context.Context) (string, error) {
			return fmt.Sprintf("a%d", n.a.Add(1)), nil
		})
		if err != nil {
			return "", err
		}
		bOut, err := durable.Step(ctx, "b", func(context.Context) (string, error) {
			n.b.Add(1)
			if failB.Load() {
				return "", errors.New("b broke")
			}
			return "b", nil
		})
		if err != nil {
			return "", err
		}
		return durable.Step(ctx, "c", func(context.Context) (string, error) {
			n.c.Add(1)
			return a + bOut + "c", nil
		})
	})
}

func TestRerunFromTheTop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	var n stepCounter
	var failB atomic.Bool
	// The idempotency key of the trigger event is held by the first run:
	// it must not stop the rerun.
	fn := abcFunction("abc", &n, &failB, durable.FunctionOpts{
		Triggers:    []durable.Trigger{{Event: "abc/go"}},
		Idempotency: "event.data.key",
	})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	ids, err := c.Send(ctx, durable.Event{Name: "abc/go", Data: M{"key": "k1"}})
	require.NoError(t, err)
	first := b.waitRun(c, b.runsFor(c, ids[0], 1)[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, first.Status)
	require.JSONEq(t, `"a1bc"`, string(first.Output))

	rerunID, err := c.Rerun(ctx, first.ID, durable.RerunOpts{})
	require.NoError(t, err)
	require.NotEqual(t, first.ID, rerunID)
	rerun := b.waitRun(c, rerunID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, rerun.Status)
	require.JSONEq(t, `"a2bc"`, string(rerun.Output), "every step ran again")
	require.Equal(t, [3]int32{2, 2, 2}, [3]int32{n.a.Load(), n.b.Load(), n.c.Load()})
	require.Equal(t, first.ID, rerun.RerunOf)
	require.Empty(t, first.RerunOf)
	require.Equal(t, first.EventIDs, rerun.EventIDs)
	require.Equal(t, "abc", rerun.FunctionID)

	// RunsForEvent and ListRuns show the rerun and what it reruns.
	runs, err := c.RunsForEvent(ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, []string{first.ID, rerunID}, runIDs(runs))
	require.Equal(t, []string{"", first.ID}, []string{runs[0].RerunOf, runs[1].RerunOf})
	page, err := c.ListRuns(ctx, durable.RunFilter{FunctionID: "abc"})
	require.NoError(t, err)
	require.Equal(t, []string{rerunID, first.ID}, runIDs(page.Runs))
	require.Equal(t, first.ID, page.Runs[0].RerunOf)
}

func TestRerunFromAStep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	var n stepCounter
	var failB atomic.Bool
	failB.Store(true)
	c := b.client(durable.Config{Functions: []durable.Function{abcFunction("abc", &n, &failB, durable.FunctionOpts{})}})
	runID, err := c.Invoke(ctx, "abc", M{"x": 1})
	require.NoError(t, err)
	first := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, first.Status)
	require.Len(t, first.Steps, 2)
	require.Equal(t, "failed", first.Steps[1].Status)

	// A step the run never reached, and a run that does not exist.
	_, err = c.Rerun(ctx, runID, durable.RerunOpts{FromStep: "c"})
	require.ErrorContains(t, err, `"c"`)
	require.ErrorContains(t, err, "its steps: a, b")
	_, err = c.Rerun(ctx, "no-such-run", durable.RerunOpts{})
	require.ErrorIs(t, err, durable.ErrRunNotFound)

	failB.Store(false)
	rerunID, err := c.Rerun(ctx, runID, durable.RerunOpts{FromStep: "b"})
	require.NoError(t, err)
	rerun := b.waitRun(c, rerunID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, rerun.Status, rerun.Error)
	require.JSONEq(t, `"a1bc"`, string(rerun.Output), "a's output was copied")
	require.Equal(t, [3]int32{1, 2, 1}, [3]int32{n.a.Load(), n.b.Load(), n.c.Load()}, "a did not run again; b and c did")
	require.Equal(t, runID, rerun.RerunOf)
	require.Equal(t, []string{"a", "b", "c"}, []string{rerun.Steps[0].ID, rerun.Steps[1].ID, rerun.Steps[2].ID})
	require.Equal(t, first.Steps[0], rerun.Steps[0], "a is copied as it was")
	require.Equal(t, "completed", rerun.Steps[1].Status)

	// From the first step: nothing is copied.
	again, err := c.Rerun(ctx, rerunID, durable.RerunOpts{FromStep: "a"})
	require.NoError(t, err)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, again, 10*time.Second).Status)
	require.Equal(t, [3]int32{2, 3, 2}, [3]int32{n.a.Load(), n.b.Load(), n.c.Load()})
}

func TestRerunOfAnUnknownFunction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	c := b.idleClient()
	b.insertRuns(ctx, "ghost", 1, "failed")
	_, err := c.Rerun(ctx, "ghost00000001", durable.RerunOpts{})
	require.ErrorIs(t, err, durable.ErrFunctionNotFound)
	var n int
	require.NoError(t, b.pool.QueryRow(ctx, "SELECT count(*) FROM "+b.schema+".durable_run").Scan(&n))
	require.Equal(t, 1, n, "nothing was created")
}
