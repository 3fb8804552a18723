package durable

import (
	"fmt"
	"time"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/store"
)

// ConcurrencyScope says which runs share a [Concurrency] limit's count.
type ConcurrencyScope string

// Concurrency scopes.
const (
	// ScopeFunction counts the function's own attempts, per key value (the
	// default).
	ScopeFunction ConcurrencyScope = "function"
	// ScopeShared counts, per key value, the attempts of every function
	// whose Concurrency has ScopeShared and yields that value; each checks
	// the count against its own Limit.
	ScopeShared ConcurrencyScope = "shared"
)

// Throttle limits run starts: at most Limit per Period per key, spread
// evenly (one every Period/Limit), plus up to Burst more at once after an
// idle spell. Runs over the limit wait, queued (FIFO per key, Priority
// applied); none is dropped. Combine with Timeouts.Start to shed a stale
// backlog. Only a run's first start is throttled: a run resuming after a
// sleep or a wait is not.
type Throttle struct {
	Limit  int
	Period time.Duration
	Burst  int
	Key    string
}

// RateLimit admits at most Limit events per Period per key; an event over
// it starts no function run: its run is recorded as [RunSkipped], with an
// Error naming the rate limit.
type RateLimit struct {
	Limit  int
	Period time.Duration
	Key    string
}

// Debounce delays a run until Period has passed without another matching
// event for the key; the run receives the last event (by its Timestamp: an
// event older than the one held is folded in but not used). Timeout
// (optional) caps the delay counted from the first event. RunsForEvent on
// any event folded into the run returns that run.
type Debounce struct {
	Period  time.Duration
	Key     string
	Timeout time.Duration
}

// Batch collects events into one run: it starts when MaxSize events are
// collected or Timeout has passed since the first. Input.Events holds them
// all in arrival order, Input.Event the first; RunsForEvent on any of them
// returns the batch's run. Events for which If is false run alone at once.
// Batch excludes Idempotency, RateLimit, CancelOn, Debounce, Priority and
// Singleton (NewClient says so).
type Batch struct {
	MaxSize int
	Timeout time.Duration
	Key     string
	If      string
}

// Priority orders runs waiting behind flow control (Concurrency and
// Throttle): Run is CEL over `event` yielding seconds (an int); a run with
// +N starts as if it had been created N seconds earlier. Clamped to ±12
// hours; a result that is not an int counts as 0 (logged).
type Priority struct {
	Run string
}

// Singleton allows one active run (queued, running, sleeping, waiting or
// retrying) per key: SingletonSkip records the newcomer as skipped,
// SingletonCancel cancels the active run (with its cancellation event and
// handlers, as [Client.Cancel]) and starts the newcomer.
type Singleton struct {
	Key  string
	Mode SingletonMode
}

// SingletonMode is what a [Singleton] does with a newcomer while a run is
// active.
type SingletonMode string

// Singleton modes.
const (
	SingletonSkip   SingletonMode = "skip"
	SingletonCancel SingletonMode = "cancel"
)

// Checkpointing trades durability of plain steps for fewer commits. By
// default every step is committed before the next one starts. With
// BufferedSteps > 1, up to that many completed Step results are committed
// together (and at least every MaxInterval); a crash may re-run the
// uncommitted ones. StepTx, sleeps, waits, invokes, SendEvent and the run's
// end always commit everything buffered before them. MaxRuntime bounds how
// long one attempt executes before it hands its slot back and the run
// continues in a new attempt (0: no bound).
type Checkpointing struct {
	BufferedSteps int
	MaxInterval   time.Duration
	MaxRuntime    time.Duration
}

// maxPriority is the clamp of Priority.Run, in seconds.
const maxPriority = 12 * 60 * 60

