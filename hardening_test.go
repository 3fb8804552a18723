package durable_test

import (
	"context"
	"errors"
	"log/slog"
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

// logCapture is a slog handler that keeps every record's message.
type logCapture struct {
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newLogCapture() *logCapture {
	return &logCapture{mu: &sync.Mutex{}, lines: &[]string{}}
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.mu.Lock()
	*h.lines = append(*h.lines, b.String())
	h.mu.Unlock()
	return nil
}
func (h *logCapture) WithAttrs(a []slog.Attr) slog.Handler {
	return &logCapture{mu: h.mu, lines: h.lines, attrs: append(h.attrs, a...)}
}
func (h *logCapture) WithGroup(string) slog.Handler { return h }

// count returns how many captured lines contain s.
func (h *logCapture) count(s string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, l := range *h.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func TestStepOutputRefusedByPostgresFailsTheStep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "nul", Retries: durable.Ptr(1)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			out, err := durable.Step(ctx, "bad", func(ctx context.Context) (string, error) {
				calls.Add(1)
				return "a\x00b", nil // jsonb refuses \u0000 (SQLSTATE 22P05)
			})
			if err != nil {
				return "", err
			}
			return durable.Step(ctx, "next", func(ctx context.Context) (string, error) { return out, nil })
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "nul", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, `step "bad" failed after 2 attempt(s)`)
	require.Contains(t, run.Error, "could not be stored")
	require.Equal(t, int32(2), calls.Load(), "retried like any step error, then failed")
	require.Len(t, run.Steps, 1)
	require.Equal(t, "failed", run.Steps[0].Status)
}

// failStepInserts makes inserts of the step key into the schema's
// durable_step table fail with SQLSTATE code while the returned switch is
// on: a fault injected at the statement, in Postgres itself.
func failStepInserts(t *testing.T, b *bundle, key, code string) (off func()) {
	t.Helper()
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE `+b.schema+`.fault (on_ boolean NOT NULL)`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `INSERT INTO `+b.schema+`.fault VALUES (true)`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `CREATE FUNCTION `+b.schema+`.fault_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key = '`+key+`' AND NEW.status = 'completed' AND (SELECT on_ FROM `+b.schema+`.fault) THEN
        RAISE EXCEPTION 'injected fault' USING ERRCODE = '`+code+`';
    END IF;
    RETURN NEW;
END $$`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `CREATE TRIGGER fault BEFORE INSERT ON `+b.schema+`.durable_step FOR EACH ROW EXECUTE FUNCTION `+b.schema+`.fault_fn()`)
	require.NoError(t, err)
	return func() {
		_, err := b.pool.Exec(b.ctx, `UPDATE `+b.schema+`.fault SET on_ = false`)
		require.NoError(t, err)
	}
}

func TestTransientErrorAtStepBoundaryGoesBackToRiverWithBackoff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	off := failStepInserts(t, b, "b", "40001") // serialization_failure
	var bCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "transient", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			for _, id := range []string{"a", "b", "c"} {
				if _, err := durable.Step(ctx, id, func(ctx context.Context) (string, error) {
					if id == "b" {
						bCalls.Add(1)
					}
					return id, nil
				}); err != nil {
					return "", err
				}
			}
			return "done", nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "transient", nil)
	require.NoError(t, err)

	// The failed attempt is River's to retry, with backoff: it records the
	// error on the job (a zero snooze would record nothing and spin).
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var errs int
		err := b.pool.QueryRow(b.ctx, `SELECT coalesce(array_length(errors, 1), 0) FROM `+b.schema+`.river_job
			WHERE args->>'run_id' = $1 ORDER BY id DESC LIMIT 1`, runID).Scan(&errs)
		require.NoError(ct, err)
		assert.GreaterOrEqual(ct, errs, 1)
	}, 10*time.Second, 20*time.Millisecond)
	require.LessOrEqual(t, bCalls.Load(), int32(3), "backoff, not a tight loop")
	off()
	run := b.waitRun(c, runID, 20*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, "a transient failure is not the step's: Retries 0 does not fail it")
	require.Len(t, run.Steps, 3)
	require.Equal(t, 1, run.Steps[1].Attempts)
}

func TestPermanentErrorFromAStatementFailsTheStep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	failStepInserts(t, b, "b", "23514") // check_violation: the data is refused
	fn := durable.NewFunction(durable.FunctionOpts{ID: "permanent", Retries: durable.Ptr(2)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			for _, id := range []string{"a", "b", "c"} {
				if _, err := durable.Step(ctx, id, func(ctx context.Context) (string, error) { return id, nil }); err != nil {
					var se *durable.StepError
					require.True(t, errors.As(err, &se))
					return "handled " + se.StepID, nil
				}
			}
			return "done", nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "permanent", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.JSONEq(t, `"handled b"`, string(run.Output), "the step failed after its retries with a *StepError the function handled")
}

func TestCancellingStartContextDoesNotStopTheClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "after-start"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			return durable.Step(ctx, "s", func(ctx context.Context) (string, error) { return "ok", nil })
		})
	c, err := durable.NewClient(b.pool, &durable.Config{Functions: []durable.Function{fn}, Schema: b.schema})
	require.NoError(t, err)
	startCtx, cancel := context.WithCancel(b.ctx)
	require.NoError(t, c.Start(startCtx))
	cancel()
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	runID, err := c.Invoke(b.ctx, "after-start", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
}

func TestStopReturnsByDeadlineAndAbandonedStepNeverRecords(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE `+b.schema+`.writes (who text NOT NULL)`)
	require.NoError(t, err)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // never leave the step blocked, whatever fails
	mk := func(who string, block bool) durable.Function {
		return durable.NewFunction(durable.FunctionOpts{ID: "stubborn"},
			func(ctx context.Context, in durable.Input[M]) (string, error) {
				return durable.StepTx(ctx, "write", func(ctx context.Context, tx pgx.Tx) (string, error) {
					if _, err := tx.Exec(ctx, `INSERT INTO `+b.schema+`.writes VALUES ($1)`, who); err != nil {
						return "", err
					}
					if block {
						entered <- struct{}{}
						<-release // ignores ctx
					}
					return who, nil
				})
			})
	}
	cfg := durable.Config{Functions: []durable.Function{mk("a", true)}, Schema: b.schema, RecoverAfter: 30 * time.Second}
	a, err := durable.NewClient(b.pool, &cfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(b.ctx))
	runID, err := a.Invoke(b.ctx, "stubborn", nil)
	require.NoError(t, err)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the step did not start")
	}
	stopCtx, cancel := context.WithTimeout(b.ctx, time.Second)
	defer cancel()
	began := time.Now()
	err = a.Stop(stopCtx)
	took := time.Since(began)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, took, 1300*time.Millisecond, "Stop returns by its context's deadline")

	// Another process takes the run over at once (not after RecoverAfter).
	cfgB := durable.Config{Functions: []durable.Function{mk("b", false)}, RecoverAfter: 30 * time.Second}
	bc := b.client(cfgB)
	run := b.waitRun(bc, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.JSONEq(t, `"b"`, string(run.Output))

	// The abandoned step finishes: it records nothing, its writes roll back.
	unblock()
	never(t, time.Second, 20*time.Millisecond, "the abandoned StepTx's write committed", func() (bool, error) {
		var n int
		err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+b.schema+`.writes`).Scan(&n)
		return n != 1, err
	})
	run, err = bc.GetRun(b.ctx, runID)
	require.NoError(t, err)
	require.JSONEq(t, `"b"`, string(run.Output))
}

func TestInputAttemptIsTheExecutingStepsAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	seen := map[string][]int{}
	fails := map[string]int{}
	fn := durable.NewFunction(durable.FunctionOpts{ID: "attempts", Retries: durable.Ptr(3)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			for _, id := range []string{"a", "b"} {
				if _, err := durable.Step(ctx, id, func(ctx context.Context) (int, error) {
					mu.Lock()
					defer mu.Unlock()
					seen[id] = append(seen[id], in.Attempt)
					if fails[id] < 2 {
						fails[id]++
						return 0, errors.New("not yet")
					}
					return 1, nil
				}); err != nil {
					return "", err
				}
			}
			return "ok", nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	runID, err := c.Invoke(b.ctx, "attempts", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{0, 1, 2}, seen["a"])
	require.Equal(t, []int{0, 1, 2}, seen["b"], "b's first call sees 0, not a's last attempt")
}

func TestLoggerLogsEachLineOncePerRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	logs := newLogCapture()
	var flaky atomic.Int32
	child := durable.NewFunction(durable.FunctionOpts{ID: "log-child"},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 7, nil })
	fn := durable.NewFunction(durable.FunctionOpts{ID: "logger"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			log := durable.Logger(ctx)
			log.Info("line-1 start")
			if _, err := durable.Step(ctx, "flaky", func(ctx context.Context) (int, error) {
				durable.Logger(ctx).Info("line-body") // a step body logs each time it runs
				if flaky.Add(1) == 1 {
					return 0, errors.New("once")
				}
				return 1, nil
			}); err != nil {
				return "", err
			}
			log.Info("line-2 after retry")
			if err := durable.Sleep(ctx, "nap", 600*time.Millisecond); err != nil {
				return "", err
			}
			log.Info("line-3 after sleep")
			if _, err := durable.WaitForEvent[M](ctx, "wait", durable.WaitOpts{Event: "log/go", Timeout: time.Minute}); err != nil {
				return "", err
			}
			log.Info("line-4 after wait")
			if _, err := durable.Invoke[int](ctx, "child", durable.InvokeOpts{Function: "log-child"}); err != nil {
				return "", err
			}
			log.Info("line-5 after invoke")
			return "ok", nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn, child}, Logger: slog.New(logs)})
	runID, err := c.Invoke(b.ctx, "logger", nil)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, runID)
		require.NoError(ct, err)
		require.NotEmpty(ct, run.Steps)
		assert.Equal(ct, "waiting", run.Steps[len(run.Steps)-1].Status)
	}, 10*time.Second, 10*time.Millisecond)
	_, err = c.Send(b.ctx, durable.Event{Name: "log/go"})
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	for _, l := range []string{"line-1", "line-2", "line-3", "line-4", "line-5"} {
		require.Equal(t, 1, logs.count(l), "%s logged once", l)
	}
	require.Equal(t, 2, logs.count("line-body"), "the step body ran twice")
}

func TestReservedEventNamesAreRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var handled atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "guarded",
		OnFailure: func(ctx context.Context, in durable.Input[durable.FailureData]) error {
			handled.Add(1)
			return nil
		}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			_, err := durable.SendEvent(ctx, "forge", durable.Event{Name: durable.EventFunctionFailed})
			return "", err
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}})
	fake := durable.Event{Name: durable.EventFunctionFailed, Data: M{"function_id": "guarded", "run_id": "made-up"}}
	_, err := c.Send(b.ctx, fake)
	require.ErrorIs(t, err, durable.ErrReservedName)
	require.Contains(t, err.Error(), `"durable/"`)
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	_, err = c.SendTx(b.ctx, tx, fake)
	require.ErrorIs(t, err, durable.ErrReservedName)
	require.NoError(t, tx.Rollback(b.ctx))
	_, err = c.Invoke(b.ctx, "guarded/on-failure", durable.FailureData{RunID: "made-up"})
	require.ErrorIs(t, err, durable.ErrReservedName)

	runID, err := c.Invoke(b.ctx, "guarded", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "reserved")
	// Its real failure runs the handler once; nothing forged ran it.
	require.Eventually(t, func() bool { return handled.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Never(t, func() bool { return handled.Load() > 1 }, 500*time.Millisecond, 20*time.Millisecond)
}

func TestRegisterMakesFunctionsKnownBeforeAnyWorker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	logs := newLogCapture()
	fn := durable.NewFunction(durable.FunctionOpts{ID: "early", Triggers: []durable.Trigger{{Event: "early/e"}}},
		func(ctx context.Context, in durable.Input[M]) (string, error) { return "ran", nil })

	// Before anything registered the function, its event starts nothing,
	// and the sender says so (once per name).
	sender, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Logger: slog.New(logs)})
	require.NoError(t, err)
	for range 2 {
		ids, err := sender.Send(b.ctx, durable.Event{Name: "early/e"})
		require.NoError(t, err)
		runs, err := sender.RunsForEvent(b.ctx, ids[0])
		require.NoError(t, err)
		require.Empty(t, runs)
	}
	require.Equal(t, 1, logs.count("started no run"))

	// An API server that holds the definition registers it without running it.
	api, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{fn}})
	require.NoError(t, err)
	require.NoError(t, api.Register(b.ctx))
	ids, err := sender.Send(b.ctx, durable.Event{Name: "early/e"})
	require.NoError(t, err)
	runs, err := sender.RunsForEvent(b.ctx, ids[0])
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, durable.RunQueued, runs[0].Status)

	// The worker deploys later and runs it.
	worker := b.client(durable.Config{Functions: []durable.Function{fn}})
	run := b.waitRun(worker, runs[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
}

func TestRunShowsTheTruth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	inStep := make(chan struct{}, 1)
	proceed := make(chan struct{})
	fn := durable.NewFunction(durable.FunctionOpts{ID: "truth", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			if _, err := durable.Step(ctx, "first", func(ctx context.Context) (int, error) {
				inStep <- struct{}{}
				<-proceed
				return 1, nil
			}); err != nil {
				return "", err
			}
			return "", durable.Sleep(ctx, "long", time.Hour)
		})
	panicky := durable.NewFunction(durable.FunctionOpts{ID: "panicky", Retries: durable.Ptr(0)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			return durable.Step(ctx, "boom", func(ctx context.Context) (string, error) { panic("kaboom") })
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn, panicky}})
	runID, err := c.Invoke(b.ctx, "truth", nil)
	require.NoError(t, err)
	<-inStep
	run, err := c.GetRun(b.ctx, runID)
	require.NoError(t, err)
	require.Equal(t, durable.RunRunning, run.Status, "running while its first step executes")
	require.NotNil(t, run.StartedAt)
	close(proceed)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		run, err := c.GetRun(b.ctx, runID)
		require.NoError(ct, err)
		require.Len(ct, run.Steps, 2)
		assert.Equal(ct, "sleeping", run.Steps[1].Status)
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Cancel(b.ctx, runID))
	run, err = c.GetRun(b.ctx, runID)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, run.Status)
	require.Equal(t, "cancelled", run.Steps[1].Status, "no step of a cancelled run is still sleeping")

	pid, err := c.Invoke(b.ctx, "panicky", nil)
	require.NoError(t, err)
	prun := b.waitRun(c, pid, 10*time.Second)
	require.Equal(t, durable.RunFailed, prun.Status)
	require.Equal(t, `step "boom" failed after 1 attempt(s): panic: kaboom`, prun.Error, "only the message on the run")
	stepErr := prun.Steps[0].Error
	require.True(t, strings.HasPrefix(stepErr, "panic: kaboom"), stepErr)
	require.Contains(t, stepErr, "hardening_test.go:", "the step keeps a stack with the user's frame")
	require.NotContains(t, stepErr, "/work/", "no absolute paths")
	require.NotContains(t, stepErr, "runtime/panic.go")
	require.LessOrEqual(t, len(stepErr), 5<<10)
}

