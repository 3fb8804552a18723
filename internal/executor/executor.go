package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/riverbridge"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/riverjobs"
)

// Step statuses, as stored and shown in [RunStep.Status].
const (
	stepCompleted = store.StepCompleted
	stepFailed    = store.StepFailed
	stepRetrying  = store.StepRetrying
	stepSleeping  = store.StepSleeping
	stepWaiting   = store.StepWaiting
	stepTimedOut  = store.StepTimedOut
)

// Reasons an attempt stops before the function returns.
var (
	errRunCancelled = errors.New("durable: run was cancelled")
	errLeaseLost    = errors.New("durable: another worker took over this run")
	errShutdown     = errors.New("durable: worker is stopping")
)

// stepRow is a step as stored, also the memo of a run attempt.
type stepRow = store.Step

// loadedRun is what an attempt reads before calling the function.
type loadedRun struct {
	functionID  string
	status      string
	events      []store.Event
	ownerWorker *string
	epoch       int64
	fnAttempts  int
	wakeAt      *time.Time
	lastErr     *string
	startLate   *bool
	finishLate  *bool
	ownerAlive  bool
	logLines    int64
	age         float64 // seconds since the run was created (queue wait, at the first claim)
	steps       []stepRow
}

// runState is the state of one attempt of one run, reached from the
// function's context by the step functions.
type runState struct {
	e          *Executor
	def        *Function
	runID      string
	jobID      int64
	owner      store.Owner // this attempt's, written by its claim
	epoch      int64       // the run's fencing version the next full write must find
	claimed    bool        // this attempt's owner token is in the run row
	gated      bool        // this attempt passed flow-control gates: its end gives its slots back
	began      time.Time   // when the attempt started (Checkpointing.MaxRuntime)
	handoff    bool        // the attempt ran past MaxRuntime: the run continues in a new attempt, through River
	lastFlush  time.Time   // the last commit of buffered steps (Checkpointing.MaxInterval)
	fnAttempts int
	lastErr    *string

	// callAttempt is the Input.Attempt this call of the function was given;
	// executed counts the steps it executed. A step whose attempt differs
	// from callAttempt, once a step already executed in this call, restarts
	// the call so that Input.Attempt is right inside it.
	callAttempt int
	// logBefore is the number of Logger lines (outside step bodies) logged
	// by earlier attempts; logN counts this attempt's (see replayFilter).
	logBefore int64
	logN      atomic.Int64

	mu         sync.Mutex
	memo       map[string]*stepRow
	counters   map[string]int
	nextSeq    int
	pending    []*stepRow
	stateBytes int
	executed   int
	end        *outcome      // how the attempt ends, once decided (see exit)
	hooks      []suspendHook // work the suspending transaction must do
	trigger    store.Event
	failedStep string // the last step whose final failure the function got (see runEnded)

	// Telemetry and logs (telemetry.go): the attempt's span (nil without a
	// TracerProvider), the run's status if this attempt ended it, and the
	// error this attempt failed with.
	span       trace.Span
	endStatus  string
	attemptErr error
}

// suspendHook is work a step needs done inside the transaction that
// suspends its run (registering a wait, creating an invoked child). fn
// returns true when the run must not suspend after all (what it waits for
// has already happened). When fn fails for a reason of the step's own (not
// a transient database failure), the step fails.
type suspendHook struct {
	row *stepRow
	fn  func(ctx context.Context, tx pgx.Tx) (resumeNow bool, err error)
}

// stepFailure marks an error of a suspend hook as the step's own failure:
// the step fails (a *StepError) instead of the attempt being retried.
type stepFailure struct{ err error }

func (e *stepFailure) Error() string { return e.err.Error() }
func (e *stepFailure) Unwrap() error { return e.err }

type runKey struct{}
type inStepKey struct{}

