package integration_test

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// Flow control across processes: the worker's "slotted" and "batcher"
// functions (worker/flow.go).

// dbNow is the database's clock, which stamps the marks.
func (e *env) dbNow() time.Time {
	e.t.Helper()
	var now time.Time
	require.NoError(e.t, e.pool.QueryRow(e.ctx, "SELECT clock_timestamp()").Scan(&now))
	return now
}

// mark is a row of the marks table.
type mark struct {
	id                  int64
	runID, what, worker string
	at                  time.Time
}

func (e *env) marks(what ...string) []mark {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT id, run_id, what, worker, at FROM {{schema}}.marks WHERE what = ANY($1) ORDER BY id`), what)
	require.NoError(e.t, err)
	var out []mark
	var m mark
	_, err = pgx.ForEachRow(rows, []any{&m.id, &m.runID, &m.what, &m.worker, &m.at}, func() error {
		out = append(out, m)
		return nil
	})
	require.NoError(e.t, err)
	return out
}

// TestConcurrencySlotsOfAKilledProcessComeBack runs "slotted" (Concurrency
// Limit 1) on two workers. A run's attempt on A holds the slot for a
// minute; while A lives, no other attempt may start on either worker. A is
// then killed (SIGKILL): its slot must come back once A's heartbeat is
// older than A's RecoverAfter (2 s), and B must complete the waiting runs,
// one attempt at a time.
//
// B's own RecoverAfter is 20 s, so B rescues the run A was executing only
// after 20 s: the waiting runs must have completed before that, which shows
// that they got the dead process's slot, not the slot the rescued run takes
// back when it resumes.
func TestConcurrencySlotsOfAKilledProcessComeBack(t *testing.T) {
	t.Parallel()
	const (
		holderRecoverAfter   = 2 * time.Second
		survivorRecoverAfter = 20 * time.Second
	)
	e := setup(t, 4)
	e.createCoordTables()
	fns := []string{"-functions", "slotted"}

	a := e.startWorker("A", workerOpts{recoverAfter: holderRecoverAfter, maxWorkers: 4, args: fns})
	a.waitReady(60 * time.Second)
	c := e.sendOnlyClient()

	// The first run holds the slot for a minute on A (a re-entry, after
	// the crash, only 300 ms).
	first := e.startRuns(c, []durable.Event{{Name: "slot/start", Data: M{"hold_ms": 60000, "rehold_ms": 300}}})[0]
	waitFor(t, 30*time.Second, "the first run to enter its work step on A", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.marks WHERE run_id = $1 AND what = 'enter'`), first).Scan(&n)
		return n > 0, err
	})

	// B starts, and both workers see the other runs: neither may start one
	// while A lives.
	b := e.startWorker("B", workerOpts{recoverAfter: survivorRecoverAfter, maxWorkers: 4, args: fns})
	b.waitReady(60 * time.Second)
	others := e.startRuns(c, []durable.Event{
		{Name: "slot/start", Data: M{"hold_ms": 300, "rehold_ms": 300}},
		{Name: "slot/start", Data: M{"hold_ms": 300, "rehold_ms": 300}},
	})
	enters := e.sql(`SELECT count(*) FROM {{schema}}.marks WHERE what = 'enter'`)
	never(t, 1500*time.Millisecond, "a second attempt entering while the slot's holder is alive", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, enters).Scan(&n)
		return n > 1, err
	})
	for _, id := range others {
		run, err := c.GetRun(e.ctx, id)
		require.NoError(t, err)
		require.Equal(t, durable.RunQueued, run.Status, "run %s must wait for the slot", id)
	}

	a.kill()
	killedAt := time.Now()
	deadAt := e.dbNow() // A is dead by then (kill waits for its exit)

	// The waiting runs complete on B well before B rescues A's run.
	waiting := waitRunsDone(t, c, others, killedAt.Add(17*time.Second))
	var last time.Time
	for _, run := range waiting {
		require.Equal(t, durable.RunCompleted, run.Status, "run %s: error %q, steps %s", run.ID, run.Error, describeSteps(run))
		if run.EndedAt.After(last) {
			last = *run.EndedAt
		}
	}
	t.Logf("the waiting runs completed %s after the kill (A's RecoverAfter %s)", last.Sub(killedAt).Round(time.Millisecond), holderRecoverAfter)

	// A's run resumes on B once B's RecoverAfter has passed.
	resumed := waitRunsDone(t, c, []string{first}, killedAt.Add(survivorRecoverAfter+30*time.Second))[0]
	require.Equal(t, durable.RunCompleted, resumed.Status, "run %s: error %q, steps %s", first, resumed.Error, describeSteps(resumed))
	t.Logf("A's run completed %s after the kill", resumed.EndedAt.Sub(killedAt).Round(time.Millisecond))
	all := append([]string{first}, others...)
	for _, id := range all {
		run, err := c.GetRun(e.ctx, id)
		require.NoError(t, err)
		require.Equal(t, `"done"`, string(run.Output), "run %s", id)
	}

	// Each run's "done" committed once, on B.
	done := e.outcomesByRun("slotted")
	for _, id := range all {
		if assert.Len(t, done[id], 1, "run %s: outcomes %v", id, done[id]) {
			assert.Equal(t, "B", done[id][0].worker, "run %s", id)
		}
	}

	// The attempts, from their marks: [enter, exit] on a live worker; A's,
	// which never exited, until A was dead. No two may overlap.
	type interval struct {
		runID, worker string
		from, to      time.Time
	}
	var ivs []interval
	open := map[[2]string]*mark{}
	for _, m := range e.marks("enter", "exit") {
		k := [2]string{m.runID, m.worker}
		switch m.what {
		case "enter":
			require.Nil(t, open[k], "run %s entered twice on %s without exiting", m.runID, m.worker)
			open[k] = &m
		case "exit":
			en := open[k]
			require.NotNil(t, en, "run %s exited on %s without entering", m.runID, m.worker)
			ivs = append(ivs, interval{m.runID, m.worker, en.at, m.at})
			delete(open, k)
		}
	}
	require.Len(t, open, 1, "only A's attempt may lack an exit: %v", open)
	for k, en := range open {
		require.Equal(t, [2]string{first, "A"}, k, "an attempt never exited")
		ivs = append(ivs, interval{k[0], k[1], en.at, deadAt})
	}
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].from.Before(ivs[j].from) })
	for i := 1; i < len(ivs); i++ {
		p, n := ivs[i-1], ivs[i]
		assert.False(t, n.from.Before(p.to), "attempts overlapped (Limit 1): run %s on %s [%s, %s] and run %s on %s [%s, %s]",
			p.runID, p.worker, p.from.Format(time.StampMicro), p.to.Format(time.StampMicro),
			n.runID, n.worker, n.from.Format(time.StampMicro), n.to.Format(time.StampMicro))
	}
	// A's attempt first, then the two waiting runs on B, then A's run
	// resumed on B.
	require.Len(t, ivs, len(all)+1, "attempts: %v", ivs)
	assert.Equal(t, interval{first, "A", ivs[0].from, deadAt}, ivs[0])
	for _, iv := range ivs[1:3] {
		assert.Contains(t, others, iv.runID)
		assert.Equal(t, "B", iv.worker, "run %s", iv.runID)
	}
	assert.Equal(t, first, ivs[3].runID)
	assert.Equal(t, "B", ivs[3].worker)
	t.Logf("B's first attempt began %s after A died", ivs[1].from.Sub(deadAt).Round(time.Millisecond))
}

