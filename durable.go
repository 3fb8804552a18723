package durable

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgdurable/durable/internal/executor"
	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/maintenance"
	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/internal/riverbridge"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/internal/telemetry"
	"github.com/pgdurable/durable/riverjobs"
)

// DefaultQueue is the River queue durable runs are inserted into unless
// [Config.Queue] says otherwise.
const DefaultQueue = "durable"

// Default limits and settings; see [Config].
const (
	DefaultMaxWorkers    = 100
	DefaultRecoverAfter  = 30 * time.Second
	DefaultMaxEventSize  = 512 << 10
	DefaultMaxStepOutput = 4 << 20
	DefaultMaxRunState   = 32 << 20
	DefaultMaxSteps      = 1000
	DefaultRetries       = 4
)

// Default retention (see [Retention]).
const (
	DefaultRetainCompleted = 7 * 24 * time.Hour
	DefaultRetainFailed    = 30 * 24 * time.Hour
	DefaultRetainCancelled = 7 * 24 * time.Hour
	DefaultRetainEvents    = 7 * 24 * time.Hour
	DefaultRetainInterval  = time.Minute
)

// Config configures a [Client].
type Config struct {
	// Functions this process can execute. May be empty: a send-only client
	// (an API server, say) sends events and reads runs, and the functions
	// run on the processes that have them.
	Functions []Function
	// Logger receives the library's logs. Defaults to slog.Default().
	Logger *slog.Logger
	// MaxWorkers is the number of runs executing at once in this process.
	// Sleeping and waiting runs do not count. Defaults to 100.
	MaxWorkers int
	// Schema is the Postgres schema of the library's and River's tables
	// (see migrate.Up). Defaults to "durable".
	Schema string

	// RetryBackoff is the delay before retry number n (1-based) of a failed
	// step. Defaults to exponential backoff with jitter, starting in
	// seconds: about 10s, 20s, 40s, 80s, ... capped at 12 hours, each plus
	// up to 20% jitter.
	RetryBackoff func(n int) time.Duration
	// RecoverAfter bounds how long a run whose worker process died waits
	// before another process resumes it: a process heartbeats every
	// RecoverAfter/5, and a run attempt held by a process whose heartbeat
	// is older than RecoverAfter is handed to another. A live process is
	// never interrupted, however long its step runs. Defaults to 30 seconds.
	RecoverAfter time.Duration

	// Queue is the River queue durable runs go to. Defaults to "durable".
	Queue string
	// ExternalRiver, when true, means the app's own River client works
	// durable's jobs: register them on its river.Workers with
	// [Client.AddWorkers] and give that client the queue [Config.Queue].
	// Start then runs only durable's own upkeep (heartbeats, recovery,
	// punctual wake-ups). Defaults to false: the client runs an internal
	// River client with MaxWorkers workers.
	ExternalRiver bool
	// MaxEventSize caps the JSON size of an event's data. Defaults to 512 KiB.
	MaxEventSize int
	// MaxStepOutput caps the JSON size of one step's output. Defaults to 4 MiB.
	MaxStepOutput int
	// MaxRunState caps the total JSON size of a run's step outputs.
	// Defaults to 32 MiB.
	MaxRunState int
	// MaxSteps caps the number of steps of one run. Defaults to 1000.
	MaxSteps int

	// Retention prunes ended runs, old events, expired idempotency keys
	// and cron ticks (see [Retention]). The zero value is every default:
	// pruning is on, once a minute.
	Retention Retention
	// TracerProvider receives the spans of run attempts ("durable.run")
	// and executed steps ("durable.step"), and makes Send, SendTx, Invoke
	// and SendEvent store the trace context of their ctx with the event:
	// the spans of the runs it starts link to it. Give it to the clients
	// that send as well as to those that execute. nil: no spans, and no
	// trace context stored. See the README's "Telemetry and logs".
	TracerProvider trace.TracerProvider
	// MeterProvider receives the library's metrics (named durable.*,
	// with the attribute durable.function_id), among them the backlog
	// gauges a started client reads from the database every 15 seconds.
	// nil: no metrics, and no backlog query.
	MeterProvider metric.MeterProvider
}

