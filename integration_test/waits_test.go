package integration_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// TestTwoProcessesRaceToDeliverOneEvent has 30 runs waiting (in a worker
// process) for a "race/go" event with their key; for each run, two clients
// on pools of their own, released together by a barrier, each send a
// different matching event. Each run must resume exactly once, with exactly
// one of the two events: the wait step records it, the StepTx after the
// wait (which records the event it got) commits once, the run returns
// it; and no wait rows remain.
func TestTwoProcessesRaceToDeliverOneEvent(t *testing.T) {
	t.Parallel()
	const nRuns = 30
	e := setup(t, 4)
	e.createCoordTables()
	w := e.startWorker("W", workerOpts{recoverAfter: 5 * time.Second, args: []string{"-functions", "race-waiter"}})
	w.waitReady(60 * time.Second)

	c := e.sendOnlyClient()
	tag := randomTag()
	keys := make([]string, nRuns)
	starts := make([]durable.Event, nRuns)
	for i := range starts {
		keys[i] = fmt.Sprintf("%s-%02d", tag, i)
		starts[i] = durable.Event{Name: "race/start", Data: M{"k": keys[i]}}
	}
	runIDs := e.startRuns(c, starts)

	// Every run waits: its wait step is recorded with its wait row (one
	// transaction).
	waitFor(t, 60*time.Second, "every run to wait for race/go", func() (bool, error) {
		var steps, waits int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT
			(SELECT count(*) FROM {{schema}}.durable_step WHERE key = 'go' AND status = 'waiting'),
			(SELECT count(*) FROM {{schema}}.durable_wait WHERE kind = 'wait')`)).Scan(&steps, &waits)
		return steps == nRuns && waits == nRuns, err
	})

	senders := [2]*durable.Client{e.senderClient(2), e.senderClient(2)}
	type sendResult struct {
		id         string
		err        error
		start, end time.Time
	}
	results := make([][2]sendResult, nRuns)
	for i := range nRuns {
		var ready, done sync.WaitGroup
		gate := make(chan struct{})
		for j := range 2 {
			ready.Add(1)
			done.Go(func() {
				ev := durable.Event{ID: fmt.Sprintf("%s-go-%02d-%d", tag, i, j), Name: "race/go", Data: M{"k": keys[i], "sender": j}}
				ready.Done()
				<-gate
				r := sendResult{id: ev.ID, start: time.Now()}
				_, r.err = senders[j].Send(ctxFor(t, 30*time.Second), ev)
				r.end = time.Now()
				results[i][j] = r
			})
		}
		ready.Wait()
		close(gate)
		done.Wait()
	}
	overlapped := 0
	for i, r := range results {
		for j := range 2 {
			require.NoError(t, r[j].err, "round %d: sender %d", i, j)
		}
		if r[0].start.Before(r[1].end) && r[1].start.Before(r[0].end) {
			overlapped++
		}
	}
	t.Logf("%d of %d rounds had both Sends in flight at once", overlapped, nRuns)
	require.GreaterOrEqual(t, overlapped, nRuns/2, "the senders did not race (test setup)")

	runs := waitRunsDone(t, c, runIDs, time.Now().Add(60*time.Second))
	after := e.outcomesByRun("race-waiter")
	won := [2]int{}
	for i, run := range runs {
		sent := [2]string{results[i][0].id, results[i][1].id}
		if !assert.Equal(t, durable.RunCompleted, run.Status, "run %s: error %q, steps %s", run.ID, run.Error, describeSteps(run)) {
			continue
		}
		got := jsonString(t, run.Output)
		if !assert.Contains(t, sent[:], got, "run %s returned an event that is not one of the two sent for it", run.ID) {
			continue
		}
		if got == sent[0] {
			won[0]++
		} else {
			won[1]++
		}
		wait := stepByID(run, "go")
		if assert.NotNil(t, wait, "run %s: no wait step: %s", run.ID, describeSteps(run)) {
			assert.Equal(t, "wait", wait.Kind)
			assert.Equal(t, "completed", wait.Status, "run %s: wait step", run.ID)
			// A second delivery would have overwritten the recorded event.
			assert.Equal(t, got, eventIDOf(t, wait.Output), "run %s: the wait step records another event than the one the run resumed with", run.ID)
		}
		if s := stepByID(run, "after"); assert.NotNil(t, s, "run %s: no step after the wait: %s", run.ID, describeSteps(run)) {
			assert.Equal(t, "completed", s.Status)
		}
		rows := after[run.ID]
		if assert.Len(t, rows, 1, "run %s: the step after the wait committed %d times: %v", run.ID, len(rows), rows) {
			assert.Equal(t, got, rows[0].detail, "run %s: the step after the wait saw another event than the run returned", run.ID)
		}
	}
	assert.Len(t, after, nRuns, "runs whose step after the wait ran")
	t.Logf("sender 0 won %d rounds, sender 1 won %d", won[0], won[1])

	assert.Zero(t, e.count(`SELECT count(*) FROM {{schema}}.durable_wait`), "wait rows left")
	assert.Equal(t, 2*nRuns, e.count(`SELECT count(*) FROM {{schema}}.durable_event WHERE name = 'race/go'`), "race/go events stored")
	assertNoTxConflicts(t, w)
}

// TestWaitTimeoutRacesEvent has 30 runs (in a worker process) wait 1 s for
// a "tmo/go" event with their key, and sends each its event at its wait's
// timeout give or take some jitter (most within ±20 ms, some 250-400 ms
// before or 150-300 ms after). Each run must end with exactly one outcome, recorded once by
// the StepTx after the wait: it got its event (the wait step is completed
// with that event, and no wait row is left), or it timed out (the step is
// timed_out, with no event: the late event was not delivered). Never both,
// never stuck. Where the timing decides, the outcome must follow it: an
// event committed before the timeout is delivered; one whose transaction
// began after it is not.
func TestWaitTimeoutRacesEvent(t *testing.T) {
	t.Parallel()
	const nRuns = 30
	const timeout = time.Second
	// Sends decided by timing must be clear of the timeout by this much
	// (the database stores times to the microsecond).
	const margin = 2 * time.Millisecond
	e := setup(t, 4)
	e.createCoordTables()
	w := e.startWorker("W", workerOpts{recoverAfter: 5 * time.Second, args: []string{"-functions", "tmo-waiter", "-wait-timeout", timeout.String()}})
	w.waitReady(60 * time.Second)

	c := e.sendOnlyClient()
	sender := e.senderClient(8)
	tag := randomTag()
	keys := make([]string, nRuns)
	starts := make([]durable.Event, nRuns)
	for i := range starts {
		keys[i] = fmt.Sprintf("%s-%02d", tag, i)
		starts[i] = durable.Event{Name: "tmo/start", Data: M{"k": keys[i]}}
	}
	runIDs := e.startRuns(c, starts)
	index := map[string]int{}
	for i, id := range runIDs {
		index[id] = i
	}

	// As each run's wait is seen, schedule its event at the wait's
	// timeout (the step's wake_at) plus its offset.
	type plan struct {
		wake       time.Time
		offset     time.Duration
		eventID    string
		start, end time.Time
		err        error
	}
	plans := make([]plan, nRuns)
	seen := make([]bool, nRuns)
	var senders sync.WaitGroup
	defer senders.Wait()
	waitFor(t, 60*time.Second, "every run to wait for tmo/go", func() (bool, error) {
		rows, err := e.pool.Query(e.ctx, e.sql(`SELECT run_id, wake_at FROM {{schema}}.durable_step
			WHERE key = 'wait' AND status = 'waiting'`))
		if err != nil {
			return false, err
		}
		var runID string
		var wake time.Time
		_, err = pgx.ForEachRow(rows, []any{&runID, &wake}, func() error {
			i, ok := index[runID]
			if !ok || seen[i] {
				return nil
			}
			seen[i] = true
			// Two in three within ±20 ms of the timeout, where the race is;
			// the others clearly before (250-400 ms) or after (150-300 ms).
			offset := time.Duration(rand.Int64N(int64(40*time.Millisecond))) - 20*time.Millisecond
			switch i % 6 {
			case 0:
				offset = -250*time.Millisecond - time.Duration(rand.Int64N(int64(150*time.Millisecond)))
			case 3:
				offset = 150*time.Millisecond + time.Duration(rand.Int64N(int64(150*time.Millisecond)))
			}
			plans[i] = plan{wake: wake, offset: offset, eventID: fmt.Sprintf("%s-go-%02d", tag, i)}
			senders.Go(func() {
				p := &plans[i]
				time.Sleep(time.Until(p.wake.Add(p.offset))) // the scenario: send at the planned moment
				p.start = time.Now()
				_, p.err = sender.Send(ctxFor(t, 30*time.Second), durable.Event{ID: p.eventID, Name: "tmo/go", Data: M{"k": keys[i]}})
				p.end = time.Now()
			})
			return nil
		})
		if err != nil {
			return false, err
		}
		for _, s := range seen {
			if !s {
				return false, nil
			}
		}
		return true, nil
	})
	senders.Wait()
	for i, p := range plans {
		require.NoError(t, p.err, "run %s: sending its event", runIDs[i])
	}

	runs := waitRunsDone(t, c, runIDs, time.Now().Add(60*time.Second))
	after := e.outcomesByRun("tmo-waiter")
	var got, timedOut, before, late, straddling int
	type line struct {
		at   time.Duration
		text string
	}
	var lines []line
	for i, run := range runs {
		p := plans[i]
		// What the timing decides: the send committed before the timeout
		// (the event must be delivered), or began after it (it must not).
		mustDeliver := p.end.Before(p.wake.Add(-margin))
		mustNot := p.start.After(p.wake.Add(margin))
		switch {
		case mustDeliver:
			before++
		case mustNot:
			late++
		default:
			straddling++
		}
		if !assert.Equal(t, durable.RunCompleted, run.Status, "run %s: error %q, steps %s", run.ID, run.Error, describeSteps(run)) {
			continue
		}
		out := jsonString(t, run.Output)
		rows := after[run.ID]
		if assert.Len(t, rows, 1, "run %s: the step after the wait committed %d times: %v", run.ID, len(rows), rows) {
			assert.Equal(t, out, rows[0].detail, "run %s: the step after the wait recorded another outcome than the run returned", run.ID)
		}
		wait := stepByID(run, "wait")
		if !assert.NotNil(t, wait, "run %s: no wait step: %s", run.ID, describeSteps(run)) {
			continue
		}
		switch out {
		case "timeout":
			timedOut++
			assert.Equal(t, "timed_out", wait.Status, "run %s timed out but its wait step is %s", run.ID, wait.Status)
			assert.True(t, len(wait.Output) == 0 || string(wait.Output) == "null", "run %s timed out but its wait step holds an event: %s", run.ID, wait.Output)
			assert.False(t, mustDeliver, "run %s timed out although its event was committed %s before the timeout", run.ID, p.wake.Sub(p.end))
		case "event:" + p.eventID:
			got++
			assert.Equal(t, "completed", wait.Status, "run %s got its event but its wait step is %s", run.ID, wait.Status)
			assert.Equal(t, p.eventID, eventIDOf(t, wait.Output), "run %s: wait step output", run.ID)
			assert.False(t, mustNot, "run %s got an event sent %s after its timeout", run.ID, p.start.Sub(p.wake))
		default:
			assert.Fail(t, "unexpected outcome", "run %s: outcome %q (its event is %s)", run.ID, out, p.eventID)
		}
		at := p.start.Sub(p.wake)
		lines = append(lines, line{at, fmt.Sprintf("send began at timeout%+8.1fms, took %5.1fms: %-28s run %s",
			float64(at.Microseconds())/1000, float64(p.end.Sub(p.start).Microseconds())/1000, out, run.ID)})
	}
	sort.Slice(lines, func(a, b int) bool { return lines[a].at < lines[b].at })
	for _, l := range lines {
		t.Log(l.text)
	}
	t.Logf("%d runs got their event, %d timed out; %d events committed before the timeout, %d sent after it, %d straddling it", got, timedOut, before, late, straddling)
	for i, p := range plans {
		if d := p.end.Sub(p.start); d > 900*time.Millisecond {
			t.Logf("run %s: Send took %s (Postgres's deadlock_timeout is 1 s by default)", runIDs[i], d.Round(time.Millisecond))
		}
	}
	assert.Equal(t, nRuns, got+timedOut, "runs with exactly one outcome")
	// Test setup: both outcomes must have been exercised. (Not by timing
	// alone: on a loaded machine a Send can take hundreds of ms, but one
	// that begins well before the timeout still gets its event.)
	assert.NotZero(t, got, "no run got its event (test setup)")
	assert.NotZero(t, timedOut, "no run timed out (test setup)")

	assert.Zero(t, e.count(`SELECT count(*) FROM {{schema}}.durable_wait WHERE run_id = ANY($1)`, runIDs), "wait rows left")
	assert.Equal(t, nRuns, e.count(`SELECT count(*) FROM {{schema}}.durable_event WHERE name = 'tmo/go'`), "tmo/go events stored (delivered or not)")
	// A timeout claimed while the run's event is being delivered must not
	// deadlock with the delivery (one side would fail: the Send, or the
	// run's attempt after the other waited out deadlock_timeout).
	assertNoTxConflicts(t, w)
}