// checkFlow validates a function's flow-control and checkpointing options;
// every error names the function and the option.
func (c *Client) checkFlow(where string, o FunctionOpts) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("durable: %s: "+format, append([]any{where}, args...)...))
	}
	key := func(field, src string) {
		if src == "" {
			return
		}
		if _, err := c.exprs.Compile(src, expr.EventOnly); err != nil {
			bad("%s: %w", field, err)
		}
	}
	period := func(field string, d time.Duration) {
		if d <= 0 {
			bad("%s must be positive", field)
		} else if d < time.Millisecond {
			bad("%s must be at least 1ms", field)
		}
	}
	if len(o.Concurrency) > maxConc {
		bad("%d Concurrency limits, at most %d are allowed", len(o.Concurrency), maxConc)
	}
	for i, cc := range o.Concurrency {
		field := fmt.Sprintf("Concurrency[%d]", i)
		if cc.Limit <= 0 {
			bad("%s.Limit must be positive", field)
		}
		switch cc.Scope {
		case "", ScopeFunction:
		case ScopeShared:
			if cc.Key == "" {
				bad("%s: ScopeShared needs a Key (the value the functions share)", field)
			}
		default:
			bad("%s.Scope %q is not %q or %q", field, cc.Scope, ScopeFunction, ScopeShared)
		}
		key(field+".Key", cc.Key)
	}
	if t := o.Throttle; t != nil {
		if t.Limit <= 0 {
			bad("Throttle.Limit must be positive")
		}
		if t.Burst < 0 {
			bad("Throttle.Burst must not be negative")
		}
		period("Throttle.Period", t.Period)
		key("Throttle.Key", t.Key)
	}
	if r := o.RateLimit; r != nil {
		if r.Limit <= 0 {
			bad("RateLimit.Limit must be positive")
		}
		period("RateLimit.Period", r.Period)
		key("RateLimit.Key", r.Key)
	}
	if d := o.Debounce; d != nil {
		period("Debounce.Period", d.Period)
		if d.Timeout < 0 {
			bad("Debounce.Timeout must not be negative")
		} else if d.Timeout > 0 && d.Timeout < d.Period {
			bad("Debounce.Timeout (%s) is shorter than Debounce.Period (%s)", d.Timeout, d.Period)
		}
		key("Debounce.Key", d.Key)
	}
	if b := o.Batch; b != nil {
		if b.MaxSize < 1 {
			bad("Batch.MaxSize must be at least 1")
		} else if b.MaxSize > 1000 {
			bad("Batch.MaxSize %d is over the limit of 1000", b.MaxSize)
		}
		period("Batch.Timeout", b.Timeout)
		key("Batch.Key", b.Key)
		if b.If != "" {
			if err := c.checkFilter(b.If, expr.EventOnly); err != nil {
				bad("Batch.If: %w", err)
			}
		}
		for _, x := range []struct {
			set  bool
			name string
		}{{o.Idempotency != "", "Idempotency"}, {o.RateLimit != nil, "RateLimit"}, {len(o.CancelOn) > 0, "CancelOn"},
			{o.Debounce != nil, "Debounce"}, {o.Priority != nil, "Priority"}, {o.Singleton != nil, "Singleton"}} {
			if x.set {
				bad("Batch cannot be combined with %s", x.name)
			}
		}
	}
	if p := o.Priority; p != nil {
		if p.Run == "" {
			bad("Priority.Run is required")
		} else {
			key("Priority.Run", p.Run)
		}
	}
	if s := o.Singleton; s != nil {
		switch s.Mode {
		case SingletonSkip, SingletonCancel:
		case "":
			bad("Singleton.Mode is required (%q or %q)", SingletonSkip, SingletonCancel)
		default:
			bad("Singleton.Mode %q is not %q or %q", s.Mode, SingletonSkip, SingletonCancel)
		}
		key("Singleton.Key", s.Key)
		if o.Debounce != nil {
			bad("Singleton cannot be combined with Debounce")
		}
	}
	if cp := o.Checkpointing; cp != nil {
		if cp.BufferedSteps < 0 {
			bad("Checkpointing.BufferedSteps must not be negative")
		} else if cp.BufferedSteps > 1000 {
			bad("Checkpointing.BufferedSteps %d is over the limit of 1000", cp.BufferedSteps)
		}
		if cp.MaxInterval < 0 {
			bad("Checkpointing.MaxInterval must not be negative")
		}
		if cp.MaxRuntime < 0 {
			bad("Checkpointing.MaxRuntime must not be negative")
		} else if cp.MaxRuntime > 0 && cp.MaxRuntime < 10*time.Millisecond {
			bad("Checkpointing.MaxRuntime must be at least 10ms")
		}
	}
	return errs
}

// flowConfig is the stored form of the options that whoever creates a
// function's runs needs (a send-only process reads them from the registry).
func (d *funcDef) flowConfig(cfg *store.FunctionConfig) {
	o := d.opts
	if t := o.Throttle; t != nil {
		cfg.Throttle = &store.ThrottleConfig{Limit: t.Limit, PeriodMS: t.Period.Milliseconds(), Burst: t.Burst, Key: t.Key}
	}
	if r := o.RateLimit; r != nil {
		cfg.RateLimit = &store.RateLimitConfig{Limit: r.Limit, PeriodMS: r.Period.Milliseconds(), Key: r.Key}
	}
	if db := o.Debounce; db != nil {
		cfg.Debounce = &store.DebounceConfig{PeriodMS: db.Period.Milliseconds(), Key: db.Key, TimeoutMS: db.Timeout.Milliseconds()}
	}
	if b := o.Batch; b != nil {
		cfg.Batch = &store.BatchConfig{MaxSize: b.MaxSize, TimeoutMS: b.Timeout.Milliseconds(), Key: b.Key, If: b.If}
	}
	if p := o.Priority; p != nil {
		cfg.Priority = p.Run
	}
	if s := o.Singleton; s != nil {
		cfg.Singleton = &store.SingletonConfig{Key: s.Key, Mode: string(s.Mode)}
	}
	for _, cc := range o.Concurrency {
		scope := string(cc.Scope)
		if scope == "" {
			scope = string(ScopeFunction)
		}
		cfg.Concurrency = append(cfg.Concurrency, store.ConcurrencyConfig{Limit: cc.Limit, Key: cc.Key, Scope: scope})
	}
}
