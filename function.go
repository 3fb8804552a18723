package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/pgdurable/durable/internal/executor"
	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/store"
)

// Function is a durable function defined with [NewFunction]. Pass it to
// [Config.Functions] so that a client can execute it.
type Function interface {
	// ID returns the function's stable identifier.
	ID() string

	def() *funcDef
}

// FunctionOpts configures a durable function.
type FunctionOpts struct {
	// ID is required and must stay stable forever: runs and steps are keyed
	// by it.
	ID string
	// Name is a display name. Defaults to ID.
	Name string
	// Triggers start runs: events (optionally filtered by a CEL expression)
	// or cron schedules. At most 10. A function without triggers can only be
	// invoked ([Client.Invoke], [Invoke]).
	Triggers []Trigger
	// Retries is the number of retries per step (attempts = Retries+1), and
	// the number of times the function is retried from the top after
	// returning an error. nil means 4; Ptr(0) means none.
	Retries *int
	// Concurrency limits how many attempts execute at once, across every
	// process sharing the database. At most 2 (a run must fit both).
	Concurrency []Concurrency
	// Idempotency is a CEL expression over `event`; one run per distinct
	// value per 24 hours, across processes (decided in the transaction that
	// creates the run). An expression that fails to evaluate for an event
	// starts the run without a key (and logs a warning).
	Idempotency string
	// CancelOn lists events that cancel a run. At most 5.
	CancelOn []CancelOn
	// Timeouts cancel runs that start or finish too late.
	Timeouts Timeouts
	// OnFailure, when set, runs once per failed run of this function, after
	// its retries are exhausted, as a durable function of its own (it may
	// use steps). Its function ID is this ID + "/on-failure".
	OnFailure func(ctx context.Context, in Input[FailureData]) error

	// Flow control (see flow.go): runs over a limit wait or are recorded
	// as skipped, never silently dropped.
	Throttle  *Throttle
	RateLimit *RateLimit
	Debounce  *Debounce
	Batch     *Batch
	Priority  *Priority
	Singleton *Singleton
	// Checkpointing trades the durability of plain steps for fewer
	// commits, and bounds an attempt's runtime. nil: every step commits.
	Checkpointing *Checkpointing
}

// FailureData is what an OnFailure handler receives about the failed run.
type FailureData struct {
	FunctionID, RunID string
	Error             string
	// Event is the failed run's triggering event in its JSON form
	// {"id", "name", "data", "ts"}.
	Event json.RawMessage
}

// failureHandler builds the function that runs d's OnFailure handler.
func failureHandler(d *funcDef) *funcDef {
	handler := d.opts.OnFailure
	type payload struct {
		FunctionID string          `json:"function_id"`
		RunID      string          `json:"run_id"`
		Error      string          `json:"error"`
		Event      json.RawMessage `json:"event"`
	}
	f := NewFunction(FunctionOpts{
		ID:       d.opts.ID + "/on-failure",
		Name:     d.opts.Name + " (on failure)",
		Triggers: []Trigger{{Event: EventFunctionFailed, If: "event.data.function_id == " + strconv.Quote(d.opts.ID)}},
		Retries:  d.opts.Retries,
	}, func(ctx context.Context, in Input[payload]) (struct{}, error) {
		p := in.Event.Data
		fd := FailureData{FunctionID: p.FunctionID, RunID: p.RunID, Error: p.Error, Event: p.Event}
		typed := Input[FailureData]{RunID: in.RunID, FunctionID: in.FunctionID, Attempt: in.Attempt,
			Event: TypedEvent[FailureData]{ID: in.Event.ID, Name: in.Event.Name, Data: fd, Timestamp: in.Event.Timestamp}}
		typed.Events = []TypedEvent[FailureData]{typed.Event}
		return struct{}{}, handler(ctx, typed)
	})
	fd := f.def()
	fd.system = true
	return fd
}

// Concurrency limits the attempts of a function that execute at once,
// across every process sharing the database. Sleeping, waiting and
// backing-off runs hold no slot (they take one again to resume). Over the
// limit, work waits (FIFO per key, oldest run first, Priority applied);
// nothing is dropped. A process that dies holding slots gives them back
// within Config.RecoverAfter.
type Concurrency struct {
	Limit int              // attempts executing at once (sleeping, waiting, backing-off runs do not count)
	Key   string           // optional CEL over `event`; the limit applies per distinct value
	Scope ConcurrencyScope // "" or ScopeFunction: per function; ScopeShared: shared by every function whose Key yields the same value
}

// CancelOn names an event that cancels a run.
type CancelOn struct {
	Event   string        // event name that cancels the run
	If      string        // CEL over `event` (the run's trigger) and `async` (the new event)
	Timeout time.Duration // optional: stop listening after this long
}