// ExecuteRun executes one attempt of a run. It implements
// riverjobs.Executor; River calls it through riverjobs.RunWorker.
func (e *Executor) ExecuteRun(ctx context.Context, job *river.Job[riverjobs.RunArgs]) error {
	attempter := e.cfg.WorkerID
	if last, ok := riverbridge.LastAttempter(job.AttemptedBy); ok {
		attempter = last
	}
	if err := e.cfg.NoteAttempter(ctx, attempter); err != nil {
		return e.stopOutcome(ctx, err).river(e.cfg.RecoverAfter)
	}
	runID := job.Args.RunID
	if _, busy := e.active.LoadOrStore(runID, struct{}{}); busy {
		return requeueAt(time.Now().Add(time.Second)).river(e.cfg.RecoverAfter)
	}
	e.activeN.Add(1)
	defer func() {
		e.active.Delete(runID)
		e.activeN.Add(-1)
	}()
	for {
		o := e.attempt(ctx, job, attempter)
		if o.kind != outResume {
			if o.kind == outTransient {
				e.logger.WarnContext(ctx, "durable: run attempt failed on a database error; River retries it with backoff",
					"run_id", runID, "error", o.err)
			}
			return o.river(e.cfg.RecoverAfter)
		}
		// A short suspension (a retry backoff, a brief sleep) is waited
		// out here, holding the slot: cheaper and more punctual than a
		// round trip through River's queue.
		timer := time.NewTimer(time.Until(o.at))
		select {
		case <-ctx.Done():
			timer.Stop()
			return requeueAt(o.at).river(e.cfg.RecoverAfter)
		case <-e.abandon:
			timer.Stop()
			return requeueAt(o.at).river(e.cfg.RecoverAfter)
		case <-timer.C:
		}
		if e.stopping.Load() {
			return outcome{kind: outShutdown}.river(e.cfg.RecoverAfter)
		}
	}
}

// shortSuspend is the longest suspension an attempt waits out in process
// (holding its worker slot) instead of handing the run to a continuation
// job: for a retry backoff or a brief sleep, a timer here is cheaper and
// more punctual than a job that the waker must make available and a
// producer must fetch.
const shortSuspend = 500 * time.Millisecond

// attempt loads the run, claims it and executes the function once.
func (e *Executor) attempt(ctx context.Context, job *river.Job[riverjobs.RunArgs], attempter string) outcome {
	runID := job.Args.RunID
	token := ids.New()[16:]
	// The usual attempt loads and claims the run in one statement; an
	// unusual one (not due, held by a live process, timed out, of a
	// function this process lacks or gates) is only loaded, and decided
	// below.
	lr, claimedNow, err := e.claimLoad(ctx, runID, attempter, token, !e.stopping.Load())
	if errors.Is(err, pgx.ErrNoRows) {
		e.logger.WarnContext(ctx, "durable: job for an unknown run; dropping it", "run_id", runID, "job_id", job.ID)
		return done()
	}
	if err != nil {
		return e.stopOutcome(ctx, err)
	}
	def := e.cfg.Function(lr.functionID)
	if !claimedNow {
		if o, stop := e.beforeClaim(ctx, lr, def, runID, attempter); stop {
			return o
		}
	}
	return e.execute(ctx, job, lr, def, store.Owner{Worker: attempter, Token: token}, claimedNow)
}

