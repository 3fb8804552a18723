package integration_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFrozenWorkerCannotRecordSteps freezes a worker (SIGSTOP) in the
// middle of a run for longer than RecoverAfter, so that another worker
// takes the run over and finishes it, then thaws it (SIGCONT): the frozen
// worker's StepTx, still open, must not commit (its writes are fenced by the
// run's owner token), so every StepTx effect happens exactly once.
func TestFrozenWorkerCannotRecordSteps(t *testing.T) {
	t.Parallel()
	const recoverAfter = 2 * time.Second
	e := setup(t, 4)
	e.createEffectTables()

	a := e.startWorker("A", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	a.waitReady(60 * time.Second)
	c := e.sendOnlyClient()
	runIDs := e.sendCrashy(c, 1)

	// Freeze A just after it committed tx-0: it is inside tx-1's StepTx
	// (which holds its transaction open for 300 ms).
	victim, step := e.waitForTxOnWorker("A", []string{"tx-0"}, 20*time.Second)
	a.signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	t.Logf("froze A after it committed %s of run %s", step, victim)

	b := e.startWorker("B", workerOpts{recoverAfter: recoverAfter, maxWorkers: 2})
	b.waitReady(60 * time.Second)
	runs := waitRunsDone(t, c, runIDs, frozenAt.Add(40*time.Second))
	checkCompletedCrashy(t, runs)
	t.Logf("B finished the run %s after A froze", time.Since(frozenAt).Round(time.Millisecond))

	// Thaw A and let it stop gracefully: whatever it had in flight
	// finishes (and must fail its fenced commit) before it exits.
	a.signal(syscall.SIGCONT)
	a.signal(syscall.SIGTERM)
	code, exited := a.waitExit(20 * time.Second)
	require.True(t, exited, "A did not exit after SIGCONT+SIGTERM")
	t.Logf("A exited with %d", code)

	tx := e.checkTxExactlyOnce(runIDs)
	for i := 1; i < crashyTxSteps; i++ {
		k := fmt.Sprintf("tx-%d", i)
		assert.Equal(t, []string{"B"}, tx[[2]string{victim, k}].workers, "run %s: %s must have been recorded by B only", victim, k)
	}
	run, err := c.GetRun(e.ctx, victim)
	require.NoError(t, err)
	assert.Equal(t, "completed", string(run.Status))
}