// Retention prunes ended runs (with their steps), events no run or wait
// still needs, and expired idempotency keys and cron ticks, in batches,
// every Interval, from one process at a time. Zero means the default; a
// negative duration keeps forever. Running, sleeping and waiting runs are
// never pruned.
//
// Every process that executes functions (Start with Functions) sweeps
// every Interval, unless another process of the schema is sweeping (an
// advisory lock; it then skips that sweep); a negative Interval means this
// process never sweeps. A run is pruned once its status's duration has
// passed since it ended, with its steps; queued and running runs
// (sleeping, waiting and retrying included) never are. An event is pruned
// once Events has passed since it was received, unless it is a system
// event not yet routed or the trigger of a queued or running run; events
// younger than an hour and a quarter never are, whatever Events says (a
// WaitForEvent being registered may read events up to an hour older than
// itself). Idempotency keys go once expired (24 hours after their run was
// created), cron ticks once older than Completed and at least 7 days (or
// never when Completed is negative). River's own job rows are left to
// River's job cleaner.
type Retention struct {
	Completed time.Duration // default 7 days (also applies to skipped runs)
	Failed    time.Duration // default 30 days
	Cancelled time.Duration // default 7 days
	Events    time.Duration // default 7 days; below 24h it also shortens the event-ID dedupe window
	Interval  time.Duration // default 1 minute
}

// withDefaults fills in the zero durations.
func (r Retention) withDefaults() Retention {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&r.Completed, DefaultRetainCompleted)
	def(&r.Failed, DefaultRetainFailed)
	def(&r.Cancelled, DefaultRetainCancelled)
	def(&r.Events, DefaultRetainEvents)
	def(&r.Interval, DefaultRetainInterval)
	return r
}

// Client sends events, executes functions and reads runs.
type Client struct {
	pool          *pgxpool.Pool
	cfg           Config
	schema        string
	q             *store.Queries
	router        *router.Router
	exec          *executor.Executor
	maint         *maintenance.Services
	river         *river.Client[pgx.Tx]
	funcs         map[string]*funcDef
	exprs         *expr.Cache
	logger        *slog.Logger
	workerID      string
	notifyChannel string
	notifyPayload string

	mu      sync.Mutex
	started bool
	stopped bool
}