func TestUnmigratedSchemaSaysToMigrate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema + "_none"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "migrate.Up")
	require.Contains(t, err.Error(), b.schema+"_none")
}

func TestInvokeOfUnknownFunctionFailsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "caller", Retries: durable.Ptr(3)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Invoke[int](ctx, "call", durable.InvokeOpts{Function: "nobody"})
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}, RetryBackoff: func(int) time.Duration { return time.Hour }})
	runID, err := c.Invoke(b.ctx, "caller", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunFailed, run.Status)
	require.Contains(t, run.Error, "function not found")
}

func TestStepTxSendingItsOwnCancelEventEndsTheRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "self-cancel",
		CancelOn: []durable.CancelOn{{Event: "self/stop"}}},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			if _, err := durable.SendEvent(ctx, "stop-me", durable.Event{Name: "self/stop"}); err != nil {
				return "", err
			}
			return "not reached", nil
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}, RecoverAfter: 30 * time.Second})
	runID, err := c.Invoke(b.ctx, "self-cancel", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCancelled, run.Status)
	require.Contains(t, run.Error, "self/stop")
}

func TestInvokeWhoseChildCannotBeCreatedFailsTheStep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	child := durable.NewFunction(durable.FunctionOpts{ID: "once-child", Idempotency: "event.data.k"},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	parent := durable.NewFunction(durable.FunctionOpts{ID: "parent"},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			_, err := durable.Invoke[int](ctx, "call", durable.InvokeOpts{Function: "once-child", Data: M{"k": "x"}})
			var se *durable.StepError
			if errors.As(err, &se) {
				return "step error: " + se.Message, nil
			}
			return "", err
		})
	c := b.client(durable.Config{Functions: []durable.Function{child, parent}, RecoverAfter: 30 * time.Second})
	_, err := c.Invoke(b.ctx, "once-child", M{"k": "x"}) // takes the key
	require.NoError(t, err)
	runID, err := c.Invoke(b.ctx, "parent", nil)
	require.NoError(t, err)
	run := b.waitRun(c, runID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.Contains(t, string(run.Output), "idempotency key")
}