// beforeClaim decides what an attempt whose run was only loaded does: it
// stops (the run ended or timed out, this process lacks its function, a
// live process holds it, it is not due, the process is stopping) or goes on
// to claim it.
func (e *Executor) beforeClaim(ctx context.Context, lr *loadedRun, def *Function, runID, attempter string) (outcome, bool) {
	switch lr.status {
	case store.RunCompleted, store.RunFailed, store.RunCancelled, store.RunSkipped:
		return done(), true
	}
	if (lr.startLate != nil && *lr.startLate && lr.status == store.RunQueued) || (lr.finishLate != nil && *lr.finishLate) {
		reason := "timed out: not started within Timeouts.Start"
		if lr.finishLate != nil && *lr.finishLate {
			reason = "timed out: not finished within Timeouts.Finish"
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			_, err := e.router.CancelRun(ctx, tx, runID, reason)
			return err
		}); err != nil {
			return e.stopOutcome(ctx, err), true
		}
		return cancelled(errors.New(reason)), true
	}
	if def == nil {
		e.logger.WarnContext(ctx, "durable: this process does not have the run's function; leaving it to another",
			"run_id", runID, "function_id", lr.functionID)
		return requeueAt(time.Now().Add(time.Second)), true
	}
	if lr.ownerWorker != nil && lr.ownerAlive {
		if *lr.ownerWorker != attempter {
			// A live process still holds this run (River handed the job
			// out again); never run it twice. Look again later.
			return requeueAt(time.Now().Add(e.cfg.RecoverAfter / 2)), true
		}
	}
	if lr.wakeAt != nil {
		if d := time.Until(*lr.wakeAt); d > 5*time.Millisecond {
			if d <= shortSuspend {
				return outcome{kind: outResume, at: *lr.wakeAt}, true
			}
			e.cfg.KickWaker(*lr.wakeAt)
			return requeueAt(*lr.wakeAt), true
		}
	}
	if e.stopping.Load() {
		return outcome{kind: outShutdown}, true
	}
	return outcome{}, false
}

// execute claims the run (unless claimLoad did: claimed) and calls its
// function once.
func (e *Executor) execute(ctx context.Context, job *river.Job[riverjobs.RunArgs], lr *loadedRun, def *Function, owner store.Owner, claimed bool) outcome {
	runID := job.Args.RunID
	rs := &runState{
		e:          e,
		def:        def,
		runID:      runID,
		jobID:      job.ID,
		owner:      owner,
		claimed:    claimed,
		epoch:      lr.epoch,
		fnAttempts: lr.fnAttempts,
		lastErr:    lr.lastErr,
		logBefore:  lr.logLines,
		memo:       make(map[string]*stepRow, len(lr.steps)),
		counters:   map[string]int{},
	}
	if len(lr.events) > 0 {
		rs.trigger = lr.events[0]
	}
	retrying := false
	for i := range lr.steps {
		s := &lr.steps[i]
		rs.memo[s.Key] = s
		rs.stateBytes += len(s.Output)
		if s.Seq >= rs.nextSeq {
			rs.nextSeq = s.Seq + 1
		}
		if s.Status == stepRetrying && !retrying {
			// The step this attempt resumes at (steps are loaded in the
			// order they first ran).
			rs.callAttempt, retrying = s.Attempts, true
		}
	}
	if e.tel != nil {
		ctx = rs.beginAttempt(ctx, lr)
	}
	// Claim the run before the function runs: from here on it shows as
	// running, and every write of this attempt is fenced on its owner token.
	events := lr.events
	var err error
	switch {
	case claimed:
		// A gated run claimed with its reservation holds its slot.
		rs.gated = def.Flow.Gated()
	case def.Flow.Gated():
		err = rs.admitAndClaim(ctx, lr.status)
		if errors.Is(err, errParked) {
			return rs.endAttempt(done())
		}
	default:
		err = rs.claim(ctx)
	}
	if err != nil {
		return rs.endAttempt(e.stopOutcome(ctx, err))
	}
	if !claimed && (def.Flow.Debounce != nil || def.Flow.Batch != nil) {
		// Events may have joined the run between its load and its claim,
		// which closed the collection.
		if events, err = rs.claimedEvents(ctx); err != nil {
			return rs.endAttempt(rs.stopAttempt(ctx, e.stopOutcome(ctx, err)))
		}
		if len(events) > 0 {
			rs.trigger = events[0]
		}
	}
	rs.began, rs.lastFlush = time.Now(), time.Now()
	if e.tel != nil && lr.status == store.RunQueued {
		rs.firstClaim(ctx, lr.age)
	}
	return rs.endAttempt(rs.finish(ctx, rs.call(ctx, events)))
}

