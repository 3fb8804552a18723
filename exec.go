package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/riverjobs"
)

// Step statuses, as stored and shown in [RunStep.Status].
const (
	stepCompleted = "completed"
	stepFailed    = "failed"
	stepRetrying  = "retrying"
	stepSleeping  = "sleeping"
)

// Reasons an attempt stops before the function returns.
var (
	errRunCancelled = errors.New("durable: run was cancelled")
	errLeaseLost    = errors.New("durable: another worker took over this run")
	errShutdown     = errors.New("durable: worker is stopping")
)

// stepRow is a step as stored, also the memo of a run attempt.
type stepRow struct {
	Key      string          `json:"key"`
	Seq      int             `json:"seq"`
	Kind     string          `json:"kind"`
	Status   string          `json:"status"`
	Attempts int             `json:"attempts"`
	Output   json.RawMessage `json:"output"`
	Error    *string         `json:"error"`
	WakeAt   *time.Time      `json:"wake_at"`
	ChildRun *string         `json:"-"`
}

// loadedRun is what an attempt reads before calling the function.
type loadedRun struct {
	functionID string
	status     string
	events     []eventJSON
	owner      *string
	epoch      int64
	fnAttempts int
	wakeAt     *time.Time
	lastErr    *string
	startLate  *bool
	finishLate *bool
	ownerAlive bool
	steps      []stepRow
}

// runState is the state of one attempt of one run, reached from the
// function's context by the step functions.
type runState struct {
	c          *Client
	def        *funcDef
	runID      string
	jobID      int64
	owner      string // fencing token written by this attempt
	epoch      int64  // the run's fencing version the next full write must find
	claimed    bool   // this attempt's owner token is in the run row
	fnAttempts int
	lastErr    *string

	mu         sync.Mutex
	memo       map[string]*stepRow
	counters   map[string]int
	nextSeq    int
	pending    []*stepRow
	stateBytes int
	suspendAt  *time.Time
	abort      error
	replaying  atomic.Bool
	hooks      []suspendHook // work the suspending transaction must do
	trigger    eventJSON
}

// suspendHook runs inside the transaction that suspends a run (waits,
// invocations). It returns true when the run must not suspend after all
// (what it waits for has already happened).
type suspendHook func(ctx context.Context, tx pgx.Tx) (resumeNow bool, err error)

type runKey struct{}
type inStepKey struct{}

// ExecuteRun executes one attempt of a run. It implements
// riverjobs.Executor; River calls it through riverjobs.RunWorker.
func (c *Client) ExecuteRun(ctx context.Context, job *river.Job[riverjobs.RunArgs]) error {
	attempter := c.workerID
	if n := len(job.AttemptedBy); n > 0 {
		attempter = job.AttemptedBy[n-1]
	}
	if err := c.noteAttempter(ctx, attempter); err != nil {
		return err
	}
	runID := job.Args.RunID
	if _, busy := c.active.LoadOrStore(runID, struct{}{}); busy {
		return river.JobSnooze(time.Second)
	}
	c.activeN.Add(1)
	defer func() {
		c.active.Delete(runID)
		c.activeN.Add(-1)
	}()
	for {
		err := c.attempt(ctx, job, attempter)
		var soon *resumeSoon
		if !errors.As(err, &soon) {
			return err
		}
		// A short suspension (a retry backoff, a brief sleep) is waited
		// out here, holding the slot: cheaper and more punctual than a
		// round trip through River's queue.
		timer := time.NewTimer(time.Until(soon.at))
		select {
		case <-ctx.Done():
			timer.Stop()
			return river.JobSnooze(max(time.Until(soon.at), 0))
		case <-timer.C:
		}
		if c.stopping.Load() {
			return river.JobSnooze(0)
		}
	}
}

// shortSuspend is the longest suspension an attempt waits out in process
// (holding its worker slot) instead of handing the run to a continuation
// job: for a retry backoff or a brief sleep, a timer here is cheaper and
// more punctual than a job that the waker must make available and a
// producer must fetch.
const shortSuspend = 500 * time.Millisecond

// resumeSoon asks ExecuteRun to wait until at and run the attempt again.
type resumeSoon struct{ at time.Time }