// NewClient builds a client. It checks every function and option and
// reports all problems found, naming the function and field; options that
// are part of the API but not implemented yet are rejected with an error
// wrapping [ErrNotSupported].
func NewClient(pool *pgxpool.Pool, config *Config) (*Client, error) {
	if pool == nil {
		return nil, errors.New("durable: NewClient: pool is nil")
	}
	cfg := Config{}
	if config != nil {
		cfg = *config
	}
	schema, err := pgident.Schema(cfg.Schema)
	if err != nil {
		return nil, fmt.Errorf("durable: Config.Schema: %w", err)
	}
	cfg.Schema = schema
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var errs []error
	setDefault := func(v *int, def int, field string) {
		if *v < 0 {
			errs = append(errs, fmt.Errorf("durable: Config.%s must not be negative", field))
		}
		if *v == 0 {
			*v = def
		}
	}
	setDefault(&cfg.MaxWorkers, DefaultMaxWorkers, "MaxWorkers")
	setDefault(&cfg.MaxEventSize, DefaultMaxEventSize, "MaxEventSize")
	setDefault(&cfg.MaxStepOutput, DefaultMaxStepOutput, "MaxStepOutput")
	setDefault(&cfg.MaxRunState, DefaultMaxRunState, "MaxRunState")
	setDefault(&cfg.MaxSteps, DefaultMaxSteps, "MaxSteps")
	if cfg.RecoverAfter < 0 {
		errs = append(errs, errors.New("durable: Config.RecoverAfter must not be negative"))
	}
	if cfg.RecoverAfter == 0 {
		cfg.RecoverAfter = DefaultRecoverAfter
	}
	if cfg.RecoverAfter > 0 && cfg.RecoverAfter < 500*time.Millisecond {
		errs = append(errs, errors.New("durable: Config.RecoverAfter must be at least 500ms"))
	}
	if cfg.RetryBackoff == nil {
		cfg.RetryBackoff = DefaultRetryBackoff
	}
	cfg.Retention = cfg.Retention.withDefaults()
	if cfg.Queue == "" {
		cfg.Queue = DefaultQueue
	}

	c := &Client{
		pool:          pool,
		cfg:           cfg,
		schema:        schema,
		funcs:         map[string]*funcDef{},
		exprs:         &expr.Cache{},
		logger:        cfg.Logger,
		workerID:      workerID(),
		notifyChannel: schema + ".river_insert",
		notifyPayload: fmt.Sprintf(`{"queue": %q}`, cfg.Queue),
	}
	for i, f := range cfg.Functions {
		if f == nil {
			errs = append(errs, fmt.Errorf("durable: Config.Functions[%d] is nil", i))
			continue
		}
		d := f.def()
		if err := c.checkFunction(d); err != nil {
			errs = append(errs, err)
			continue
		}
		defs := []*funcDef{d}
		if d.opts.OnFailure != nil {
			defs = append(defs, failureHandler(d))
		}
		for _, d := range defs {
			if _, dup := c.funcs[d.opts.ID]; dup {
				errs = append(errs, fmt.Errorf("durable: two functions have the ID %q", d.opts.ID))
				continue
			}
			d.exec = &executor.Function{ID: d.opts.ID, Retries: d.retries(), Call: d.call, Flow: d.config()}
			if cp := d.opts.Checkpointing; cp != nil {
				d.exec.BufferedSteps, d.exec.MaxInterval, d.exec.MaxRuntime = cp.BufferedSteps, cp.MaxInterval, cp.MaxRuntime
			}
			c.funcs[d.opts.ID] = d
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if c.q, err = store.Load(schema); err != nil {
		return nil, err
	}
	if err := c.checkMigratedAtBuild(); err != nil {
		return nil, err
	}

	riverCfg := &river.Config{
		ID:                   c.workerID,
		Schema:               schema,
		Logger:               riverbridge.QuietLogger(cfg.Logger),
		FetchCooldown:        2 * time.Millisecond,
		FetchPollInterval:    time.Second,
		JobTimeout:           -1,
		RescueStuckJobsAfter: 100 * 365 * 24 * time.Hour, // durable detects dead workers itself
		MaxAttempts:          1000,
		RetryPolicy:          executor.RetryPolicy{},
	}
	if len(c.funcs) > 0 && !cfg.ExternalRiver {
		workers := river.NewWorkers()
		if err := c.AddWorkers(workers); err != nil {
			return nil, err
		}
		riverCfg.Workers = workers
		riverCfg.Queues = map[string]river.QueueConfig{cfg.Queue: {MaxWorkers: cfg.MaxWorkers}}
	}
	c.river, err = river.NewClient(riverpgxv5.New(pool), riverCfg)
	if err != nil {
		return nil, fmt.Errorf("durable: river client: %w", err)
	}
	// nil without providers: no spans, no metrics, a nil check.
	tel, err := telemetry.New(cfg.TracerProvider, cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("durable: Config.MeterProvider: %w", err)
	}
	c.router = router.New(router.Config{
		Pool: pool, Queries: c.q, Exprs: c.exprs, Logger: cfg.Logger, River: c.river, Telemetry: tel,
		Queue: cfg.Queue, Schema: schema, KickRouter: func() { c.maint.KickRouter() }, RecoverAfter: cfg.RecoverAfter,
		KickWaker: func(t time.Time) { c.maint.KickWaker(t) },
		Local: func(id string) (store.FunctionConfig, bool) {
			if d, ok := c.funcs[id]; ok {
				return d.config(), true
			}
			return store.FunctionConfig{}, false
		},
	})
	free, reserved := c.claimable()
	c.exec = executor.New(executor.Config{
		Pool: pool, Queries: c.q, Router: c.router, River: c.river, Exprs: c.exprs, Logger: cfg.Logger,
		Schema: schema, WorkerID: c.workerID, Queue: cfg.Queue, RecoverAfter: cfg.RecoverAfter, RetryBackoff: cfg.RetryBackoff,
		MaxSteps: cfg.MaxSteps, MaxStepOutput: cfg.MaxStepOutput, MaxRunState: cfg.MaxRunState, MaxEventSize: cfg.MaxEventSize,
		Function: func(id string) *executor.Function {
			if d, ok := c.funcs[id]; ok {
				return d.exec
			}
			return nil
		},
		Claimable: free, Reserved: reserved,
		KickWaker: func(t time.Time) { c.maint.KickWaker(t) }, KickRouter: func() { c.maint.KickRouter() },
		NoteAttempter: func(ctx context.Context, id string) error { return c.maint.NoteAttempter(ctx, id) },
		Telemetry:     tel,
	})
	var crons []maintenance.Cron
	for _, d := range c.funcs {
		for _, t := range d.opts.Triggers {
			if t.Cron != "" {
				crons = append(crons, maintenance.Cron{FunctionID: d.opts.ID, Spec: t.Cron, Config: d.config()})
			}
		}
	}
	c.maint = maintenance.New(maintenance.Config{
		Pool: pool, Queries: c.q, Router: c.router, Logger: cfg.Logger,
		WorkerID: c.workerID, Queue: cfg.Queue, RecoverAfter: cfg.RecoverAfter, Crons: crons, Telemetry: tel,
		Retention: maintenance.Retention{Completed: cfg.Retention.Completed, Failed: cfg.Retention.Failed,
			Cancelled: cfg.Retention.Cancelled, Events: cfg.Retention.Events, Interval: cfg.Retention.Interval},
	})
	return c, nil
}

// runExecutor is the riverjobs.Executor of a client: the River worker is
// registered before the executor is built.
type runExecutor struct{ c *Client }

func (r runExecutor) ExecuteRun(ctx context.Context, job *river.Job[riverjobs.RunArgs]) error {
	return r.c.exec.ExecuteRun(ctx, job)
}

// AddWorkers registers the worker that executes durable runs on workers,
// for apps whose own River client works durable's jobs (see
// [Config.ExternalRiver]). That River client must use the same schema and
// have the queue [Config.Queue]; set its RescueStuckJobsAfter high (durable
// recovers runs of dead processes itself, after RecoverAfter).
func (c *Client) AddWorkers(workers *river.Workers) error {
	return river.AddWorkerSafely(workers, &riverjobs.RunWorker{Exec: runExecutor{c}})
}

// DefaultRetryBackoff is the default [Config.RetryBackoff]: 10s doubling
// per retry, capped at 12 hours, plus up to 20% jitter.
func DefaultRetryBackoff(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := 10 * time.Second
	for i := 1; i < n && d < 12*time.Hour; i++ {
		d *= 2
	}
	d = min(d, 12*time.Hour)
	return d + time.Duration(float64(d)*0.2*rand.Float64())
}

// Start begins executing runs of the configured functions: it registers
// them (see [Client.Register]), starts the River workers and the upkeep
// loops. ctx bounds starting only: cancelling it later stops nothing (only
// [Client.Stop] does). It is a no-op for a client without functions.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("durable: Start after Stop: build a new client")
	}
	if c.started || len(c.funcs) == 0 {
		return nil
	}
	if err := c.register(ctx); err != nil {
		return err
	}
	if err := c.recordWorkers(ctx); err != nil {
		return fmt.Errorf("durable: registering this process: %w", c.explain(err))
	}
	if err := c.maint.Heartbeat(ctx); err != nil {
		return fmt.Errorf("durable: heartbeat: %w", c.explain(err))
	}
	// River works its jobs under the context given to its Start: run it on
	// one that only Stop ends, so that a cancelled start context never
	// leaves a process that heartbeats but fetches nothing.
	run := context.WithoutCancel(ctx)
	if !c.cfg.ExternalRiver {
		if err := c.river.Start(run); err != nil {
			return fmt.Errorf("durable: starting river: %w", c.explain(err))
		}
	}
	if err := c.maint.Start(run); err != nil {
		return fmt.Errorf("durable: heartbeat: %w", c.explain(err))
	}
	c.started = true
	return nil
}