// claim makes this attempt the run's owner and the run running.
func (rs *runState) claim(ctx context.Context) error {
	tag, err := rs.e.pool.Exec(ctx, rs.e.q.ClaimRun, rs.runID, rs.owner.Worker, rs.epoch, rs.owner.Token)
	if err != nil {
		return fmt.Errorf("durable: claiming run %s: %w", rs.runID, err)
	}
	if tag.RowsAffected() == 0 {
		return rs.fenceFailed(ctx, rs.e.pool)
	}
	rs.epoch++
	rs.claimed = true
	return nil
}

// callResult is how the function's goroutine ended.
type callResult struct {
	out    json.RawMessage
	err    error
	exited bool // runtime.Goexit: a step suspended or stopped the attempt
}

// call runs the user's function in its own goroutine, so that a step can
// end it with runtime.Goexit (which no user recover can swallow). When the
// client abandons attempts (Stop's deadline passed), call returns at once
// and leaves the goroutine to finish on its own: every durable call it
// makes from then on exits, and the hand-back's fence refuses its writes.
func (rs *runState) call(ctx context.Context, events []store.Event) callResult {
	fctx := context.WithValue(ctx, runKey{}, rs)
	done := make(chan callResult, 1)
	go func() {
		var res callResult
		returned := false
		defer func() {
			if !returned {
				if p := recover(); p != nil {
					pe := failure.NewPanic(p)
					rs.e.logger.WarnContext(ctx, "durable: function panicked", "run_id", rs.runID,
						"function_id", rs.def.ID, "panic", pe.Msg, "stack", pe.Stack)
					res.err = pe
				} else {
					res.exited = true
				}
			}
			done <- res
		}()
		res.out, res.err = rs.def.Call(fctx, events, rs.runID, rs.callAttempt)
		returned = true
	}()
	select {
	case res := <-done:
		return res
	case <-rs.e.abandon:
		rs.mu.Lock()
		rs.setEnd(outcome{kind: outShutdown})
		rs.mu.Unlock()
		return callResult{exited: true}
	}
}

// exit ends the attempt from a step: it records how (see setEnd) and exits
// the calling goroutine.
func (rs *runState) exit(o outcome) {
	rs.mu.Lock()
	rs.setEnd(o)
	rs.mu.Unlock()
	runtime.Goexit()
}

// setEnd records how the attempt ends; rs.mu must be held. A suspension
// merges with one recorded by a parallel goroutine, keeping the earliest;
// a stop (cancellation, takeover, shutdown, database failure) wins over a
// suspension, and the first stop wins over later ones.
func (rs *runState) setEnd(o outcome) {
	switch {
	case rs.end == nil:
	case rs.end.stops():
		return
	case !o.stops() && !o.at.Before(rs.end.at):
		return
	}
	rs.end = &o
}

// stop ends the attempt for err (a failed fence, a stopping process, a
// database failure) and exits the calling goroutine.
func (rs *runState) stop(ctx context.Context, err error) {
	rs.exit(rs.e.stopOutcome(ctx, err))
}

// ended reports whether the attempt's end is decided.
func (rs *runState) ended() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.end != nil
}

