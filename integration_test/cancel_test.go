package integration_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// TestConcurrentCancelEmitsOneCancelledEvent cancels sleeping runs (of the
// "sleeper" function, executed by two worker processes) from this process,
// each run by three clients on pools of their own at the same moment
// (released by a barrier). Each cancelled run must emit exactly one
// durable/function.cancelled event, which starts exactly one run of the
// "cleanup" function (trigger durable/function.cancelled, If
// `event.data.function_id == "sleeper"`), whose StepTx commits once, even
// though both workers route system events. The cancelled runs must never
// wake: a run left uncancelled, sleeping as long, wakes and completes,
// while theirs stay cancelled with their River jobs cancelled.
func TestConcurrentCancelEmitsOneCancelledEvent(t *testing.T) {
	t.Parallel()
	const nRuns = 8
	const nCancellers = 3
	const nap = 4 * time.Second
	e := setup(t, 4)
	e.createCoordTables()
	var workers []*proc
	for _, name := range []string{"A", "B"} {
		workers = append(workers, e.startWorker(name, workerOpts{recoverAfter: 5 * time.Second, args: []string{"-functions", "sleeper,cleanup"}}))
	}
	for _, w := range workers {
		w.waitReady(60 * time.Second)
	}

	c := e.sendOnlyClient()
	events := make([]durable.Event, nRuns+1)
	for i := range events {
		events[i] = durable.Event{Name: "sleep/start", Data: M{"i": i, "nap_ms": nap.Milliseconds()}}
	}
	all := e.startRuns(c, events)
	victims, control := all[:nRuns], all[nRuns]

	waitFor(t, 60*time.Second, "every run to sleep", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.durable_step
			WHERE key = 'nap' AND status = 'sleeping' AND run_id = ANY($1)`), all).Scan(&n)
		return n == len(all), err
	})
	var lastWake time.Time
	require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT max(wake_at) FROM {{schema}}.durable_step WHERE key = 'nap'`)).Scan(&lastWake))

	cancellers := make([]*durable.Client, nCancellers)
	for i := range cancellers {
		cancellers[i] = e.senderClient(2)
	}
	errs := make([][nCancellers]error, nRuns)
	for i, runID := range victims {
		var ready, done sync.WaitGroup
		gate := make(chan struct{})
		for j := range nCancellers {
			ready.Add(1)
			done.Go(func() {
				ready.Done()
				<-gate
				errs[i][j] = cancellers[j].Cancel(ctxFor(t, 30*time.Second), runID)
			})
		}
		ready.Wait()
		close(gate)
		done.Wait()
	}
	for i, runErrs := range errs {
		for j, err := range runErrs {
			assert.NoError(t, err, "run %s: Cancel by client %d", victims[i], j)
		}
	}
	cancelledAt := time.Now()

	// Wait until every cancelled event is routed (the transaction that
	// routes an event creates its runs: the set of cleanup runs is then
	// final) and every cleanup run ended.
	waitFor(t, 60*time.Second, "the cancellations' cleanup runs", func() (bool, error) {
		var events, unrouted, cleanups, live int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT
			(SELECT count(*) FROM {{schema}}.durable_event WHERE name = 'durable/function.cancelled'),
			(SELECT count(*) FROM {{schema}}.durable_event WHERE name = 'durable/function.cancelled' AND NOT routed),
			(SELECT count(*) FROM {{schema}}.durable_run WHERE function_id = 'cleanup'),
			(SELECT count(*) FROM {{schema}}.durable_run WHERE function_id = 'cleanup' AND status IN ('queued', 'running'))`)).
			Scan(&events, &unrouted, &cleanups, &live)
		return events >= nRuns && unrouted == 0 && cleanups >= nRuns && live == 0, err
	})
	t.Logf("cleanup runs done %s after the cancellations", time.Since(cancelledAt).Round(time.Millisecond))

	// One cancelled event per run, with the ID derived from the run's.
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT id, data ->> 'run_id', data ->> 'function_id' FROM {{schema}}.durable_event
		WHERE name = 'durable/function.cancelled'`))
	require.NoError(t, err)
	perRun := map[string]int{}
	for rows.Next() {
		var id, runID, fn string
		require.NoError(t, rows.Scan(&id, &runID, &fn))
		perRun[runID]++
		assert.Equal(t, runID+"/cancelled", id)
		assert.Equal(t, "sleeper", fn)
	}
	require.NoError(t, rows.Err())
	assert.Len(t, perRun, nRuns, "runs with a cancelled event")

	// One cleanup run per cancelled run, completed, its StepTx once.
	rows, err = e.pool.Query(e.ctx, e.sql(`SELECT id, events -> 0 -> 'data' ->> 'run_id', status FROM {{schema}}.durable_run
		WHERE function_id = 'cleanup'`))
	require.NoError(t, err)
	cleanups := map[string][]string{}
	for rows.Next() {
		var id, cancelled, status string
		require.NoError(t, rows.Scan(&id, &cancelled, &status))
		cleanups[cancelled] = append(cleanups[cancelled], id)
		assert.Equal(t, "completed", status, "cleanup run %s (for %s)", id, cancelled)
	}
	require.NoError(t, rows.Err())
	effects := e.outcomesByRun("cleanup")
	for _, id := range victims {
		assert.Equal(t, 1, perRun[id], "run %s: durable/function.cancelled events", id)
		if assert.Len(t, cleanups[id], 1, "run %s: cleanup runs %v", id, cleanups[id]) {
			if rows := effects[cleanups[id][0]]; assert.Len(t, rows, 1, "cleanup run %s: its StepTx committed %d times", cleanups[id][0], len(rows)) {
				assert.Equal(t, id, rows[0].detail)
			}
		}
		run, err := c.GetRun(e.ctx, id)
		require.NoError(t, err)
		assert.Equal(t, durable.RunCancelled, run.Status, "run %s", id)
	}
	assert.Len(t, cleanups, nRuns, "cancelled runs with cleanup runs")
	assert.Len(t, effects, nRuns, "cleanup runs whose StepTx committed")

	// The cancelled runs never wake: the control run, sleeping as long,
	// wakes and completes; theirs do not, and their jobs are cancelled.
	ctl := waitRunsDone(t, c, []string{control}, lastWake.Add(30*time.Second))[0]
	require.Equal(t, durable.RunCompleted, ctl.Status, "control run %s: %q %s", ctl.ID, ctl.Error, describeSteps(ctl))
	// Until every nap is over (a job not cancelled would then run), no
	// cancelled run may wake.
	if d := time.Until(lastWake.Add(500 * time.Millisecond)); d > 0 {
		never(t, d, "a cancelled run woke from its nap", func() (bool, error) {
			var n int
			err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.outcomes
				WHERE fn = 'sleeper' AND run_id = ANY($1)`), victims).Scan(&n)
			return n > 0, err
		})
	}
	naps := e.outcomesByRun("sleeper")
	assert.Len(t, naps, 1, "runs that woke from their nap: %v", naps)
	assert.Contains(t, naps, control)
	for _, id := range victims {
		run, err := c.GetRun(e.ctx, id)
		require.NoError(t, err)
		assert.Equal(t, durable.RunCancelled, run.Status, "run %s after its nap would have ended", id)
		if s := stepByID(run, "nap"); assert.NotNil(t, s) {
			assert.Equal(t, "cancelled", s.Status, "run %s: nap step (a cancelled run shows no step still sleeping)", id)
		}
		assert.Nil(t, stepByID(run, "after-nap"), "run %s: step after the nap", id)
		var state string
		require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT j.state::text FROM {{schema}}.durable_run r
			JOIN {{schema}}.river_job j ON j.id = r.job_id WHERE r.id = $1`), id).Scan(&state))
		assert.Equal(t, "cancelled", state, "run %s: River job", id)
	}
	assert.Equal(t, nRuns, e.count(`SELECT count(*) FROM {{schema}}.durable_run WHERE function_id = 'cleanup'`), "cleanup runs in the end")
	assertNoTxConflicts(t, workers...)
}
