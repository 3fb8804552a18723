package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// Step layout of the worker's "crashy" function (see worker/main.go).
const (
	crashyTxSteps    = 5
	crashyPlainSteps = crashyTxSteps - 1
)

// createEffectTables creates the tables the worker's "crashy" function
// writes to. They have no unique constraint: duplicates must be visible.
func (e *env) createEffectTables() {
	e.t.Helper()
	for _, tbl := range []string{"effects", "plain_effects"} {
		e.exec(`CREATE TABLE {{schema}}.` + tbl + ` (
			id bigserial PRIMARY KEY,
			run_id text NOT NULL,
			step text NOT NULL,
			worker text NOT NULL,
			at timestamptz NOT NULL DEFAULT clock_timestamp())`)
	}
}

// effectRow is one (run, step) of an effects table with how many times it
// was recorded and by which workers, in order.
type effectRow struct {
	runID, step string
	n           int
	workers     []string
}

func (e *env) effectCounts(table string) map[[2]string]effectRow {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, e.sql(`SELECT run_id, step, count(*), array_agg(worker ORDER BY id)
		FROM {{schema}}.`+table+` GROUP BY run_id, step`))
	require.NoError(e.t, err)
	out := map[[2]string]effectRow{}
	var r effectRow
	_, err = pgx.ForEachRow(rows, []any{&r.runID, &r.step, &r.n, &r.workers}, func() error {
		out[[2]string{r.runID, r.step}] = r
		return nil
	})
	require.NoError(e.t, err)
	return out
}

// sendCrashy sends n "crash/start" events and returns the run each started.
func (e *env) sendCrashy(c *durable.Client, n int) []string {
	e.t.Helper()
	events := make([]durable.Event, n)
	for i := range events {
		events[i] = durable.Event{Name: "crash/start", Data: map[string]any{"n": i}}
	}
	ids, err := c.Send(e.ctx, events...)
	require.NoError(e.t, err)
	require.Len(e.t, ids, n)
	runIDs := make([]string, n)
	for i, id := range ids {
		runs, err := c.RunsForEvent(e.ctx, id)
		require.NoError(e.t, err)
		require.Len(e.t, runs, 1, "event %s must start exactly one run", id)
		runIDs[i] = runs[0].ID
	}
	return runIDs
}

// waitRunsDone waits until every run has ended (by deadline) and returns
// them.
func waitRunsDone(t *testing.T, c *durable.Client, runIDs []string, deadline time.Time) []*durable.Run {
	t.Helper()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	out := make([]*durable.Run, len(runIDs))
	for i, id := range runIDs {
		run, err := c.WaitRun(ctx, id)
		if err != nil && run != nil {
			require.NoError(t, err, "run %s did not end in time; last seen: status=%s error=%q steps=%s", id, run.Status, run.Error, describeSteps(run))
		}
		require.NoError(t, err, "run %s did not end in time", id)
		out[i] = run
	}
	return out
}