// finish records how the attempt ended and returns its outcome.
func (rs *runState) finish(ctx context.Context, res callResult) outcome {
	e := rs.e
	rs.mu.Lock()
	end := rs.end
	rs.mu.Unlock()

	if (end == nil || !end.stops()) && ctx.Err() != nil {
		o := e.stopOutcome(ctx, ctx.Err())
		end = &o
	}
	if end != nil {
		if end.kind == outSuspend {
			return rs.suspend(ctx, end.at, nil)
		}
		return rs.stopAttempt(ctx, *end)
	}
	if res.exited {
		// Goexit without a recorded reason: the user's code called it.
		res.err = errors.New("durable: the function called runtime.Goexit")
	}
	// A run that ends leaves its River job to River's completer, which
	// completes jobs in batches: the run's own row (committed with its last
	// step) is what counts, and a job left running by a crash right after
	// is recovered, finds the run ended and completes.
	if res.err == nil {
		if len(res.out) > e.cfg.MaxStepOutput {
			res.err = failure.NonRetriable(fmt.Errorf("durable: function result is %d bytes, over the %d-byte limit (Config.MaxStepOutput)", len(res.out), e.cfg.MaxStepOutput))
		} else {
			err := rs.commit(ctx, rs.endDB(), commitParams{status: store.RunCompleted, release: true, output: res.out})
			if err == nil {
				rs.runEnded(ctx, store.RunCompleted, nil)
				return done()
			}
			if !rs.permanent(err) {
				return rs.stopAttempt(ctx, e.stopOutcome(ctx, err))
			}
			// Postgres refused what this commit carried: a step's output
			// (that step fails, see refusedSteps), or else the result.
			if at, ok := rs.failRefused(ctx, err, rs.refusedSteps(ctx, err, res.out)); ok {
				return rs.suspend(ctx, at, nil)
			}
			res.err = failure.NonRetriable(fmt.Errorf("durable: the function's result could not be stored: %w", err))
		}
	}
	msg := failure.RunText(res.err)
	var fr *failure.FailsRun
	var sf *failure.StepFailed
	fail := errors.As(res.err, &fr) || errors.As(res.err, &sf) || failure.IsNonRetriable(res.err)
	if !fail {
		rs.fnAttempts++
		fail = rs.fnAttempts > rs.def.Retries
	}
	if fail {
		err := rs.commit(ctx, rs.endDB(), commitParams{status: store.RunFailed, release: true, errText: &msg})
		if err == nil {
			rs.runEnded(ctx, store.RunFailed, res.err)
			return done()
		}
		if rs.permanent(err) {
			if at, ok := rs.failRefused(ctx, err, rs.refusedSteps(ctx, err, nil)); ok {
				return rs.suspend(ctx, at, nil)
			}
		}
		return rs.stopAttempt(ctx, e.stopOutcome(ctx, err))
	}
	at, ok := failure.RetryTime(res.err)
	if !ok {
		at = time.Now().Add(e.cfg.RetryBackoff(rs.fnAttempts))
	}
	rs.fnRetrying(ctx, res.err, at)
	return rs.suspend(ctx, at, &msg)
}

// permanent reports whether a failed write was refused for its data (and
// not for a failed fence).
func (rs *runState) permanent(err error) bool {
	return !errors.Is(err, errRunCancelled) && !errors.Is(err, errLeaseLost) && classify(err) == classPermanent
}

// refusedSteps finds the pending steps whose output Postgres refuses (a
// string holding \u0000 in jsonb, say), checking each on its own. When
// none is refused alone, and the function's result (when given) is not
// either, every pending step with an output is blamed: the commit's data
// was refused, and only the steps' outputs are the user's.
func (rs *runState) refusedSteps(ctx context.Context, err error, result json.RawMessage) []*stepRow {
	rs.mu.Lock()
	var cands []*stepRow
	for _, p := range rs.pending {
		if p.Kind == "step" && p.Status == stepCompleted {
			cands = append(cands, p)
		}
	}
	rs.mu.Unlock()
	check, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	refused := func(raw json.RawMessage) bool {
		if raw == nil {
			return false
		}
		var ok int
		e := rs.e.pool.QueryRow(check, rs.e.q.CheckJSON, []byte(raw)).Scan(&ok)
		return e != nil && classify(e) == classPermanent
	}
	var out []*stepRow
	for _, p := range cands {
		if refused(p.Output) {
			out = append(out, p)
		}
	}
	if len(out) > 0 || (result != nil && refused(result)) {
		return out
	}
	return cands
}

// failRefused records a failed attempt for each step whose output could
// not be stored (retrying, or failed once its retries are exhausted) and
// returns when the run must resume; false when there is no such step.
func (rs *runState) failRefused(ctx context.Context, err error, rows []*stepRow) (time.Time, bool) {
	if len(rows) == 0 {
		return time.Time{}, false
	}
	resume := time.Time{}
	for _, r := range rows {
		msg := failure.Clean(fmt.Sprintf("durable: step %q: its output could not be stored: %v", r.Key, err))
		row, at := rs.failedAttempt(r.Key, r.Seq, r.Kind, r.Attempts, errors.New(msg))
		rs.mu.Lock()
		rs.stateBytes -= len(r.Output)
		rs.mu.Unlock()
		rs.addPending(row)
		rs.e.logger.WarnContext(ctx, "durable: a step's output was refused by Postgres", "run_id", rs.runID,
			"step", r.Key, "error", err)
		if resume.IsZero() || at.Before(resume) {
			resume = at
		}
	}
	return resume, true
}

