// Package executor runs attempts of runs: it loads a run, claims it, calls
// the user's function, replays its memoized steps, executes the next ones,
// suspends the run (sleeps, waits, invokes, retry backoffs) and records how
// the attempt ended, as one outcome that becomes River's answer for the
// job (see outcome.go). The hot path, a step from the user's call to its
// commit, is Step in this file, then runState.step and runState.boundary
// in steps.go, then runState.commitIn in commit.go.
//
// The public package's step functions (durable.Step and the rest) are thin
// generic wrappers over the functions here.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/internal/telemetry"
)

// Function is a function as the executor calls it.
type Function struct {
	ID      string
	Retries int // per step, and for the function from the top
	// Call decodes the run's events, calls the user's function with
	// Input.Attempt set to attempt and encodes its result. An error that
	// must fail the run without a function-level retry is a
	// *failure.FailsRun or carries failure.NonRetriable.
	Call func(ctx context.Context, events []store.Event, runID string, attempt int) (json.RawMessage, error)
	// Flow is the function's flow control: Concurrency, Throttle and
	// Priority are applied when an attempt starts (gate.go); Debounce and
	// Batch make its runs collect events until they start.
	Flow store.FunctionConfig
	// BufferedSteps, MaxInterval and MaxRuntime are its Checkpointing.
	BufferedSteps           int
	MaxInterval, MaxRuntime time.Duration
}

// Config is what an Executor needs.
type Config struct {
	Pool    *pgxpool.Pool
	Queries *store.Queries
	Router  *router.Router
	River   *river.Client[pgx.Tx] // inserts the jobs that continue suspended runs
	Exprs   *expr.Cache
	Logger  *slog.Logger

	Schema                                             string
	WorkerID                                           string // this process's River client ID
	Queue                                              string
	RecoverAfter                                       time.Duration
	RetryBackoff                                       func(n int) time.Duration
	MaxSteps, MaxStepOutput, MaxRunState, MaxEventSize int

	// Function returns the function of this process with that ID, or nil.
	Function func(id string) *Function
	// Claimable lists the functions of this process without flow-control
	// gates: an attempt of one of their runs loads and claims it in one
	// statement.
	Claimable []string
	// Reserved lists the functions of this process with one concurrency
	// gate and no throttle: a run of theirs that holds its reservation is
	// claimed the same way (it passed its gate when created or promoted).
	Reserved []string
	// KickWaker tells the waker a suspended run is due at t; KickRouter
	// that system events were stored; NoteAttempter makes sure the River
	// client working a job has a heartbeat.
	KickWaker     func(t time.Time)
	KickRouter    func()
	NoteAttempter func(ctx context.Context, id string) error

	// Telemetry records spans and metrics of attempts and steps; nil for
	// none.
	Telemetry *telemetry.Telemetry
}

// Executor executes attempts of runs; River calls ExecuteRun through
// riverjobs.RunWorker.
type Executor struct {
	cfg    Config
	pool   *pgxpool.Pool
	q      *store.Queries
	router *router.Router
	river  *river.Client[pgx.Tx]
	logger *slog.Logger

	stopping    atomic.Bool
	abandon     chan struct{} // closed when attempts still in user code are abandoned
	abandonOnce sync.Once
	active      sync.Map // run ID -> struct{}: attempts executing in this process
	activeN     atomic.Int64
	batch       *store.Batcher       // the hot path's one-statement writes (see store.Batcher)
	hooks       *Hooks               // durabletest's, or nil
	tel         *telemetry.Telemetry // nil: no spans, no metrics
}

// New builds an Executor.
func New(cfg Config) *Executor {
	return &Executor{cfg: cfg, pool: cfg.Pool, q: cfg.Queries, router: cfg.Router, river: cfg.River,
		logger: cfg.Logger, abandon: make(chan struct{}), hooks: hooksFor(cfg.Schema),
		tel: cfg.Telemetry, batch: store.NewBatcher(cfg.Pool, batchFlushers, batchMax)}
}

// The hot path's batches (see store.Batcher): at most batchFlushers in
// flight, each of at most batchMax statements. Two measured best on 2
// cores (runs/s 345–476 against 276–416 with four, 301–363 with one):
// batches grow with the load, so more flushers add busy backends, not
// throughput.
const (
	batchFlushers = 2
	batchMax      = 64
)

// SetStopping makes attempts hand their runs back at their next step
// boundary and new attempts leave their runs for another process.
func (e *Executor) SetStopping() { e.stopping.Store(true) }

// Abandon makes every attempt still running return at once, leaving its
// user code to finish on its own: the attempt hands its run back (fenced,
// so that nothing the abandoned code does is recorded).
func (e *Executor) Abandon() { e.abandonOnce.Do(func() { close(e.abandon) }) }

// Active is the number of attempts executing in this process.
func (e *Executor) Active() int64 { return e.activeN.Load() }

// TestHookWaitBegan holds, for tests only, functions (by function ID)
// called with the run's trigger data when a wait has begun and before its
// run suspends.
var TestHookWaitBegan sync.Map

// noTimeout is how far ahead a wait without timeout schedules its run's
// job (it is woken by what it waits for).
const noTimeout = 10 * 365 * 24 * time.Hour

// Step runs (or replays) a step of kind kind: plain, or inTx in a
// transaction that also records it. It returns the step's key (its ID
// with a counter suffix) and its JSON output, or a *failure.StepFailed once
// the step exhausted its retries.
func Step(ctx context.Context, id, kind string,
	plain func(context.Context) (json.RawMessage, error),
	inTx func(context.Context, pgx.Tx) (json.RawMessage, error),
) (string, json.RawMessage, error) {
	rs, key, err := enterStep(ctx, id, plain == nil && inTx == nil)
	if err != nil {
		return id, nil, err
	}
	out, err := rs.step(ctx, key, kind, plain, inTx)
	return key, out, err
}

