package executor

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/internal/telemetry"
)

// What an attempt tells telemetry and the log. Without a TracerProvider
// or MeterProvider (e.tel nil), the hot path pays one nil check per
// attempt and per step, and allocates nothing for telemetry.

// beginAttempt starts the attempt's span (a durable.run span, linked to
// the trace context stored with the run's first event, which every
// attempt reads again: the link survives sleeps, waits and crashes) and
// returns ctx holding it, so that the step spans, and the runs this
// attempt invokes, are its children.
func (rs *runState) beginAttempt(ctx context.Context, lr *loadedRun) context.Context {
	t := rs.e.tel
	if !t.Tracing() {
		return ctx
	}
	var trigger *store.TraceContext
	if len(lr.events) > 0 {
		trigger = lr.events[0].Trace
	}
	ctx, rs.span = t.StartRun(ctx, rs.def.ID, rs.runID, lr.fnAttempts+1, trigger)
	return ctx
}

// firstClaim counts a run's first claim (it was queued) and its wait
// since it was created; age is that wait in seconds, as the database
// measured it.
func (rs *runState) firstClaim(ctx context.Context, age float64) {
	rs.e.tel.RunStarted(ctx, rs.def.ID, time.Duration(age*float64(time.Second)))
}

// endAttempt ends the attempt's span, if any, saying how the attempt
// ended, and returns o.
func (rs *runState) endAttempt(o outcome) outcome {
	span := rs.span
	if span == nil {
		return o
	}
	outcomeName := rs.endStatus
	switch {
	case outcomeName != "":
	case rs.attemptErr != nil:
		outcomeName = "retrying" // the function failed and is retried from the top
	case o.kind == outDone || o.kind == outResume:
		outcomeName = "suspended"
	case o.kind == outCancelled:
		outcomeName = "cancelled"
	case o.kind == outLeaseLost:
		outcomeName = "lease_lost"
	case o.kind == outShutdown:
		outcomeName = "handed_back"
	case o.kind == outRequeue:
		outcomeName = "requeued"
	default:
		outcomeName = "error"
	}
	span.SetAttributes(telemetry.AttrOutcome.String(outcomeName))
	switch {
	case rs.attemptErr != nil:
		telemetry.Fail(span, rs.attemptErr)
	case o.kind == outTransient && o.err != nil:
		telemetry.Fail(span, o.err)
	}
	span.End()
	return o
}

// runEnded records that this attempt ended the run with status
// (completed or failed; err is the failure): the metric, the failed
// attempt's span, and for a failure the one log line an operator needs:
// function, run, the step whose failure failed the run (if one did) and
// the error.
func (rs *runState) runEnded(ctx context.Context, status string, err error) {
	rs.endStatus, rs.attemptErr = status, err
	if rs.e.tel != nil {
		rs.e.tel.RunEnded(ctx, rs.def.ID, status)
	}
	if status != store.RunFailed {
		return
	}
	step := ""
	var sf *failure.StepFailed
	var fr *failure.FailsRun
	switch {
	case errors.As(err, &sf):
		step = sf.StepID
	case errors.As(err, &fr):
		rs.mu.Lock()
		step = rs.failedStep
		rs.mu.Unlock()
	}
	attrs := []any{"function_id", rs.def.ID, "run_id", rs.runID}
	if step != "" {
		attrs = append(attrs, "step", step)
	}
	attrs = append(attrs, "error", failure.RunText(err))
	rs.e.logger.ErrorContext(ctx, "durable: run failed", attrs...)
}

// fnRetrying records a function-level failure that is retried from the
// top at at (the function's own error, not a step's).
func (rs *runState) fnRetrying(ctx context.Context, err error, at time.Time) {
	rs.attemptErr = err
	if rs.e.logger.Enabled(ctx, slog.LevelDebug) {
		rs.e.logger.DebugContext(ctx, "durable: function failed; retrying it from the top",
			"function_id", rs.def.ID, "run_id", rs.runID, "attempt", rs.fnAttempts, "error", failure.RunText(err), "retry_at", at)
	}
}

// stepRetrying logs (at Debug) a failed step attempt that will be retried
// at at.
func (rs *runState) stepRetrying(ctx context.Context, key string, attempt int, err error, at time.Time) {
	if rs.e.logger.Enabled(ctx, slog.LevelDebug) {
		rs.e.logger.DebugContext(ctx, "durable: step failed; retrying",
			"function_id", rs.def.ID, "run_id", rs.runID, "step", key, "attempt", attempt,
			"error", failure.Message(failure.StepText(err)), "retry_at", at)
	}
}

// noteFailedStep remembers the step whose final failure the function got
// (named when the run fails of it); rs.mu must be held.
func (rs *runState) noteFailedStep(key string) { rs.failedStep = key }

// stepObs is what telemetry keeps of one executed step attempt; its zero
// value (telemetry off) does nothing.
type stepObs struct {
	span  trace.Span
	start time.Time
	err   error // the attempt's failure, once known
}

// beginStep starts observing an executed step attempt (attempt is
// 1-based): its span, a child of ctx's (the attempt's), in the context
// returned, which the step's body gets.
func (rs *runState) beginStep(ctx context.Context, o *stepObs, key string, attempt int) context.Context {
	t := rs.e.tel
	o.start = time.Now()
	if t.Tracing() {
		ctx, o.span = t.StartStep(ctx, rs.def.ID, rs.runID, key, attempt)
	}
	return ctx
}

// endStep ends a step attempt's observation: its duration, and its span
// (with its error, if it failed). It is deferred, so that an attempt that
// stops inside the step (runtime.Goexit) ends the span too.
func (rs *runState) endStep(ctx context.Context, o *stepObs) {
	rs.e.tel.StepDone(ctx, rs.def.ID, time.Since(o.start))
	if o.span == nil {
		return
	}
	if o.err != nil {
		telemetry.Fail(o.span, o.err)
	}
	o.span.End()
}
