package durable_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func eventIDs(events []*durable.EventInfo) []string {
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	return ids
}

func TestListEventsNewestFirstWithTheRunsTheyStarted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	fn := durable.NewFunction(durable.FunctionOpts{ID: "ev-fn", Triggers: []durable.Trigger{{Event: "ev/start"}}}, noop)
	c := b.idleClient(fn)

	// Sent in three transactions: the events of one share received_at, so
	// pages end inside such groups.
	started, err := c.Send(ctx, durable.Event{Name: "ev/start", Data: M{"n": 1}}, durable.Event{Name: "ev/start", Data: M{"n": 2}})
	require.NoError(t, err)
	ignored, err := c.Send(ctx, durable.Event{Name: "ev/ignored", Data: M{"n": 3}}, durable.Event{Name: "ev/ignored", Data: M{"n": 4}})
	require.NoError(t, err)
	last, err := c.Send(ctx, durable.Event{Name: "ev/start", Data: M{"n": 5}})
	require.NoError(t, err)

	page, err := c.ListEvents(ctx, durable.EventFilter{})
	require.NoError(t, err)
	require.Empty(t, page.Next)
	require.Len(t, page.Events, 5)
	byID := map[string]*durable.EventInfo{}
	for i, e := range page.Events {
		byID[e.ID] = e
		if i > 0 {
			prev := page.Events[i-1]
			require.True(t, !e.ReceivedAt.After(prev.ReceivedAt), "newest first")
			if e.ReceivedAt.Equal(prev.ReceivedAt) {
				require.Less(t, e.ID, prev.ID, "ties by ID, descending")
			}
		}
	}
	require.Equal(t, last[0], page.Events[0].ID)
	for _, id := range append(started, last...) {
		e := byID[id]
		require.Equal(t, "ev/start", e.Name)
		require.Len(t, e.Runs, 1, "event %s started one run", id)
		require.Equal(t, "ev-fn", e.Runs[0].FunctionID)
		require.Equal(t, durable.RunQueued, e.Runs[0].Status)
		runs, err := c.RunsForEvent(ctx, id)
		require.NoError(t, err)
		require.Equal(t, runs[0].ID, e.Runs[0].ID)
	}
	for _, id := range ignored {
		require.Empty(t, byID[id].Runs, "event %s started nothing", id)
		require.NotNil(t, byID[id].Runs, "empty, not nil")
	}
	require.JSONEq(t, `{"n": 3}`, string(byID[ignored[0]].Data))

	// Pages of 2: all five, once each, in the same order.
	var got []string
	var sizes []int
	f := durable.EventFilter{Limit: 2}
	for {
		p, err := c.ListEvents(ctx, f)
		require.NoError(t, err)
		sizes = append(sizes, len(p.Events))
		got = append(got, eventIDs(p.Events)...)
		if p.Next == "" {
			break
		}
		require.Less(t, len(sizes), 5, "too many pages")
		f.Cursor = p.Next
	}
	require.Equal(t, []int{2, 2, 1}, sizes)
	require.Equal(t, eventIDs(page.Events), got)

	// By name, and the events that started nothing.
	p, err := c.ListEvents(ctx, durable.EventFilter{Name: "ev/start"})
	require.NoError(t, err)
	require.ElementsMatch(t, append(started, last...), eventIDs(p.Events))
	p, err = c.ListEvents(ctx, durable.EventFilter{Name: "ev/start", Limit: 2})
	require.NoError(t, err)
	require.Len(t, p.Events, 2)
	p, err = c.ListEvents(ctx, durable.EventFilter{Name: "ev/start", Limit: 2, Cursor: p.Next})
	require.NoError(t, err)
	require.Len(t, p.Events, 1)
	require.Empty(t, p.Next)
	p, err = c.ListEvents(ctx, durable.EventFilter{NoRuns: true})
	require.NoError(t, err)
	require.ElementsMatch(t, ignored, eventIDs(p.Events))
	require.Empty(t, p.Next)
	p, err = c.ListEvents(ctx, durable.EventFilter{Name: "ev/start", NoRuns: true})
	require.NoError(t, err)
	require.Empty(t, p.Events)
	require.NotNil(t, p.Events)

	_, err = c.ListEvents(ctx, durable.EventFilter{Limit: durable.MaxEventLimit + 1})
	require.ErrorContains(t, err, "EventFilter.Limit")
	_, err = c.ListEvents(ctx, durable.EventFilter{Cursor: "not a cursor"})
	require.ErrorContains(t, err, "EventFilter.Cursor")
}

func TestListEventsNoRunsScanIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	c := b.idleClient()
	// One old event that started nothing, then EventScanLimit+10 newer ones
	// that each started a run.
	n := durable.EventScanLimit + 10
	_, err := b.pool.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %[1]s.durable_event (id, name, data, ts, received_at)
		SELECT 'e-' || lpad(i::text, 6, '0'), 'bulk', '{}', now(), now() - make_interval(secs => $1 - i)
		FROM generate_series(0, $1) i`, b.schema), n)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %[1]s.durable_run (id, function_id, status, event_id, event_ids, events)
		SELECT 'r-' || lpad(i::text, 6, '0'), 'f', 'completed', 'e-' || lpad(i::text, 6, '0'), ARRAY['e-' || lpad(i::text, 6, '0')], '[]'
		FROM generate_series(1, $1) i`, b.schema), n)
	require.NoError(t, err)

	p, err := c.ListEvents(ctx, durable.EventFilter{NoRuns: true})
	require.NoError(t, err)
	require.Empty(t, p.Events, "the first scan examines only the newest EventScanLimit events")
	require.NotEmpty(t, p.Next, "and says where it stopped")
	p, err = c.ListEvents(ctx, durable.EventFilter{NoRuns: true, Cursor: p.Next})
	require.NoError(t, err)
	require.Equal(t, []string{"e-000000"}, eventIDs(p.Events))
	require.Empty(t, p.Next)
}