// TestBatchEventsLandInExactlyOneBatchAcrossCrashes sends 150 events to
// "batcher" (Batch MaxSize 5, Timeout 300 ms) from four goroutines, one
// event per Send, while two workers execute the batches; one is killed
// (SIGKILL) midway, inside a batch's StepTx after it committed another
// batch, while events are being sent, and a third is started. Every
// event must end in exactly one completed batch of 1..5 events, recorded
// once (batch_effects has UNIQUE(event_id), and "batcher" fails its run on
// a duplicate), in the order each sender sent them.
func TestBatchEventsLandInExactlyOneBatchAcrossCrashes(t *testing.T) {
	t.Parallel()
	const (
		nEvents, nSenders = 150, 4
		maxSize           = 5
	)
	e := setup(t, 8)
	e.createCoordTables()
	e.exec(`CREATE TABLE {{schema}}.batch_effects (
		id bigserial PRIMARY KEY,
		event_id text NOT NULL UNIQUE,
		run_id text NOT NULL,
		worker text NOT NULL,
		pos integer NOT NULL,
		at timestamptz NOT NULL DEFAULT clock_timestamp())`)

	opts := workerOpts{recoverAfter: 2 * time.Second, maxWorkers: 2, args: []string{"-functions", "batcher"}}
	a := e.startWorker("A", opts)
	b := e.startWorker("B", opts)
	a.waitReady(60 * time.Second)
	b.waitReady(60 * time.Second)
	c := e.sendOnlyClient()

	// Each sender sends its events in order (i = sender, sender+4, ...),
	// the last quarter of them only from the moment of the kill, so that
	// sending goes on before, during and after it.
	type sentEvent struct{ sender, seq int }
	var (
		mu      sync.Mutex
		sent    = map[string]sentEvent{}
		nSent   atomic.Int32
		release = make(chan struct{})
		wg      sync.WaitGroup
		sendErr = make(chan error, nSenders)
	)
	for g := range nSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq := 0
			for i := g; i < nEvents; i += nSenders {
				if i >= nEvents*3/4 {
					<-release
				}
				ids, err := c.Send(e.ctx, durable.Event{Name: "batch/item", Data: M{"sender": g, "seq": seq, "hold_ms": 400}})
				if err == nil && len(ids) != 1 {
					err = fmt.Errorf("Send returned %d IDs", len(ids))
				}
				if err != nil {
					sendErr <- fmt.Errorf("sender %d, event %d: %w", g, seq, err)
					return
				}
				mu.Lock()
				sent[ids[0]] = sentEvent{g, seq}
				mu.Unlock()
				nSent.Add(1)
				seq++
				// Pacing: about 13 events a second in all, so that many
				// batches end by their Timeout, some of them while an
				// event is being added (the claim closes the collection).
				time.Sleep(rand.N(600 * time.Millisecond))
			}
		}()
	}
	releaseSenders := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseSenders) // if the test fails early

	// Kill A right after it entered a batch's StepTx (its rows inserted
	// or about to be, its transaction open for 400 ms more), once it has
	// committed a batch and a third of the events are sent.
	waitFor(t, 60*time.Second, "a third of the events to be sent", func() (bool, error) {
		return nSent.Load() >= nEvents/3, nil
	})
	waitFor(t, 60*time.Second, "worker A to commit a batch", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.batch_effects WHERE worker = 'A'`)).Scan(&n)
		return n > 0, err
	})
	var since int64
	require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT coalesce(max(id), 0) FROM {{schema}}.marks`)).Scan(&since))
	var victim string
	waitFor(t, 30*time.Second, "worker A to enter another batch", func() (bool, error) {
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT run_id FROM {{schema}}.marks WHERE worker = 'A' AND what = 'record-enter' AND id > $1 ORDER BY id LIMIT 1`), since).Scan(&victim)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	releaseSenders()
	a.kill()
	t.Logf("killed A inside batch run %s, %d events sent, A had entered %d batches and committed %d",
		victim, nSent.Load(), e.count(`SELECT count(*) FROM {{schema}}.marks WHERE worker = 'A'`),
		e.count(`SELECT count(DISTINCT run_id) FROM {{schema}}.batch_effects WHERE worker = 'A'`))
	cw := e.startWorker("C", opts)
	cw.waitReady(60 * time.Second)

	wg.Wait()
	close(sendErr)
	for err := range sendErr {
		require.NoError(t, err)
	}
	require.Equal(t, nEvents, len(sent), "events sent")
	sentAll := time.Now()

	// Wait until every event's run has completed: RunsForEvent must never
	// show an event in two runs, nor a run that ended otherwise.
	runOf := map[string]*durable.Run{} // event -> its completed run
	deadline := sentAll.Add(60 * time.Second)
	for len(runOf) < nEvents {
		for id := range sent {
			if runOf[id] != nil {
				continue
			}
			runs, err := c.RunsForEvent(e.ctx, id)
			require.NoError(t, err)
			require.LessOrEqual(t, len(runs), 1, "event %s is in more than one run: %v", id, runs)
			if len(runs) == 0 {
				continue
			}
			run := runs[0]
			if run.Status.Done() {
				require.Equal(t, durable.RunCompleted, run.Status, "run %s (event %s): error %q", run.ID, id, run.Error)
				runOf[id] = run
			}
		}
		if len(runOf) == nEvents {
			break
		}
		if time.Now().After(deadline) {
			var missing []string
			for id := range sent {
				if runOf[id] == nil {
					runs, _ := c.RunsForEvent(e.ctx, id)
					desc := "no run"
					if len(runs) > 0 {
						desc = fmt.Sprintf("run %s %s", runs[0].ID, runs[0].Status)
					}
					missing = append(missing, id+": "+desc)
				}
			}
			require.FailNowf(t, "timed out", "%d of %d events have no completed run 60 s after sending ended: %s", len(missing), nEvents, strings.Join(missing, "; "))
		}
		time.Sleep(100 * time.Millisecond) // the poll interval
	}
	t.Logf("every event's run completed %s after the last send", time.Since(sentAll).Round(time.Millisecond))

	// The runs, read again (with their steps) now that they ended.
	runs := map[string]*durable.Run{}
	for _, r := range runOf {
		if runs[r.ID] == nil {
			run, err := c.GetRun(e.ctx, r.ID)
			require.NoError(t, err)
			runs[r.ID] = run
		}
	}

	// The batch_effects rows, by run in pos order.
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT event_id, run_id, worker FROM {{schema}}.batch_effects ORDER BY run_id, pos`))
	require.NoError(t, err)
	effects := map[string][]string{} // run -> its events as the function saw them
	effectRun := map[string]string{} // event -> run
	workers := map[string]string{}   // run -> worker that committed it
	var evID, runID, worker string
	_, err = pgx.ForEachRow(rows, []any{&evID, &runID, &worker}, func() error {
		effects[runID] = append(effects[runID], evID)
		effectRun[evID] = runID
		workers[runID] = worker
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, nEvents, len(effectRun), "batch_effects rows")

	seen := map[string]string{} // event -> run, from the runs' EventIDs
	sizes := map[int]int{}
	byWorker := map[string]int{}
	for id, run := range runs {
		assert.Equal(t, durable.RunCompleted, run.Status, "run %s", id)
		n := len(run.EventIDs)
		sizes[n]++
		byWorker[workers[id]]++
		assert.True(t, n >= 1 && n <= maxSize, "run %s has %d events", id, n)
		assert.Equal(t, fmt.Sprint(n), string(run.Output), "run %s: the function saw %s events, the run has %d", id, run.Output, n)
		assert.Equal(t, run.EventIDs, effects[id], "run %s: Input.Events must be the run's events, in order", id)
		for _, ev := range run.EventIDs {
			if prev, dup := seen[ev]; dup {
				assert.Failf(t, "event in two batches", "event %s is in runs %s and %s", ev, prev, id)
			}
			seen[ev] = id
			_, ok := sent[ev]
			assert.True(t, ok, "run %s has event %s, which was not sent", id, ev)
			assert.Equal(t, id, runOf[ev].ID, "RunsForEvent(%s)", ev)
		}
		// Arrival order: a sender's events (each sent after the last
		// committed) appear in the order it sent them.
		last := map[int]int{}
		for _, ev := range run.EventIDs {
			s := sent[ev]
			if prev, ok := last[s.sender]; ok {
				assert.Greater(t, s.seq, prev, "run %s: sender %d's events out of order: %v", id, s.sender, run.EventIDs)
			}
			last[s.sender] = s.seq
		}
	}
	assert.Equal(t, nEvents, len(seen), "the runs' events must be exactly the events sent")
	for ev := range sent {
		assert.Contains(t, seen, ev, "event %s is in no run", ev)
		assert.Equal(t, runOf[ev].ID, effectRun[ev], "event %s recorded by another run than its own", ev)
	}
	var dist []string
	for _, k := range slices.Sorted(maps.Keys(sizes)) {
		dist = append(dist, fmt.Sprintf("%d×%d", sizes[k], k))
	}
	t.Logf("%d batches (%s); committed by worker: %v; victim run %s committed by %s",
		len(runs), strings.Join(dist, " "), byWorker, victim, workers[victim])
	assert.NotEqual(t, "A", workers[victim], "A was killed inside run %s's StepTx: it cannot have committed it", victim)
	assertNoTxConflicts(t, b, cw)
}

