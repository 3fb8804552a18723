package durable_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgdurable/durable"
)

// spansOf returns the ended spans named name whose durable.run_id is
// runID, in the order they started.
func spansOf(sr *tracetest.SpanRecorder, name, runID string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.Name() == name && spanAttr(s, "durable.run_id") == runID {
			out = append(out, s)
		}
	}
	for i := 1; i < len(out); i++ { // few spans: insertion sort by start time
		for j := i; j > 0 && out[j].StartTime().Before(out[j-1].StartTime()); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// spanAttr returns a span attribute as a string ("" when absent).
func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// linksTo reports whether s links to the span sc.
func linksTo(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	for _, l := range s.Links() {
		if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}

// TestTelemetrySpans checks the spans of a run with two steps, the second
// failing once: a durable.run span per attempt, linked to the invoker's
// span; a durable.step span per executed step attempt, the child of its
// attempt's span, with the failed attempt's error; no span for the step
// the second attempt replays.
func TestTelemetrySpans(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	var bCalls atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "traced", Retries: durable.Ptr(2)},
		func(ctx context.Context, in durable.Input[M]) (string, error) {
			a, err := durable.Step(ctx, "a", func(ctx context.Context) (string, error) { return "A", nil })
			if err != nil {
				return "", err
			}
			bb, err := durable.Step(ctx, "b", func(ctx context.Context) (string, error) {
				if bCalls.Add(1) == 1 {
					return "", errors.New("flaky b")
				}
				return "B", nil
			})
			return a + bb, err
		})
	c := b.client(durable.Config{Functions: []durable.Function{fn}, TracerProvider: tp})

	sctx, sender := tp.Tracer("test").Start(b.ctx, "invoke")
	runID, err := c.Invoke(sctx, "traced", nil)
	sender.End()
	require.NoError(t, err)
	run := b.waitRun(c, runID, 15*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	require.JSONEq(t, `"AB"`, string(run.Output))

	// The last attempt ends its span just after its commit.
	require.Eventually(t, func() bool {
		runs := spansOf(sr, "durable.run", runID)
		return len(runs) == 2 && spanAttr(runs[1], "durable.outcome") == "completed"
	}, 10*time.Second, 10*time.Millisecond)
	runs := spansOf(sr, "durable.run", runID)
	for i, r := range runs {
		assert.Equal(t, "traced", spanAttr(r, "durable.function_id"))
		assert.Equal(t, "1", spanAttr(r, "durable.attempt"), "function-level attempt")
		assert.True(t, linksTo(r, sender.SpanContext()), "run attempt %d links to the invoker's span", i)
		assert.Equal(t, trace.SpanKindConsumer, r.SpanKind())
	}
	assert.Equal(t, "suspended", spanAttr(runs[0], "durable.outcome"), "the first attempt suspends for b's retry")

	steps := spansOf(sr, "durable.step", runID)
	require.Len(t, steps, 3, "a once (replayed in the second attempt: no span), b twice")
	type want struct {
		id, attempt string
		parent      sdktrace.ReadOnlySpan
		failed      bool
	}
	for i, w := range []want{{"a", "1", runs[0], false}, {"b", "1", runs[0], true}, {"b", "2", runs[1], false}} {
		s := steps[i]
		assert.Equal(t, w.id, spanAttr(s, "durable.step_id"), "step span %d", i)
		assert.Equal(t, w.attempt, spanAttr(s, "durable.attempt"), "step span %d", i)
		assert.Equal(t, "traced", spanAttr(s, "durable.function_id"))
		assert.Equal(t, runID, spanAttr(s, "durable.run_id"))
		assert.Equal(t, w.parent.SpanContext().SpanID(), s.Parent().SpanID(), "step span %d is its attempt's child", i)
		assert.Equal(t, w.parent.SpanContext().TraceID(), s.SpanContext().TraceID())
		if w.failed {
			assert.Equal(t, codes.Error, s.Status().Code)
			assert.Equal(t, "flaky b", s.Status().Description)
			require.NotEmpty(t, s.Events(), "the error is recorded")
			assert.Equal(t, "exception", s.Events()[0].Name)
		} else {
			assert.NotEqual(t, codes.Error, s.Status().Code, "step span %d", i)
		}
	}
}

// TestTelemetryLinksAcrossSleepAndSendEvent checks that the sender's trace
// context is stored with the event and that every attempt of the run
// links to it, also the one after a sleep long enough to go through a new
// River job; and that an event sent by SendEvent carries the step span's
// context to the run it starts.
func TestTelemetryLinksAcrossSleepAndSendEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	sleeper := durable.NewFunction(durable.FunctionOpts{ID: "sleeper", Triggers: []durable.Trigger{{Event: "sleeper/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			if err := durable.Sleep(ctx, "nap", time.Second); err != nil {
				return 0, err
			}
			_, err := durable.SendEvent(ctx, "notify", durable.Event{ID: "child-ev-" + in.RunID, Name: "child/go"})
			return 1, err
		})
	child := durable.NewFunction(durable.FunctionOpts{ID: "child", Triggers: []durable.Trigger{{Event: "child/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 2, nil })
	c := b.client(durable.Config{Functions: []durable.Function{sleeper, child}, TracerProvider: tp})

	sctx, sender := tp.Tracer("test").Start(b.ctx, "send")
	ids, err := c.Send(sctx, durable.Event{Name: "sleeper/go"})
	sender.End()
	require.NoError(t, err)
	var stored string
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT trace->>'traceparent' FROM "+b.schema+".durable_event WHERE id = $1", ids[0]).Scan(&stored))
	require.Equal(t, fmt.Sprintf("00-%s-%s-01", sender.SpanContext().TraceID(), sender.SpanContext().SpanID()), stored)

	runID := b.runsFor(c, ids[0], 1)[0].ID
	run := b.waitRun(c, runID, 20*time.Second)
	require.Equal(t, durable.RunCompleted, run.Status, run.Error)
	childRun := b.waitRun(c, b.runsFor(c, "child-ev-"+runID, 1)[0].ID, 10*time.Second)
	require.Equal(t, durable.RunCompleted, childRun.Status, childRun.Error)

	require.Eventually(t, func() bool {
		r := spansOf(sr, "durable.run", runID)
		return len(r) >= 2 && spanAttr(r[len(r)-1], "durable.outcome") == "completed" &&
			len(spansOf(sr, "durable.run", childRun.ID)) > 0
	}, 10*time.Second, 10*time.Millisecond)
	runs := spansOf(sr, "durable.run", runID)
	for i, r := range runs {
		assert.True(t, linksTo(r, sender.SpanContext()), "attempt %d of %d links to the sender's span", i+1, len(runs))
	}
	// The attempt after the sleep is another trace (its parent is River's
	// job, untraced here): only the link ties it to the sender.
	assert.NotEqual(t, sender.SpanContext().TraceID(), runs[len(runs)-1].SpanContext().TraceID())

	notify := spansOf(sr, "durable.step", runID)
	require.Len(t, notify, 1, "one executed step: notify (a sleep is not a step span)")
	require.Equal(t, "notify", spanAttr(notify[0], "durable.step_id"))
	for _, r := range spansOf(sr, "durable.run", childRun.ID) {
		assert.True(t, linksTo(r, notify[0].SpanContext()), "the child run links to the SendEvent step's span")
	}
}

// metricsOf collects the metrics of reader by name.
func metricsOf(t require.TestingT, ctx context.Context, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// has reports whether set holds every attribute of kv.
func has(set attribute.Set, kv []attribute.KeyValue) bool {
	for _, want := range kv {
		if v, ok := set.Value(want.Key); !ok || v != want.Value {
			return false
		}
	}
	return true
}

// intValue is the value of an int64 counter or gauge's point with the
// attributes kv (0 when none).
func intValue(ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) int64 {
	switch d := ms[name].Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if has(p.Attributes, kv) {
				return p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if has(p.Attributes, kv) {
				return p.Value
			}
		}
	}
	return 0
}

// floatGauge is the value of a float64 gauge's point with the attributes
// kv (-1 when none).
func floatGauge(ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) float64 {
	if d, ok := ms[name].Data.(metricdata.Gauge[float64]); ok {
		for _, p := range d.DataPoints {
			if has(p.Attributes, kv) {
				return p.Value
			}
		}
	}
	return -1
}

// histCount is the count of a histogram's point with the attributes kv.
func histCount(ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) uint64 {
	if d, ok := ms[name].Data.(metricdata.Histogram[float64]); ok {
		for _, p := range d.DataPoints {
			if has(p.Attributes, kv) {
				return p.Count
			}
		}
	}
	return 0
}

// TestTelemetryMetrics checks the counters (runs started, ended by
// status), the histograms (step duration, queue wait) and the backlog
// gauges (a function that no process executes: its runs stay queued).
func TestTelemetryMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// A function registered by a process that never starts: its runs wait.
	idle := durable.NewFunction(durable.FunctionOpts{ID: "idle", Triggers: []durable.Trigger{{Event: "idle/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 0, nil })
	api, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{idle}})
	require.NoError(t, err)
	require.NoError(t, api.Register(b.ctx))
	// A client without TracerProvider stores no trace context, even when
	// the ctx has a span.
	sctx, span := sdktrace.NewTracerProvider().Tracer("test").Start(b.ctx, "send")
	for i := range 3 {
		_, err := api.Send(sctx, durable.Event{ID: fmt.Sprintf("idle-%d", i), Name: "idle/go"})
		require.NoError(t, err)
	}
	span.End()
	var traced bool
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT trace IS NOT NULL FROM "+b.schema+".durable_event WHERE id = 'idle-0'").Scan(&traced))
	require.False(t, traced)

	ok := durable.NewFunction(durable.FunctionOpts{ID: "ok"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "s", func(ctx context.Context) (int, error) { return 1, nil })
		})
	bad := durable.NewFunction(durable.FunctionOpts{ID: "bad"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "s", func(ctx context.Context) (int, error) {
				return 0, durable.NonRetriable(errors.New("no"))
			})
		})
	c := b.client(durable.Config{Functions: []durable.Function{ok, bad}, MeterProvider: mp})
	fn := func(id string) attribute.KeyValue { return attribute.String("durable.function_id", id) }
	status := func(s string) attribute.KeyValue { return attribute.String("durable.status", s) }
	// The backlog, read when the client started (and every 15 s).
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		ms := metricsOf(ct, b.ctx, reader)
		assert.Equal(ct, int64(3), intValue(ms, "durable.runs.queued", fn("idle")))
		assert.Greater(ct, floatGauge(ms, "durable.runs.oldest_queued_age", fn("idle")), 0.0)
		assert.Equal(ct, int64(0), intValue(ms, "durable.runs.queued", fn("ok")))
		assert.Equal(ct, 0.0, floatGauge(ms, "durable.runs.oldest_queued_age", fn("ok")))
	}, 10*time.Second, 20*time.Millisecond)

	var runIDs []string
	for _, f := range []string{"ok", "ok", "bad"} {
		id, err := c.Invoke(b.ctx, f, nil)
		require.NoError(t, err)
		runIDs = append(runIDs, id)
	}
	for i, id := range runIDs {
		want := durable.RunCompleted
		if i == 2 {
			want = durable.RunFailed
		}
		require.Equal(t, want, b.waitRun(c, id, 10*time.Second).Status)
	}
	cancelled, err := c.Invoke(b.ctx, "idle", nil)
	require.NoError(t, err)
	require.NoError(t, c.Cancel(b.ctx, cancelled))

	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		ms := metricsOf(ct, b.ctx, reader)
		assert.Equal(ct, int64(2), intValue(ms, "durable.runs.started", fn("ok")))
		assert.Equal(ct, int64(1), intValue(ms, "durable.runs.started", fn("bad")))
		assert.Equal(ct, int64(2), intValue(ms, "durable.runs.ended", fn("ok"), status("completed")))
		assert.Equal(ct, int64(1), intValue(ms, "durable.runs.ended", fn("bad"), status("failed")))
		assert.Equal(ct, int64(0), intValue(ms, "durable.runs.ended", fn("ok"), status("failed")))
		assert.Equal(ct, int64(1), intValue(ms, "durable.runs.ended", fn("idle"), status("cancelled")))
		assert.Equal(ct, uint64(2), histCount(ms, "durable.step.duration", fn("ok")))
		assert.Equal(ct, uint64(1), histCount(ms, "durable.step.duration", fn("bad")))
		assert.Equal(ct, uint64(2), histCount(ms, "durable.run.queue_wait", fn("ok")))
		assert.Equal(ct, uint64(1), histCount(ms, "durable.run.queue_wait", fn("bad")))
	}, 10*time.Second, 20*time.Millisecond)
	// No metric carries a run ID.
	for name, m := range metricsOf(t, b.ctx, reader) {
		assert.NotContains(t, fmt.Sprint(m.Data), runIDs[0], name)
	}
}