// Register records the client's functions and their triggers in the
// database without executing anything (Start does it too), so that a
// process that holds the definitions (an API server, say) routes events to
// them before any worker runs. An event sent before any process
// registered a function it triggers starts no run of it.
//
// It fails with an error saying to run migrate.Up when the schema was
// never migrated.
func (c *Client) Register(ctx context.Context) error {
	if len(c.funcs) == 0 {
		return nil
	}
	return c.register(ctx)
}

// Stop stops executing runs. Runs in flight finish the step they are
// executing and are handed back at their next step boundary, for this or
// another process to continue without waiting for a recovery.
//
// Stop returns by ctx's deadline (for a ctx cancelled without a deadline,
// within about two seconds of the cancellation), even when a step ignores
// its context. Shortly before the deadline, the steps' contexts are
// cancelled and every attempt still running is abandoned: its run is
// handed back at once (fenced: the abandoned step, still running in its
// goroutine, can never record anything afterwards, its StepTx rolls back)
// and another process takes the run over at once; the step's work is done
// again there. Stop then returns an error wrapping ctx's.
func (c *Client) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || c.stopped {
		c.stopped = true
		c.router.Stop() // a send-only client's pending notification
		return nil
	}
	c.stopped = true
	c.exec.SetStopping()
	// grace ends a little before ctx's deadline, leaving time to hand the
	// abandoned runs back; cleanup ends at the deadline.
	grace, cancelGrace := graceContext(ctx)
	defer cancelGrace()
	cleanup, cancelCleanup := cleanupContext(ctx)
	defer cancelCleanup()
	var stopErr error
	if !c.cfg.ExternalRiver {
		if err := c.river.Stop(grace); err != nil {
			c.exec.Abandon()
			stopErr = c.river.StopAndCancel(cleanup)
			if stopErr == nil {
				stopErr = fmt.Errorf("durable: Stop: attempts still running at the deadline were abandoned and their runs handed back: %w", context.Cause(grace))
			}
		}
	} else {
		for c.exec.Active() > 0 && grace.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if c.exec.Active() > 0 {
			c.exec.Abandon()
			for c.exec.Active() > 0 && cleanup.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			stopErr = fmt.Errorf("durable: Stop: attempts still running at the deadline were abandoned and their runs handed back: %w", context.Cause(grace))
		}
	}
	// Every loop stops, and this process's heartbeats go, so that anything
	// it left running is recovered at once rather than after RecoverAfter.
	if err := c.maint.Stop(cleanup); err != nil && stopErr == nil {
		stopErr = err
	}
	c.router.Stop()
	return stopErr
}