func (r *resumeSoon) Error() string { return "durable: resume at " + r.at.String() }

// attempt loads the run and executes the function once.
func (c *Client) attempt(ctx context.Context, job *river.Job[riverjobs.RunArgs], attempter string) error {
	runID := job.Args.RunID
	lr, err := c.loadRun(ctx, runID)
	if errors.Is(err, pgx.ErrNoRows) {
		c.logger.WarnContext(ctx, "durable: job for an unknown run; dropping it", "run_id", runID, "job_id", job.ID)
		return nil
	}
	if err != nil {
		return err
	}
	switch lr.status {
	case string(RunCompleted), string(RunFailed), string(RunCancelled):
		return nil
	}
	if (lr.startLate != nil && *lr.startLate && lr.status == string(RunQueued)) || (lr.finishLate != nil && *lr.finishLate) {
		reason := "timed out: not started within Timeouts.Start"
		if lr.finishLate != nil && *lr.finishLate {
			reason = "timed out: not finished within Timeouts.Finish"
		}
		if err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
			_, err := c.cancelRun(ctx, tx, runID, reason)
			return err
		}); err != nil {
			return err
		}
		return river.JobCancel(errors.New(reason))
	}
	def := c.funcs[lr.functionID]
	if def == nil {
		c.logger.WarnContext(ctx, "durable: this process does not have the run's function; leaving it to another",
			"run_id", runID, "function_id", lr.functionID)
		return river.JobSnooze(time.Second)
	}
	if lr.owner != nil && lr.ownerAlive {
		if w, _, _ := strings.Cut(*lr.owner, "|"); w != attempter {
			// A live process still holds this run (River handed the job
			// out again); never run it twice. Look again later.
			return river.JobSnooze(c.cfg.RecoverAfter / 2)
		}
	}
	if lr.wakeAt != nil {
		if d := time.Until(*lr.wakeAt); d > 5*time.Millisecond {
			if d <= shortSuspend {
				return &resumeSoon{at: *lr.wakeAt}
			}
			c.kickWaker(*lr.wakeAt)
			return river.JobSnooze(d)
		}
	}
	if c.stopping.Load() {
		return river.JobSnooze(0)
	}

	rs := &runState{
		c:          c,
		def:        def,
		runID:      runID,
		jobID:      job.ID,
		owner:      attempter + "|" + ids.New()[16:],
		epoch:      lr.epoch,
		fnAttempts: lr.fnAttempts,
		lastErr:    lr.lastErr,
		memo:       make(map[string]*stepRow, len(lr.steps)),
		counters:   map[string]int{},
	}
	if len(lr.events) > 0 {
		rs.trigger = lr.events[0]
	}
	attempt := lr.fnAttempts
	for i := range lr.steps {
		s := &lr.steps[i]
		rs.memo[s.Key] = s
		rs.stateBytes += len(s.Output)
		if s.Seq >= rs.nextSeq {
			rs.nextSeq = s.Seq + 1
		}
		if s.Status == stepRetrying {
			attempt = s.Attempts
		}
	}
	rs.replaying.Store(len(lr.steps) > 0)
	return rs.finish(ctx, rs.call(ctx, lr.events, attempt))
}

// callResult is how the function's goroutine ended.
type callResult struct {
	out    json.RawMessage
	err    error
	exited bool // runtime.Goexit: a step suspended or stopped the attempt
}

// call runs the user's function in its own goroutine, so that a step can
// end it with runtime.Goexit (which no user recover can swallow).
func (rs *runState) call(ctx context.Context, events []eventJSON, attempt int) callResult {
	fctx := context.WithValue(ctx, runKey{}, rs)
	done := make(chan callResult, 1)
	go func() {
		var res callResult
		returned := false
		defer func() {
			if !returned {
				if p := recover(); p != nil {
					res.err = panicError(p)
				} else {
					res.exited = true
				}
			}
			done <- res
		}()
		res.out, res.err = rs.def.call(fctx, events, rs.runID, attempt)
		returned = true
	}()
	return <-done
}

func panicError(p any) error {
	return fmt.Errorf("panic: %v\n\n%s", p, debug.Stack())
}