// failedAttempt builds the row of a failed step attempt: retrying at its
// backoff, or failed once retries are exhausted (or for a non-retriable
// error). It returns when the run resumes: the retry, or now.
func (rs *runState) failedAttempt(key string, seq int, kind string, attempts int, err error) (*stepRow, time.Time) {
	msg := failure.StepText(err)
	if failure.IsNonRetriable(err) || attempts > rs.def.Retries {
		return &stepRow{Key: key, Seq: seq, Kind: kind, Status: stepFailed, Attempts: attempts, Error: &msg}, time.Now()
	}
	at, ok := failure.RetryTime(err)
	if !ok {
		at = time.Now().Add(rs.e.cfg.RetryBackoff(attempts))
	}
	at = at.UTC()
	return &stepRow{Key: key, Seq: seq, Kind: kind, Status: stepRetrying, Attempts: attempts, Error: &msg, WakeAt: &at}, at
}

// suspend ends the attempt with the run waiting until at; lastErr records
// a function-level error that is being retried.
//
// A short suspension is recorded and waited out in process. A longer one
// completes this River job and inserts the job that continues the run,
// scheduled at at, in the same transaction as the run's state: the run is
// never without exactly one live job, and an early wake-up (an event, a
// child run finishing) finds that job ready to be made available. (River's
// JobSnooze would record the new state only when its completer flushes, up
// to ~250 ms later, leaving a window where a wake-up finds the job still
// running and is lost.)
func (rs *runState) suspend(ctx context.Context, at time.Time, lastErr *string) outcome {
	if lastErr == nil {
		lastErr = rs.lastErr
	}
	p := commitParams{status: store.RunRunning, release: true, errText: lastErr, wakeAt: &at}
	rs.mu.Lock()
	hooks, handoff := rs.hooks, rs.handoff
	rs.hooks = nil
	rs.mu.Unlock()
	if len(hooks) == 0 && time.Until(at) <= shortSuspend && !handoff && !rs.e.stopping.Load() && !rs.hasWaiting() {
		if err := rs.commit(ctx, rs.e.pool, p); err != nil {
			return rs.afterFailedSuspend(ctx, err)
		}
		return outcome{kind: outResume, at: at}
	}
	resumeNow := false
	// Steps this attempt found waiting may have been delivered while it ran
	// (parallel goroutines): their wake-up found the job running and did
	// nothing, so look again under the run's lock.
	var waiting []string
	rs.mu.Lock()
	for k, r := range rs.memo {
		if r.Status == stepWaiting {
			waiting = append(waiting, k)
		}
	}
	rs.mu.Unlock()
	err := func() error {
		tx, err := rs.e.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		for _, h := range hooks {
			now, err := rs.runHook(ctx, tx, h)
			if err != nil {
				return err
			}
			resumeNow = resumeNow || now
		}
		if len(waiting) > 0 && !resumeNow {
			if _, err := tx.Exec(ctx, rs.e.q.LockRun, rs.runID); err != nil {
				return err
			}
			var delivered int
			if err := tx.QueryRow(ctx, rs.e.q.DeliveredSince, rs.runID, waiting).Scan(&delivered); err != nil {
				return err
			}
			resumeNow = delivered > 0
		}
		if resumeNow {
			// What the run waits for is already here: record it and go on
			// in this attempt.
			p.wakeAt = nil
		} else {
			next, err := rs.continuation(ctx, tx, at)
			if err != nil {
				return err
			}
			p.completeJob, p.newJobID = true, &next
		}
		res, err := rs.commitIn(ctx, tx, p)
		if err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		rs.applyCommit(res)
		return nil
	}()
	if err != nil {
		return rs.afterFailedSuspend(ctx, err)
	}
	if resumeNow {
		return outcome{kind: outResume, at: time.Now()}
	}
	rs.e.cfg.KickWaker(at)
	return done()
}