// Timeouts bound how long a run may wait to start and to finish.
type Timeouts struct {
	Start  time.Duration // cancel if not started within this long after being triggered
	Finish time.Duration // cancel if not finished within this long after starting
}

// Ptr returns a pointer to v, for optional fields such as
// [FunctionOpts.Retries].
func Ptr[T any](v T) *T { return &v }

// Input is what a function receives.
type Input[T any] struct {
	Event      TypedEvent[T]   // the triggering event (for cron: a "durable/scheduled.timer" event)
	Events     []TypedEvent[T] // all triggering events (more than one only with batching)
	RunID      string
	FunctionID string
	Attempt    int // 0-based attempt of the step currently being executed
}

// TypedEvent is an event whose data is decoded into T.
type TypedEvent[T any] struct {
	ID        string
	Name      string
	Data      T
	Timestamp time.Time
}

// funcDef is the type-erased form of a function, used by the executor.
type funcDef struct {
	opts   FunctionOpts
	system bool // triggered by the library only (an OnFailure handler)
	// call decodes the run's events, calls the user's function and
	// encodes its result.
	call func(ctx context.Context, events []eventJSON, runID string, attempt int) (json.RawMessage, error)
	// exec is the function as the executor calls it (set by NewClient).
	exec *executor.Function
}

// NewFunction defines a durable function. In is the type of the triggering
// event's data (use map[string]any or json.RawMessage when untyped); Out is
// the function's result, stored as JSON.
//
// Options are checked by [NewClient], which reports every problem with the
// function's ID.
func NewFunction[In, Out any](opts FunctionOpts, fn func(ctx context.Context, in Input[In]) (Out, error)) Function {
	if opts.Name == "" {
		opts.Name = opts.ID
	}
	d := &funcDef{opts: opts}
	d.call = func(ctx context.Context, events []eventJSON, runID string, attempt int) (json.RawMessage, error) {
		in := Input[In]{RunID: runID, FunctionID: opts.ID, Attempt: attempt}
		for i, e := range events {
			te, err := decodeEvent[In](e)
			if err != nil {
				return nil, NonRetriable(fmt.Errorf("durable: function %q: decoding event %q into %T: %w", opts.ID, e.ID, te.Data, err))
			}
			if i == 0 {
				in.Event = te
			}
			in.Events = append(in.Events, te)
		}
		out, err := fn(ctx, in)
		var se *StepError
		if errors.As(err, &se) {
			// A step's final failure the function did not handle fails
			// the run (no retry from the top).
			return nil, &failure.FailsRun{Err: err}
		}
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(out)
		if err != nil {
			return nil, NonRetriable(fmt.Errorf("durable: function %q: encoding result: %w", opts.ID, err))
		}
		return b, nil
	}
	return &function{d: d}
}

type function struct{ d *funcDef }

func (f *function) ID() string    { return f.d.opts.ID }
func (f *function) def() *funcDef { return f.d }

func decodeEvent[T any](e eventJSON) (TypedEvent[T], error) {
	te := TypedEvent[T]{ID: e.ID, Name: e.Name, Timestamp: e.TS}
	if len(e.Data) > 0 && string(e.Data) != "null" {
		if err := json.Unmarshal(e.Data, &te.Data); err != nil {
			return te, err
		}
	}
	return te, nil
}

type funcConfig = store.FunctionConfig

func (d *funcDef) config() funcConfig {
	cfg := funcConfig{
		Idempotency: d.opts.Idempotency,
		StartMS:     d.opts.Timeouts.Start.Milliseconds(),
		FinishMS:    d.opts.Timeouts.Finish.Milliseconds(),
		System:      d.system,
	}
	for _, c := range d.opts.CancelOn {
		cfg.CancelOn = append(cfg.CancelOn, store.CancelOnConfig{Event: c.Event, If: c.If, TimeoutMS: c.Timeout.Milliseconds()})
	}
	d.flowConfig(&cfg)
	return cfg
}

// claimable lists the client's functions whose attempts pass no
// flow-control gate, and those with a single concurrency gate and no
// throttle, whose reserved runs are claimed alike (see
// executor.Config.Claimable and Reserved).
func (c *Client) claimable() (free, reserved []string) {
	free, reserved = []string{}, []string{}
	for id, d := range c.funcs {
		switch f := d.exec.Flow; {
		case !f.Gated():
			free = append(free, id)
		case len(f.Concurrency) == 1 && f.Throttle == nil:
			reserved = append(reserved, id)
		}
	}
	return free, reserved
}