// TestBufferedStepsCrashReRunsOnlyUncommittedOnes: "buffered" commits its
// plain steps five at a time. A is killed (SIGKILL) while step s7 runs:
// s0..s4 were committed together (at s5's boundary), s5 and s6 were still
// buffered. B finishes the run: s0..s4 ran once, s5, s6 and s7 twice, and
// the run records all eight steps once.
func TestBufferedStepsCrashReRunsOnlyUncommittedOnes(t *testing.T) {
	t.Parallel()
	e := setup(t, 4)
	e.createCoordTables()
	fns := []string{"-functions", "buffered"}
	a := e.startWorker("A", workerOpts{recoverAfter: 2 * time.Second, maxWorkers: 4, args: fns})
	a.waitReady(60 * time.Second)
	c := e.sendOnlyClient()
	runID := e.startRuns(c, []durable.Event{{Name: "buffer/start", Data: M{"hold_ms": 60000}}})[0]
	waitFor(t, 30*time.Second, "step s7 to run on A", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.marks WHERE run_id = $1 AND what = 's7'`), runID).Scan(&n)
		return n > 0, err
	})
	var committed int
	require.NoError(t, e.pool.QueryRow(e.ctx, e.sql(`SELECT count(*) FROM {{schema}}.durable_step WHERE run_id = $1`), runID).Scan(&committed))
	require.Equal(t, 5, committed, "s0..s4 committed together, s5 and s6 buffered")
	a.kill()
	b := e.startWorker("B", workerOpts{recoverAfter: 2 * time.Second, maxWorkers: 4, args: fns})
	b.waitReady(60 * time.Second)
	run := waitRunsDone(t, c, []string{runID}, time.Now().Add(60*time.Second))[0]
	require.Equal(t, durable.RunCompleted, run.Status)
	require.Len(t, run.Steps, 8)
	counts := map[string]int{}
	for _, m := range e.marks("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7") {
		counts[m.what]++
	}
	require.Equal(t, map[string]int{"s0": 1, "s1": 1, "s2": 1, "s3": 1, "s4": 1, "s5": 2, "s6": 2, "s7": 2}, counts)
}