// graceContext ends when ctx does, or a margin before ctx's deadline: a
// quarter of the time left, at most two seconds.
func graceContext(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	margin := min(time.Until(dl)/4, 2*time.Second)
	return context.WithDeadline(ctx, dl.Add(-margin))
}

// cleanupContext ends at ctx's deadline, or two seconds after ctx ends
// when it has none.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(context.WithoutCancel(ctx), dl)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		time.AfterFunc(2*time.Second, cancel)
	})
	return cctx, func() { stop(); cancel() }
}

func (c *Client) register(ctx context.Context) error {
	if err := c.checkMigrated(ctx); err != nil {
		return err
	}
	return c.explain(c.registerFunctions(ctx))
}

func (c *Client) registerFunctions(ctx context.Context) error {
	fns := make([]store.FunctionRecord, 0, len(c.funcs))
	for _, d := range c.funcs {
		r := store.FunctionRecord{ID: d.opts.ID, Name: d.opts.Name, Retries: d.retries(), Config: d.config()}
		for _, t := range d.opts.Triggers {
			r.Triggers = append(r.Triggers, store.TriggerRecord{Event: t.Event, If: t.If, Cron: t.Cron})
		}
		fns = append(fns, r)
	}
	return c.q.RegisterFunctions(ctx, c.pool, fns)
}

func (d *funcDef) retries() int {
	if d.opts.Retries == nil {
		return DefaultRetries
	}
	return *d.opts.Retries
}

func workerID() string {
	host, _ := os.Hostname()
	if len(host) > 40 {
		host = host[:40]
	}
	return fmt.Sprintf("%s_%d_%s", host, os.Getpid(), ids.New()[16:])
}
