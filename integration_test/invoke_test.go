package integration_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// TestChildCompletionCrashParentResumes kills (SIGKILL) the process that
// resumes parent runs after their invoked children completed, before the
// parents record anything past the invoke, and checks that another process
// finishes each parent exactly once with its child's result, the child
// having run exactly once.
//
// Where the kill lands, deterministically: the parent function
// ("inv-parent") is defined only in worker A, the child ("inv-child") only
// in worker B. B runs each child to completion (its last step, a StepTx,
// commits with the child's end, which delivers the result to the parent's
// invoke step and wakes the parent); A then resumes the parent, replays the
// invoke (completed) and enters the StepTx "post": it inserts its effect in
// the step's transaction, writes the mark "post-entered" through another
// connection, and, run with -block-post-invoke, blocks there for good. The
// test waits for A's mark for every parent, checks that the children are
// completed and the parents' invoke steps hold their results while nothing
// past them is recorded, and only then kills A: the kill cannot land
// earlier (no mark yet) or later (A never gets past the block). So each
// parent is left with its child completed and its resumption in flight,
// uncommitted, in a dead process. Worker C (both functions, no block),
// started after the kill, must recover the parents once A's heartbeat is
// older than RecoverAfter.
func TestChildCompletionCrashParentResumes(t *testing.T) {
	t.Parallel()
	const nParents = 3
	const recoverAfter = 2 * time.Second
	e := setup(t, 4)
	e.createCoordTables()

	b := e.startWorker("B", workerOpts{recoverAfter: recoverAfter, args: []string{"-functions", "inv-child"}})
	b.waitReady(60 * time.Second) // inv-child must be registered before a parent invokes it
	a := e.startWorker("A", workerOpts{recoverAfter: recoverAfter, args: []string{
		"-functions", "inv-parent", "-block-post-invoke", "-max-conns", "12"}})
	a.waitReady(60 * time.Second)

	c := e.sendOnlyClient()
	starts := make([]durable.Event, nParents)
	for i := range starts {
		starts[i] = durable.Event{Name: "inv/start", Data: M{"n": i}}
	}
	parents := e.startRuns(c, starts)

	waitFor(t, 60*time.Second, "A to block in the post-invoke step of every parent", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(e.ctx, e.sql(`SELECT count(DISTINCT run_id) FROM {{schema}}.marks
			WHERE what = 'post-entered' AND worker = 'A' AND run_id = ANY($1)`), parents).Scan(&n)
		return n == nParents, err
	})

	// The state the kill leaves behind.
	children := make([]string, nParents)
	for i, id := range parents {
		run, err := c.GetRun(e.ctx, id)
		require.NoError(t, err)
		require.Equal(t, durable.RunRunning, run.Status, "parent %s before the kill: %s", id, describeSteps(run))
		require.Len(t, run.Steps, 1, "parent %s before the kill: only the invoke step is recorded: %s", id, describeSteps(run))
		call := run.Steps[0]
		require.Equal(t, "call", call.ID)
		require.Equal(t, "invoke", call.Kind)
		require.Equal(t, "completed", call.Status, "parent %s: invoke step before the kill", id)
		require.NotEmpty(t, call.ChildRunID)
		children[i] = call.ChildRunID
		child, err := c.GetRun(e.ctx, call.ChildRunID)
		require.NoError(t, err)
		require.Equal(t, durable.RunCompleted, child.Status, "child %s before the kill", child.ID)
		want := fmt.Sprintf(`"child-%d"`, i)
		require.JSONEq(t, want, string(child.Output), "child %s", child.ID)
		require.JSONEq(t, want, string(call.Output), "parent %s: the invoke step holds the child's result", id)
	}
	require.Zero(t, e.count(`SELECT count(*) FROM {{schema}}.outcomes WHERE fn = 'inv-parent'`),
		"a post-invoke StepTx committed before the kill (A must be blocked inside it)")

	a.kill()
	killedAt := time.Now()
	t.Logf("killed A with %d parents blocked after their children completed", nParents)
	cw := e.startWorker("C", workerOpts{recoverAfter: recoverAfter, args: []string{"-functions", "inv-parent,inv-child"}})
	cw.waitReady(60 * time.Second)

	runs := waitRunsDone(t, c, parents, killedAt.Add(60*time.Second))
	t.Logf("parents completed %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	post := e.outcomesByRun("inv-parent")
	childTx := e.outcomesByRun("inv-child")
	for i, run := range runs {
		childRes := fmt.Sprintf("child-%d", i)
		if assert.Equal(t, durable.RunCompleted, run.Status, "parent %s: error %q, steps %s", run.ID, run.Error, describeSteps(run)) {
			assert.JSONEq(t, fmt.Sprintf(`"parent(%s)"`, childRes), string(run.Output), "parent %s output", run.ID)
		}
		if assert.Len(t, run.Steps, 2, "parent %s steps: %s", run.ID, describeSteps(run)) {
			assert.Equal(t, "call", run.Steps[0].ID)
			assert.Equal(t, "completed", run.Steps[0].Status)
			assert.Equal(t, children[i], run.Steps[0].ChildRunID, "parent %s: invoke step's child", run.ID)
			assert.Equal(t, "post", run.Steps[1].ID)
			assert.Equal(t, "completed", run.Steps[1].Status)
		}
		// The post-invoke StepTx committed exactly once, on C (A's
		// transaction died with it).
		if rows := post[run.ID]; assert.Len(t, rows, 1, "parent %s: post-invoke StepTx committed %d times: %v", run.ID, len(rows), rows) {
			assert.Equal(t, "C", rows[0].worker, "parent %s: post-invoke StepTx", run.ID)
			assert.Equal(t, childRes, rows[0].detail, "parent %s: post-invoke StepTx saw another child result", run.ID)
		}
		// Exactly one child, which ran (its StepTx committed) once, on B.
		var kids []string
		rows, err := e.pool.Query(e.ctx, e.sql(`SELECT id FROM {{schema}}.durable_run WHERE parent_run_id = $1`), run.ID)
		require.NoError(t, err)
		for rows.Next() {
			var id string
			require.NoError(t, rows.Scan(&id))
			kids = append(kids, id)
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, []string{children[i]}, kids, "parent %s: child runs", run.ID)
		if rows := childTx[children[i]]; assert.Len(t, rows, 1, "child %s: its StepTx committed %d times: %v", children[i], len(rows), rows) {
			assert.Equal(t, "B", rows[0].worker)
			assert.Equal(t, childRes, rows[0].detail)
		}
		child, err := c.GetRun(e.ctx, children[i])
		require.NoError(t, err)
		assert.Equal(t, durable.RunCompleted, child.Status, "child %s", child.ID)
		assert.Equal(t, run.ID, child.ParentRunID, "child %s", child.ID)
	}
	assert.Len(t, post, nParents, "parents whose post-invoke StepTx committed")
	assert.Len(t, childTx, nParents, "children whose StepTx committed")
	assert.Equal(t, nParents, e.count(`SELECT count(*) FROM {{schema}}.durable_run WHERE function_id = 'inv-child'`), "child runs")
	// A was inside every post-invoke step when it died (once per parent);
	// C went through them again.
	assert.Equal(t, nParents, e.count(`SELECT count(*) FROM {{schema}}.marks WHERE worker = 'A'`), "A's post-invoke entries")
	assert.Equal(t, nParents, e.count(`SELECT count(*) FROM {{schema}}.marks WHERE worker = 'C'`), "C's post-invoke entries")
	assert.Zero(t, e.count(`SELECT count(*) FROM {{schema}}.durable_wait`), "wait rows left")
	assertNoTxConflicts(t, a, b, cw)
}