// finish records how the attempt ended and tells River what to do with the
// job.
func (rs *runState) finish(ctx context.Context, res callResult) error {
	c := rs.c
	rs.mu.Lock()
	abort, suspendAt := rs.abort, rs.suspendAt
	rs.mu.Unlock()

	if abort == nil && ctx.Err() != nil {
		abort = ctx.Err()
	}
	if abort != nil {
		return rs.stopAttempt(ctx, abort)
	}
	if suspendAt != nil {
		return rs.suspend(ctx, *suspendAt, nil)
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
		if len(res.out) > c.cfg.MaxStepOutput {
			res.err = NonRetriable(fmt.Errorf("durable: function result is %d bytes, over the %d-byte limit (Config.MaxStepOutput)", len(res.out), c.cfg.MaxStepOutput))
		} else {
			err := rs.commit(ctx, rs.c.pool, commitParams{status: string(RunCompleted), release: true, output: res.out})
			return rs.afterFinalCommit(ctx, err)
		}
	}
	msg := res.err.Error()
	var se *StepError
	fail := errors.As(res.err, &se) || isNonRetriable(res.err)
	if !fail {
		rs.fnAttempts++
		fail = rs.fnAttempts > rs.def.retries()
	}
	if fail {
		err := rs.commit(ctx, rs.c.pool, commitParams{status: string(RunFailed), release: true, errText: &msg})
		return rs.afterFinalCommit(ctx, err)
	}
	at, ok := retryTime(res.err)
	if !ok {
		at = time.Now().Add(c.cfg.RetryBackoff(rs.fnAttempts))
	}
	return rs.suspend(ctx, at, &msg)
}