// SleepUntil suspends the run until until() (evaluated once, when the sleep
// first begins).
func SleepUntil(ctx context.Context, id string, until func() time.Time) error {
	return sleepUntil(ctx, id, until)
}

// WaitForEvent waits for the first event named event, matching ifExpr,
// committed after the wait began, or returns an error wrapping
// failure.ErrEventTimeout after timeout.
func WaitForEvent(ctx context.Context, id, event, ifExpr string, timeout time.Duration) (string, store.Event, error) {
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return id, store.Event{}, err
	}
	if event == "" {
		return key, store.Event{}, failure.NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.Event is required", key))
	}
	if timeout <= 0 {
		return key, store.Event{}, failure.NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.Timeout is required", key))
	}
	if ifExpr != "" {
		if err := checkFilter(rs.e.cfg.Exprs, ifExpr, expr.EventAndAsync); err != nil {
			return key, store.Event{}, failure.NonRetriable(fmt.Errorf("durable: WaitForEvent %q: WaitOpts.If: %w", key, err))
		}
	}
	w := wait{event: event, ifExpr: ifExpr}
	raw, err := rs.waitingStep(ctx, key, "wait", nil, func(row *stepRow) suspendHook {
		// A wait on an event the library emits (durable/function.*) needs
		// those events stored from before it begins.
		if strings.HasPrefix(event, failure.ReservedPrefix) {
			if err := rs.e.router.ListenName(ctx, event); err != nil {
				rs.stop(ctx, fmt.Errorf("durable: WaitForEvent %q: %w", key, err))
			}
		}
		// The wait begins now: events committed from here on are its.
		var snapshot string
		var began time.Time
		if err := rs.e.pool.QueryRow(ctx, rs.e.q.WaitBegins).Scan(&snapshot, &began); err != nil {
			rs.stop(ctx, fmt.Errorf("durable: WaitForEvent %q: %w", key, err))
		}
		if h, ok := TestHookWaitBegan.Load(rs.def.ID); ok {
			h.(func(json.RawMessage))(rs.trigger.Data)
		}
		wake := *row.WakeAt
		return suspendHook{row: row, fn: func(ctx context.Context, tx pgx.Tx) (bool, error) {
			return rs.registerWait(ctx, tx, row, w, snapshot, began, wake)
		}}
	}, timeout)
	if err != nil {
		return key, store.Event{}, err
	}
	var ev store.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return key, store.Event{}, failure.NonRetriable(fmt.Errorf("durable: WaitForEvent %q: decoding event: %w", key, err))
	}
	return key, ev, nil
}

// wait is what a WaitForEvent waits for.
type wait struct{ event, ifExpr string }

// Invoke starts a run of function with data as its event's data, as a
// child of this run, and waits for its result (timeout 0: no timeout).
func Invoke(ctx context.Context, id, function string, data any, timeout time.Duration) (string, json.RawMessage, error) {
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return id, nil, err
	}
	if timeout <= 0 {
		timeout = noTimeout
	}
	check := func() error {
		if function == "" {
			return failure.NonRetriable(fmt.Errorf("durable: Invoke %q: InvokeOpts.Function is required", key))
		}
		cfg, err := rs.e.router.FunctionConfig(ctx, rs.e.pool, function)
		if err == nil && cfg.System {
			return failure.NonRetriable(fmt.Errorf("durable: Invoke %q: %w", key, failure.ReservedFunction(function)))
		}
		if err != nil {
			if errors.Is(err, failure.ErrFunctionNotFound) {
				// Retrying cannot make the function exist: fail now.
				return failure.NonRetriable(fmt.Errorf("durable: Invoke %q of %q: %w", key, function, err))
			}
			return fmt.Errorf("durable: Invoke %q of %q: %w", key, function, err)
		}
		return nil
	}
	raw, err := rs.waitingStep(ctx, key, "invoke", check, func(row *stepRow) suspendHook {
		return suspendHook{row: row, fn: func(ctx context.Context, tx pgx.Tx) (bool, error) {
			return false, rs.startChild(ctx, tx, row, function, data)
		}}
	}, timeout)
	return key, raw, err
}

// SendEvent sends the events prepare returns (given the largest event
// data allowed) as a step: in the step's own transaction, so replays and
// crashes never send twice. It returns the events' IDs as JSON.
func SendEvent(ctx context.Context, id string, prepare func(maxEventSize int) ([]store.Event, error)) (string, json.RawMessage, error) {
	rs, key, err := enterStep(ctx, id, false)
	if err != nil {
		return id, nil, err
	}
	prepared, err := prepare(rs.e.cfg.MaxEventSize)
	if err != nil {
		return key, nil, failure.NonRetriable(fmt.Errorf("durable: SendEvent %q: %w", key, err))
	}
	raw, err := rs.step(ctx, key, "send", nil, func(ctx context.Context, tx pgx.Tx) (json.RawMessage, error) {
		ids, _, err := rs.e.router.Send(ctx, tx, prepared, true)
		if err != nil {
			return nil, err
		}
		return json.Marshal(ids)
	})
	return key, raw, err
}

// checkFilter compiles a boolean filter expression.
func checkFilter(c *expr.Cache, src string, vars expr.Vars) error {
	p, err := c.Compile(src, vars)
	if err != nil {
		return err
	}
	if !p.OutputIsBoolOrDyn() {
		return fmt.Errorf("expression %q does not evaluate to a bool", src)
	}
	return nil
}