func describeSteps(run *durable.Run) string {
	var parts []string
	for _, s := range run.Steps {
		parts = append(parts, fmt.Sprintf("%s:%s/%d", s.ID, s.Status, s.Attempts))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// checkCompletedCrashy asserts that every run completed with all its steps.
func checkCompletedCrashy(t *testing.T, runs []*durable.Run) {
	t.Helper()
	for _, run := range runs {
		if !assert.Equal(t, durable.RunCompleted, run.Status, "run %s: error %q, steps %s", run.ID, run.Error, describeSteps(run)) {
			continue
		}
		var out string
		assert.NoError(t, json.Unmarshal(run.Output, &out))
		assert.Equal(t, "done", out, "run %s output", run.ID)
		assert.Len(t, run.Steps, crashyTxSteps+crashyPlainSteps, "run %s steps: %s", run.ID, describeSteps(run))
		for _, s := range run.Steps {
			assert.Equal(t, "completed", s.Status, "run %s step %s", run.ID, s.ID)
		}
	}
}

// checkTxExactlyOnce asserts that effects holds exactly one row per (run,
// tx step) and nothing else, and returns the rows.
func (e *env) checkTxExactlyOnce(runIDs []string) map[[2]string]effectRow {
	t := e.t
	t.Helper()
	counts := e.effectCounts("effects")
	total := 0
	for _, r := range counts {
		total += r.n
	}
	assert.Equal(t, len(runIDs)*crashyTxSteps, total, "effects rows (StepTx must commit exactly once)")
	assert.Len(t, counts, len(runIDs)*crashyTxSteps, "distinct (run, tx step) in effects")
	for _, runID := range runIDs {
		for i := range crashyTxSteps {
			step := fmt.Sprintf("tx-%d", i)
			r, ok := counts[[2]string{runID, step}]
			if assert.True(t, ok, "run %s: %s has no effect row", runID, step) {
				assert.Equal(t, 1, r.n, "run %s: %s committed %d times (by %v); StepTx must be exactly-once", runID, step, r.n, r.workers)
			}
		}
	}
	return counts
}

// logDistribution logs which worker executed which step of each run.
func logDistribution(t *testing.T, runIDs []string, tx, plain map[[2]string]effectRow) {
	t.Helper()
	for _, runID := range runIDs {
		var parts []string
		for i := range crashyTxSteps {
			k := fmt.Sprintf("tx-%d", i)
			parts = append(parts, fmt.Sprintf("%s=%v", k, tx[[2]string{runID, k}].workers))
			if i < crashyPlainSteps {
				k := fmt.Sprintf("plain-%d", i)
				parts = append(parts, fmt.Sprintf("%s=%v", k, plain[[2]string{runID, k}].workers))
			}
		}
		t.Logf("run %s: %s", runID, strings.Join(parts, " "))
	}
}

// waitForTxOnWorker waits until worker has committed one of the given tx
// steps of some run, and returns that run and step.
func (e *env) waitForTxOnWorker(worker string, steps []string, d time.Duration) (runID, step string) {
	e.t.Helper()
	waitFor(e.t, d, "worker "+worker+" to commit one of "+strings.Join(steps, ","), func() (bool, error) {
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT run_id, step FROM {{schema}}.effects
			WHERE worker = $1 AND step = ANY($2) ORDER BY id DESC LIMIT 1`), worker, steps).Scan(&runID, &step)
		if err == pgx.ErrNoRows {
			return false, nil
		}
		return err == nil, err
	})
	return runID, step
}

// TestCrashRecovery kills a worker process mid-run (SIGKILL) and checks
// that another process resumes its runs after RecoverAfter, that every
// StepTx committed exactly once, and that only the plain step in flight at
// the kill ran again.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	const recoverAfter = 2 * time.Second
	const nRuns = 3
	e := setup(t, 4)
	e.createEffectTables()

	// At most 2 runs per worker, so that A is sure to get at least one
	// of the 3 runs.
	a := e.startWorker("A", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	b := e.startWorker("B", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	a.waitReady(60 * time.Second)
	b.waitReady(60 * time.Second)

	c := e.sendOnlyClient()
	runIDs := e.sendCrashy(c, nRuns)

	// Kill A right after it committed an early tx step of a run: it is
	// then mid-run (the next StepTx holds its transaction for 300 ms).
	victim, step := e.waitForTxOnWorker("A", []string{"tx-0", "tx-1", "tx-2"}, 20*time.Second)
	a.kill()
	killedAt := time.Now()
	t.Logf("killed A after it committed %s of run %s", step, victim)

	runs := waitRunsDone(t, c, runIDs, killedAt.Add(30*time.Second))
	var last time.Time
	for _, run := range runs {
		if run.EndedAt != nil && run.EndedAt.After(last) {
			last = *run.EndedAt
		}
	}
	recovery := last.Sub(killedAt)
	t.Logf("last run completed %s after the kill (RecoverAfter %s)", recovery.Round(time.Millisecond), recoverAfter)

	checkCompletedCrashy(t, runs)
	tx := e.checkTxExactlyOnce(runIDs)
	plain := e.effectCounts("plain_effects")
	logDistribution(t, runIDs, tx, plain)

	// Plain steps are at-least-once, but only the one in flight at the
	// kill (running, or finished and not yet committed) may run again.
	for _, runID := range runIDs {
		twice := []string{}
		for i := range crashyPlainSteps {
			k := fmt.Sprintf("plain-%d", i)
			r := plain[[2]string{runID, k}]
			assert.GreaterOrEqual(t, r.n, 1, "run %s: %s never ran", runID, k)
			assert.LessOrEqual(t, r.n, 2, "run %s: %s ran %d times (by %v)", runID, k, r.n, r.workers)
			if r.n > 1 {
				twice = append(twice, k)
			}
		}
		assert.LessOrEqual(t, len(twice), 1, "run %s: more than one plain step ran twice: %v", runID, twice)
	}
	extra := 0
	for k := range plain {
		if !strings.HasPrefix(k[1], "plain-") {
			extra++
		}
	}
	assert.Zero(t, extra, "unexpected steps in plain_effects")

	// The victim run was resumed by B, after what A had committed.
	assert.Equal(t, []string{"B"}, tx[[2]string{victim, fmt.Sprintf("tx-%d", crashyTxSteps-1)}].workers,
		"the last step of run %s (A was executing it when killed) must have run on B", victim)
	assert.Equal(t, []string{"A"}, tx[[2]string{victim, step}].workers, "run %s: %s", victim, step)

	// Recovery is bounded by RecoverAfter (plus heartbeat/rescue periods
	// and the rest of the run), not by River's own stuck-job rescue.
	assert.Less(t, recovery, recoverAfter+10*time.Second, "runs of the killed worker took too long to recover")
	assert.Greater(t, recovery, time.Duration(0))
}

// TestGracefulStopHandsOver sends SIGTERM to a worker mid-run: Stop must
// return promptly, and the runs it was executing must continue on the other
// worker at once (not after RecoverAfter), with no step executed twice.
func TestGracefulStopHandsOver(t *testing.T) {
	t.Parallel()
	// A rescue would take at least a minute: completing well within it
	// proves the runs were handed over, not recovered.
	const recoverAfter = 60 * time.Second
	const nRuns = 4
	e := setup(t, 4)
	e.createEffectTables()

	a := e.startWorker("A", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	b := e.startWorker("B", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	a.waitReady(60 * time.Second)
	b.waitReady(60 * time.Second)

	c := e.sendOnlyClient()
	sentAt := time.Now()
	runIDs := e.sendCrashy(c, nRuns)

	victim, step := e.waitForTxOnWorker("A", []string{"tx-0", "tx-1"}, 20*time.Second)
	a.signal(syscall.SIGTERM)
	termAt := time.Now()
	t.Logf("SIGTERM to A after it committed %s of run %s", step, victim)

	code, exited := a.waitExit(15 * time.Second)
	require.True(t, exited, "worker A did not exit within 15 s of SIGTERM")
	t.Logf("A exited with code %d, %s after SIGTERM", code, time.Since(termAt).Round(time.Millisecond))
	require.Equal(t, 0, code, "worker A's Stop failed:\n%s", a.out.String())

	runs := waitRunsDone(t, c, runIDs, sentAt.Add(20*time.Second))
	var last time.Time
	for _, run := range runs {
		if run.EndedAt != nil && run.EndedAt.After(last) {
			last = *run.EndedAt
		}
	}
	t.Logf("last run completed %s after SIGTERM", last.Sub(termAt).Round(time.Millisecond))

	checkCompletedCrashy(t, runs)
	tx := e.checkTxExactlyOnce(runIDs)
	plain := e.effectCounts("plain_effects")
	logDistribution(t, runIDs, tx, plain)

	// A graceful stop hands runs over at a step boundary with their
	// finished steps recorded: no plain step runs twice either.
	total := 0
	for _, r := range plain {
		total += r.n
	}
	assert.Equal(t, nRuns*crashyPlainSteps, total, "plain_effects rows")
	for _, runID := range runIDs {
		for i := range crashyPlainSteps {
			k := fmt.Sprintf("plain-%d", i)
			r := plain[[2]string{runID, k}]
			assert.Equal(t, 1, r.n, "run %s: %s ran %d times (by %v); a graceful stop must not repeat finished steps", runID, k, r.n, r.workers)
		}
	}

	// The run A was executing was finished by B.
	lastKey := [2]string{victim, fmt.Sprintf("tx-%d", crashyTxSteps-1)}
	assert.Equal(t, []string{"B"}, tx[lastKey].workers, "the last step of run %s (in flight on A at SIGTERM) must run on B", victim)
	assert.Equal(t, []string{"A"}, tx[[2]string{victim, step}].workers, "run %s: %s", victim, step)

	// No rescue was needed: a rescue could not happen before RecoverAfter.
	assert.Less(t, last.Sub(sentAt), 20*time.Second)
}