func (rs *runState) afterFinalCommit(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, errRunCancelled) || errors.Is(err, errLeaseLost) {
		return rs.stopAttempt(ctx, err)
	}
	return err
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
func (rs *runState) suspend(ctx context.Context, at time.Time, lastErr *string) error {
	if lastErr == nil {
		lastErr = rs.lastErr
	}
	p := commitParams{status: string(RunRunning), release: true, errText: lastErr, wakeAt: &at}
	rs.mu.Lock()
	hooks := rs.hooks
	rs.hooks = nil
	rs.mu.Unlock()
	if len(hooks) == 0 && time.Until(at) <= shortSuspend && !rs.c.stopping.Load() && !rs.hasWaiting() {
		if err := rs.commit(ctx, rs.c.pool, p); err != nil {
			return rs.afterFinalCommit(ctx, err)
		}
		return &resumeSoon{at: at}
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
	err := pgx.BeginFunc(ctx, rs.c.pool, func(tx pgx.Tx) error {
		for _, h := range hooks {
			now, err := h(ctx, tx)
			if err != nil {
				return err
			}
			resumeNow = resumeNow || now
		}
		if len(waiting) > 0 && !resumeNow {
			if _, err := tx.Exec(ctx, rs.c.q.get("LockRun"), rs.runID); err != nil {
				return err
			}
			var delivered int
			if err := tx.QueryRow(ctx, rs.c.q.get("DeliveredSince"), rs.runID, waiting).Scan(&delivered); err != nil {
				return err
			}
			resumeNow = delivered > 0
		}
		if resumeNow {
			// What the run waits for is already here: record it and go on
			// in this attempt.
			p.wakeAt = nil
		} else {
			next, err := rs.c.river.InsertTx(ctx, tx, riverjobs.RunArgs{RunID: rs.runID}, &river.InsertOpts{
				Queue: rs.c.cfg.Queue, MaxAttempts: runJobMaxAttempts, ScheduledAt: at,
			})
			if err != nil {
				return fmt.Errorf("durable: run %s: inserting continuation job: %w", rs.runID, err)
			}
			p.completeJob, p.newJobID = true, &next.Job.ID
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
	})
	if err != nil {
		return rs.afterFinalCommit(ctx, err)
	}
	if resumeNow {
		return &resumeSoon{at: time.Now()}
	}
	rs.c.kickWaker(at)
	return nil
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
// another worker took it over, or this process is stopping.
func (rs *runState) stopAttempt(ctx context.Context, reason error) error {
	switch {
	case errors.Is(reason, errRunCancelled):
		return river.JobCancel(reason)
	case errors.Is(reason, errLeaseLost):
		return river.JobSnooze(rs.c.cfg.RecoverAfter)
	}
	// The context ended or the process is stopping: was the run cancelled?
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var status string
	var owner *string
	if err := rs.c.pool.QueryRow(bg, rs.c.q.get("RunStatus"), rs.runID).Scan(&status, &owner); err == nil && status == string(RunCancelled) {
		return river.JobCancel(errRunCancelled)
	}
	// Hand the run back, keeping what finished, so that another process
	// continues it at once.
	now := time.Now()
	if err := rs.commit(bg, rs.c.pool, commitParams{status: string(RunRunning), release: true, errText: rs.lastErr, wakeAt: &now}); err != nil {
		rs.c.logger.WarnContext(bg, "durable: could not hand back a stopping run; it will be recovered", "run_id", rs.runID, "error", err)
	}
	return river.JobSnooze(0)
}

// commitParams say what one fenced write does besides recording the
// pending steps.
type commitParams struct {
	status      string
	release     bool // the attempt ends: clear the owner
	output      json.RawMessage
	errText     *string
	wakeAt      *time.Time
	completeJob bool   // a suspension: this attempt's job is done...
	newJobID    *int64 // ...and this job continues the run
}

type execer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// commit writes the pending steps and the run's new state in one statement,
// fenced on the owner token. It returns errRunCancelled or errLeaseLost
// when the fence fails. On success through a transaction, the caller must
// call applyCommit after the transaction commits.
func (rs *runState) commit(ctx context.Context, db execer, p commitParams) error {
	res, err := rs.commitIn(ctx, db, p)
	if err != nil {
		return err
	}
	rs.applyCommit(res)
	return nil
}

// commitResult is what a successful commitIn wrote, to apply to the
// attempt's state once its transaction commits.
type commitResult struct {
	pending  []*stepRow
	newOwner *string
	full     bool // the run row was written (its epoch bumped)
}

func (rs *runState) commitIn(ctx context.Context, db execer, p commitParams) (*commitResult, error) {
	rs.mu.Lock()
	pending := append([]*stepRow(nil), rs.pending...)
	epoch, claimed := rs.epoch, rs.claimed
	rs.mu.Unlock()
	var newOwner *string
	if !p.release {
		newOwner = &rs.owner
	}
	n := len(pending)
	keys, kinds, statuses, errs := make([]string, n), make([]string, n), make([]string, n), make([]*string, n)
	seqs, attempts := make([]int32, n), make([]int32, n)
	outputs := make([][]byte, n)
	wakes := make([]*time.Time, n)
	children := make([]*string, n)
	for i, s := range pending {
		keys[i], kinds[i], statuses[i], errs[i] = s.Key, s.Kind, s.Status, s.Error
		seqs[i], attempts[i], outputs[i], wakes[i], children[i] = int32(s.Seq), int32(s.Attempts), s.Output, s.WakeAt, s.ChildRun
	}
	if p.status == string(RunRunning) && !p.release && !p.completeJob && p.wakeAt == nil &&
		claimed {
		// Mid-attempt: the run is ours already; record the steps only.
		var runs, steps int
		var err error
		if n == 1 {
			s := pending[0]
			err = db.QueryRow(ctx, rs.c.q.get("CommitStep"), rs.runID, rs.owner,
				s.Key, s.Seq, s.Kind, s.Status, s.Attempts, []byte(s.Output), s.Error, s.WakeAt, s.ChildRun).Scan(&runs, &steps)
			if errors.Is(err, pgx.ErrNoRows) {
				err, runs = nil, 0
			}
		} else {
			err = db.QueryRow(ctx, rs.c.q.get("CommitSteps"), rs.runID, rs.owner,
				keys, seqs, kinds, statuses, attempts, outputs, errs, wakes, children).Scan(&runs, &steps)
		}
		if err != nil {
			return nil, fmt.Errorf("durable: recording run %s: %w", rs.runID, err)
		}
		if runs == 0 {
			return nil, rs.fenceFailed(ctx)
		}
		return &commitResult{pending: pending, newOwner: newOwner}, nil
	}
	var output any
	if p.output != nil {
		output = p.output
	}
	var runs, jobs, events int
	err := db.QueryRow(ctx, rs.c.q.get("Commit"),
		rs.runID, newOwner, epoch, p.status, output, p.errText, rs.fnAttempts, p.wakeAt,
		keys, seqs, kinds, statuses, attempts, outputs, errs, wakes,
		rs.jobID, p.completeJob, rs.c.notifyChannel, p.newJobID, children,
	).Scan(&runs, &jobs, &events)
	if err != nil {
		return nil, fmt.Errorf("durable: recording run %s: %w", rs.runID, err)
	}
	if runs == 0 {
		return nil, rs.fenceFailed(ctx)
	}
	if events > 0 {
		rs.c.kickRouter()
	}
	return &commitResult{pending: pending, newOwner: newOwner, full: true}, nil
}

// applyCommit makes committed writes part of the memo.
func (rs *runState) applyCommit(r *commitResult) {
	pending, newOwner, fullWrite := r.pending, r.newOwner, r.full
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if fullWrite {
		rs.epoch++
	}
	rs.claimed = newOwner != nil
	for _, s := range pending {
		rs.memo[s.Key] = s
	}
	// Drop exactly the rows written; steps may have been added meanwhile
	// by parallel goroutines.
	rest := rs.pending[:0]
	for _, s := range rs.pending {
		written := false
		for _, w := range pending {
			if w == s {
				written = true
				break
			}
		}
		if !written {
			rest = append(rest, s)
		}
	}
	rs.pending = rest
}

// fenceFailed finds out why a fenced write matched no run.
func (rs *runState) fenceFailed(ctx context.Context) error {
	var status string
	var owner *string
	err := rs.c.pool.QueryRow(context.WithoutCancel(ctx), rs.c.q.get("RunStatus"), rs.runID).Scan(&status, &owner)
	if err != nil {
		return fmt.Errorf("durable: run %s: %w", rs.runID, err)
	}
	if status == string(RunCancelled) {
		return errRunCancelled
	}
	return errLeaseLost // another attempt wrote the run (or ended it)
}

func (c *Client) loadRun(ctx context.Context, runID string) (*loadedRun, error) {
	lr := &loadedRun{}
	var events, steps []byte
	err := c.pool.QueryRow(ctx, c.q.get("LoadRun"), runID, c.cfg.RecoverAfter.Seconds()).Scan(
		&lr.functionID, &lr.status, &events, &lr.owner, &lr.epoch, &lr.fnAttempts, &lr.wakeAt, &lr.lastErr,
		&lr.startLate, &lr.finishLate, &lr.ownerAlive, &steps)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(events, &lr.events); err != nil {
		return nil, fmt.Errorf("durable: run %s: decoding events: %w", runID, err)
	}
	if err := json.Unmarshal(steps, &lr.steps); err != nil {
		return nil, fmt.Errorf("durable: run %s: decoding steps: %w", runID, err)
	}
	return lr, nil
}

// Logger returns a logger that writes nothing while the run replays code
// that already ran, so each line is logged once per run. Outside a
// function it returns the default logger.
func Logger(ctx context.Context) *slog.Logger {
	rs, _ := ctx.Value(runKey{}).(*runState)
	if rs == nil {
		return slog.Default()
	}
	return slog.New(replayFilter{rs: rs, h: rs.c.logger.Handler()}).With("run_id", rs.runID, "function_id", rs.def.opts.ID)
}

type replayFilter struct {
	rs *runState
	h  slog.Handler
}

func (f replayFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return !f.rs.replaying.Load() && f.h.Enabled(ctx, l)
}
func (f replayFilter) Handle(ctx context.Context, r slog.Record) error {
	if f.rs.replaying.Load() {
		return nil
	}
	return f.h.Handle(ctx, r)
}
func (f replayFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return replayFilter{rs: f.rs, h: f.h.WithAttrs(a)}
}
func (f replayFilter) WithGroup(n string) slog.Handler {
	return replayFilter{rs: f.rs, h: f.h.WithGroup(n)}
}
