package executor

import (
	"context"
	"log/slog"
)

// Logger returns a logger that writes nothing while the run replays code
// that already ran, so each line is logged once per run. Outside a
// function it returns the default logger.
//
// Lines logged outside steps are counted: a replay (after a sleep, a wait,
// an invoke, a retry) skips as many lines as earlier attempts logged, so
// deterministic code logs each line once. A logger obtained inside a step
// body (from the step's context) always logs: the body really runs again
// when the step is retried. A line logged after the last commit of an
// attempt that crashed may be logged again.
func Logger(ctx context.Context) *slog.Logger {
	rs, _ := ctx.Value(runKey{}).(*runState)
	if rs == nil {
		return slog.Default()
	}
	_, inStep := ctx.Value(inStepKey{}).(string)
	return slog.New(replayFilter{rs: rs, h: rs.e.logger.Handler(), inStep: inStep}).With("run_id", rs.runID, "function_id", rs.def.ID)
}

type replayFilter struct {
	rs     *runState
	h      slog.Handler
	inStep bool
}

func (f replayFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return f.h.Enabled(ctx, l)
}

func (f replayFilter) Handle(ctx context.Context, r slog.Record) error {
	if !f.inStep && f.rs.logN.Add(1) <= f.rs.logBefore {
		return nil // logged by an earlier attempt
	}
	return f.h.Handle(ctx, r)
}

func (f replayFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return replayFilter{rs: f.rs, h: f.h.WithAttrs(a), inStep: f.inStep}
}

func (f replayFilter) WithGroup(n string) slog.Handler {
	return replayFilter{rs: f.rs, h: f.h.WithGroup(n), inStep: f.inStep}
}