func TestCountRunsExactOnSmallTables(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	c := b.idleClient()
	_, err := b.pool.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %s.durable_run (id, function_id, status, event_id, event_ids, events, created_at)
		SELECT 'r-' || i, CASE WHEN i %% 3 = 0 THEN 'a' ELSE 'b' END,
			(ARRAY['queued', 'running', 'completed', 'failed', 'cancelled'])[1 + i %% 5], 'e-' || i, ARRAY['e-' || i], '[]',
			now() - make_interval(hours => i)
		FROM generate_series(0, 29) i`, b.schema))
	require.NoError(t, err)

	all, err := c.CountRuns(ctx, durable.CountFilter{})
	require.NoError(t, err)
	require.False(t, all.Estimated)
	require.Equal(t, int64(30), all.Total)
	require.Equal(t, map[durable.RunStatus]int64{"queued": 6, "running": 6, "completed": 6, "failed": 6, "cancelled": 6}, all.ByStatus)

	// i % 3 == 0 and i % 5: i in 0, 3, ..., 27 -> statuses of 0, 3, 1, 4, 2, 0, 3, 1, 4, 2.
	a, err := c.CountRuns(ctx, durable.CountFilter{FunctionID: "a"})
	require.NoError(t, err)
	require.Equal(t, int64(10), a.Total)
	require.Equal(t, map[durable.RunStatus]int64{"queued": 2, "running": 2, "completed": 2, "failed": 2, "cancelled": 2}, a.ByStatus)

	// Created in the last 4.5 hours: i in 0 to 4, one of each status.
	recent, err := c.CountRuns(ctx, durable.CountFilter{CreatedAfter: time.Now().Add(-270 * time.Minute)})
	require.NoError(t, err)
	require.Equal(t, int64(5), recent.Total)
	old, err := c.CountRuns(ctx, durable.CountFilter{CreatedBefore: time.Now().Add(-270 * time.Minute)})
	require.NoError(t, err)
	require.Equal(t, int64(25), old.Total)

	none, err := c.CountRuns(ctx, durable.CountFilter{FunctionID: "nobody"})
	require.NoError(t, err)
	require.Equal(t, int64(0), none.Total)
	require.Empty(t, none.ByStatus)
	require.NotNil(t, none.ByStatus)
}

func TestCountRunsEstimatesAboveTheExactLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	c := b.idleClient()
	// 3x the exact limit: 80% completed, 20% failed; function "rare" has
	// 1% of the runs (below the limit: counted exactly).
	n := 3 * durable.ExactCountLimit
	_, err := b.pool.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %[1]s.durable_run (id, function_id, status, event_id, event_ids, events)
		SELECT 'r-' || i, CASE WHEN i %% 100 = 0 THEN 'rare' ELSE 'common' END,
			CASE WHEN i %% 5 = 0 THEN 'failed' ELSE 'completed' END, 'e-' || i, ARRAY['e-' || i], '[]'
		FROM generate_series(1, $1) i`, b.schema), n)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, "ANALYZE "+b.schema+".durable_run")
	require.NoError(t, err)

	all, err := c.CountRuns(ctx, durable.CountFilter{})
	require.NoError(t, err)
	require.True(t, all.Estimated, "%d runs are above the exact limit", n)
	require.InEpsilon(t, n, all.Total, 0.15, "estimated total %d of %d", all.Total, n)
	require.InEpsilon(t, 0.8*float64(n), all.ByStatus[durable.RunCompleted], 0.15)
	require.InEpsilon(t, 0.2*float64(n), all.ByStatus[durable.RunFailed], 0.25)
	var sum int64
	for _, v := range all.ByStatus {
		sum += v
	}
	require.Equal(t, all.Total, sum)

	rare, err := c.CountRuns(ctx, durable.CountFilter{FunctionID: "rare"})
	require.NoError(t, err)
	require.False(t, rare.Estimated)
	require.Equal(t, map[durable.RunStatus]int64{"failed": int64(n / 100)}, rare.ByStatus, "every 100th run is also every 5th: failed")
}

func TestBrowseRunEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	fn := durable.NewFunction(durable.FunctionOpts{ID: "re-fn", Triggers: []durable.Trigger{{Event: "re/start"}}}, noop)
	c := b.idleClient(fn)
	ts := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	ids, err := c.Send(ctx, durable.Event{Name: "re/start", Data: M{"plan": "pro"}, Timestamp: ts})
	require.NoError(t, err)
	runs, err := c.RunsForEvent(ctx, ids[0])
	require.NoError(t, err)
	require.Len(t, runs, 1)

	events, err := c.RunEvents(ctx, runs[0].ID)
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, ids[0], events[0].ID)
	require.Equal(t, "re/start", events[0].Name)
	require.JSONEq(t, `{"plan": "pro"}`, string(events[0].Data))
	require.True(t, ts.Equal(events[0].Timestamp))

	_, err = c.RunEvents(ctx, "no-such-run")
	require.ErrorIs(t, err, durable.ErrRunNotFound)
}