// TestTelemetryLogs checks what an operator reads: a Debug line per step
// retry, one Error line when a run fails (naming the step), and nothing
// at Info or above for a run whose steps succeed.
func TestTelemetryLogs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	logs := newLogCapture()
	flaky := durable.NewFunction(durable.FunctionOpts{ID: "doomed", Retries: durable.Ptr(1)},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			return durable.Step(ctx, "charge", func(ctx context.Context) (int, error) { return 0, errors.New("card declined") })
		})
	fine := durable.NewFunction(durable.FunctionOpts{ID: "fine"},
		func(ctx context.Context, in durable.Input[M]) (int, error) {
			one, err := durable.Step(ctx, "one", func(ctx context.Context) (int, error) { return 1, nil })
			if err != nil {
				return 0, err
			}
			return durable.Step(ctx, "two", func(ctx context.Context) (int, error) { return one + 1, nil })
		})
	c := b.client(durable.Config{Functions: []durable.Function{flaky, fine}, Logger: slog.New(logs)})
	doomed, err := c.Invoke(b.ctx, "doomed", nil)
	require.NoError(t, err)
	okRun, err := c.Invoke(b.ctx, "fine", nil)
	require.NoError(t, err)
	require.Equal(t, durable.RunFailed, b.waitRun(c, doomed, 10*time.Second).Status)
	require.Equal(t, durable.RunCompleted, b.waitRun(c, okRun, 10*time.Second).Status)

	linesWith := func(parts ...string) []string {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		var out []string
		for _, l := range *logs.lines {
			match := true
			for _, p := range parts {
				match = match && strings.Contains(l, p)
			}
			if match {
				out = append(out, l)
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(linesWith("durable: run failed")) > 0 }, 5*time.Second, 10*time.Millisecond)
	retries := linesWith("DEBUG durable: step failed; retrying", "run_id="+doomed)
	require.Len(t, retries, 1, "one retry (Retries: 1)")
	for _, p := range []string{"function_id=doomed", "step=charge", "attempt=1", "error=card declined", "retry_at="} {
		assert.Contains(t, retries[0], p)
	}
	failed := linesWith("durable: run failed")
	require.Len(t, failed, 1)
	assert.True(t, strings.HasPrefix(failed[0], "ERROR "), failed[0])
	for _, p := range []string{"function_id=doomed", "run_id=" + doomed, "step=charge", "card declined"} {
		assert.Contains(t, failed[0], p)
	}
	for _, l := range linesWith(okRun) {
		assert.True(t, strings.HasPrefix(l, "DEBUG "), "a successful run logs nothing at Info or above: %s", l)
	}
}

// TestRecoveryIsLogged checks the Info line of a recovery: the run of a
// job a dead process held is named.
func TestRecoveryIsLogged(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "orphan"},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	sender, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{fn}})
	require.NoError(t, err)
	require.NoError(t, sender.Register(b.ctx))
	runID, err := sender.Invoke(b.ctx, "orphan", nil)
	require.NoError(t, err)
	// As if a process that has no heartbeat any more had fetched the job.
	tag, err := b.pool.Exec(b.ctx, "UPDATE "+b.schema+".river_job SET state = 'running', attempted_by = ARRAY['dead-worker'], "+
		"attempted_at = now() - interval '1 hour', attempt = 1 WHERE args ->> 'run_id' = $1", runID)
	require.NoError(t, err)
	require.Equal(t, int64(1), tag.RowsAffected())

	logs := newLogCapture()
	c := b.client(durable.Config{Functions: []durable.Function{fn}, Logger: slog.New(logs)})
	require.Equal(t, durable.RunCompleted, b.waitRun(c, runID, 15*time.Second).Status)
	require.Equal(t, 1, logs.count("INFO durable: recovered runs of dead workers count=1 run_ids=["+runID+"]"))
}