// continuation inserts, in tx, the River job that continues the run at at
// (the attempt's own job is completed in the same transaction).
func (rs *runState) continuation(ctx context.Context, tx pgx.Tx, at time.Time) (int64, error) {
	next, err := rs.e.river.InsertTx(ctx, tx, riverjobs.RunArgs{RunID: rs.runID}, &river.InsertOpts{
		Queue: rs.e.cfg.Queue, MaxAttempts: router.RunJobMaxAttempts, ScheduledAt: at,
	})
	if err != nil {
		return 0, fmt.Errorf("durable: run %s: inserting continuation job: %w", rs.runID, err)
	}
	return next.Job.ID, nil
}

// runHook runs a suspend hook in a savepoint: when it fails for a reason
// of its step's own (a stepFailure, or data Postgres refuses), the step is
// recorded as failed and the run resumes at once to return the
// *StepError; a transient failure fails the suspension.
func (rs *runState) runHook(ctx context.Context, tx pgx.Tx, h suspendHook) (bool, error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return false, err
	}
	now, err := h.fn(ctx, sp)
	if err == nil {
		return now, sp.Commit(ctx)
	}
	if rerr := sp.Rollback(ctx); rerr != nil {
		return false, rerr
	}
	var sf *stepFailure
	if !errors.As(err, &sf) && !rs.permanent(err) {
		return false, err
	}
	msg := failure.Clean(err.Error())
	rs.mu.Lock()
	h.row.Status, h.row.Error, h.row.WakeAt, h.row.ChildRun, h.row.Output = stepFailed, &msg, nil, nil, nil
	rs.mu.Unlock()
	return true, nil
}

// afterFailedSuspend is the outcome of a suspension whose commit failed.
func (rs *runState) afterFailedSuspend(ctx context.Context, err error) outcome {
	if rs.permanent(err) {
		// A step's output refused at the suspension: that step fails and
		// the run resumes (once; the retry records no output).
		if at, ok := rs.failRefused(ctx, err, rs.refusedSteps(ctx, err, nil)); ok {
			return rs.suspend(ctx, at, nil)
		}
	}
	return rs.stopAttempt(ctx, rs.e.stopOutcome(ctx, err))
}

// hasWaiting reports whether the attempt found steps waiting.
func (rs *runState) hasWaiting() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, r := range rs.memo {
		if r.Status == stepWaiting {
			return true
		}
	}
	return false
}

// stopAttempt ends an attempt that must not go on: the run was cancelled,
// another worker took it over, this process is stopping, or the database
// failed. A run this attempt still holds is handed back (keeping what
// finished) so that another process continues it at once.
func (rs *runState) stopAttempt(ctx context.Context, o outcome) outcome {
	switch o.kind {
	case outCancelled, outLeaseLost:
		return o
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if o.kind == outShutdown {
		// The context ended or the process is stopping: was the run cancelled?
		var status string
		if err := rs.e.pool.QueryRow(bg, rs.e.q.RunStatus, rs.runID).Scan(&status); err == nil && status == store.RunCancelled {
			return cancelled(errRunCancelled)
		}
	}
	rs.mu.Lock()
	claimed := rs.claimed
	rs.mu.Unlock()
	if !claimed {
		return o
	}
	now := time.Now()
	err := rs.commit(bg, rs.e.pool, commitParams{status: store.RunRunning, release: true, errText: rs.lastErr, wakeAt: &now})
	switch {
	case err == nil:
	case errors.Is(err, errRunCancelled):
		return cancelled(errRunCancelled)
	case o.kind == outTransient:
		// Likely the same outage: whoever attempts the run next finds its
		// owner dead after RecoverAfter, or is this process.
	default:
		rs.e.logger.WarnContext(bg, "durable: could not hand back a stopping run; it will be recovered", "run_id", rs.runID, "error", err)
	}
	return o
}
