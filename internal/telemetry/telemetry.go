// Package telemetry holds pgdurable's OpenTelemetry instrumentation: the
// spans of run attempts and steps, the trace context stored with events
// (and the links to it), and the metrics, including the backlog gauges
// whose values the maintenance loop reads from the database.
//
// A nil *Telemetry (a client without TracerProvider and MeterProvider)
// does nothing and costs a nil check: callers on the hot path test
// Tracing or Metering (or the pointer) before preparing anything.
//
// It depends on the OpenTelemetry API only (never the SDK) and, of the
// engine, on store's shapes.
package telemetry

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgdurable/durable/internal/store"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/pgdurable/durable"

// Span names.
const (
	SpanRun  = "durable.run"  // one per run attempt
	SpanStep = "durable.step" // one per executed step attempt, a child of its attempt's
)

// Attribute keys of spans and metrics. Metrics carry only the function ID
// (and the status of an ended run), never run or step IDs.
const (
	AttrFunctionID = attribute.Key("durable.function_id")
	AttrRunID      = attribute.Key("durable.run_id")
	AttrStepID     = attribute.Key("durable.step_id")
	AttrAttempt    = attribute.Key("durable.attempt")
	AttrStatus     = attribute.Key("durable.status")
	// AttrOutcome says how a run attempt ended: completed, failed,
	// retrying, suspended, cancelled, handed_back, lease_lost, requeued or
	// error.
	AttrOutcome = attribute.Key("durable.outcome")
)

// Metric names.
const (
	MetricRunsStarted     = "durable.runs.started"
	MetricRunsEnded       = "durable.runs.ended"
	MetricRunsSkipped     = "durable.runs.skipped"
	MetricStepDuration    = "durable.step.duration"
	MetricQueueWait       = "durable.run.queue_wait"
	MetricRunsQueued      = "durable.runs.queued"
	MetricOldestQueuedAge = "durable.runs.oldest_queued_age"
)

// durationBuckets are the histograms' bucket boundaries, in seconds: from
// a few milliseconds (a step that does little) to an hour (a queue that
// waits for workers).
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// Telemetry is a client's instrumentation; nil means none.
type Telemetry struct {
	tracer trace.Tracer // nil: no spans
	m      *metrics     // nil: no metrics
}

// New returns the instrumentation for the providers given, or nil when
// both are nil.
func New(tp trace.TracerProvider, mp metric.MeterProvider) (*Telemetry, error) {
	if tp == nil && mp == nil {
		return nil, nil
	}
	t := &Telemetry{}
	if tp != nil {
		t.tracer = tp.Tracer(ScopeName)
	}
	if mp != nil {
		m, err := newMetrics(mp.Meter(ScopeName))
		if err != nil {
			return nil, err
		}
		t.m = m
	}
	return t, nil
}

// Tracing reports whether spans are recorded (and trace context stored
// with events).
func (t *Telemetry) Tracing() bool { return t != nil && t.tracer != nil }

// Metering reports whether metrics are recorded (and the backlog read).
func (t *Telemetry) Metering() bool { return t != nil && t.m != nil }

// ---- Traces ----

// carrier is a propagation.TextMapCarrier over a stored trace context.
type carrier struct{ tc *store.TraceContext }

const (
	headerParent = "traceparent"
	headerState  = "tracestate"
)

func (c carrier) Get(key string) string {
	switch key {
	case headerParent:
		return c.tc.Parent
	case headerState:
		return c.tc.State
	}
	return ""
}

func (c carrier) Set(key, value string) {
	switch key {
	case headerParent:
		c.tc.Parent = value
	case headerState:
		c.tc.State = value
	}
}

func (c carrier) Keys() []string { return []string{headerParent, headerState} }

// TraceContext returns the W3C trace context of ctx's span, to be stored
// with the events sent (or the run invoked) under ctx; nil when tracing is
// off or ctx carries no valid span context.
func (t *Telemetry) TraceContext(ctx context.Context) *store.TraceContext {
	if !t.Tracing() || !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	tc := &store.TraceContext{}
	propagation.TraceContext{}.Inject(ctx, carrier{tc})
	if tc.Parent == "" {
		return nil
	}
	return tc
}

// link is the link to a stored trace context, if it holds a valid one.
func link(tc *store.TraceContext) (trace.Link, bool) {
	if tc == nil || tc.Parent == "" {
		return trace.Link{}, false
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), carrier{tc})
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return trace.Link{}, false
	}
	return trace.Link{SpanContext: sc}, true
}

// StartRun starts the span of a run attempt, a child of ctx's span (River's
// job, if instrumented), linked to the trace context stored with the run's
// first event. attempt is the function-level attempt, 1-based. The span
// is in the returned context.
func (t *Telemetry) StartRun(ctx context.Context, functionID, runID string, attempt int, trigger *store.TraceContext) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(AttrFunctionID.String(functionID), AttrRunID.String(runID), AttrAttempt.Int(attempt)),
	}
	if l, ok := link(trigger); ok {
		opts = append(opts, trace.WithLinks(l))
	}
	return t.tracer.Start(ctx, SpanRun, opts...)
}

// StartStep starts the span of one executed attempt of a step (attempt is
// 1-based), a child of ctx's span (the run attempt's).
func (t *Telemetry) StartStep(ctx context.Context, functionID, runID, stepID string, attempt int) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, SpanStep, trace.WithAttributes(
		AttrFunctionID.String(functionID), AttrRunID.String(runID), AttrStepID.String(stepID), AttrAttempt.Int(attempt)))
}

// Fail records err on span: the error event and the Error status with
// err's message.
func Fail(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// ---- Metrics ----

// metrics are the instruments of a meter.
type metrics struct {
	runsStarted, runsEnded, runsSkipped metric.Int64Counter
	stepDuration, queueWait             metric.Float64Histogram
	queued                              metric.Int64ObservableGauge
	oldest                              metric.Float64ObservableGauge

	byFunction sync.Map // function ID -> metric.MeasurementOption
	byStatus   sync.Map // [2]string{function ID, status} -> metric.MeasurementOption
	backlog    atomic.Pointer[backlogSnapshot]
}

func newMetrics(m metric.Meter) (*metrics, error) {
	x := &metrics{}
	var err error
	if x.runsStarted, err = m.Int64Counter(MetricRunsStarted, metric.WithUnit("{run}"),
		metric.WithDescription("Runs started: counted when a run is first claimed by a worker.")); err != nil {
		return nil, err
	}
	if x.runsEnded, err = m.Int64Counter(MetricRunsEnded, metric.WithUnit("{run}"),
		metric.WithDescription("Runs ended, by durable.status: completed, failed (by this process's workers) or cancelled (by this process).")); err != nil {
		return nil, err
	}
	if x.runsSkipped, err = m.Int64Counter(MetricRunsSkipped, metric.WithUnit("{run}"),
		metric.WithDescription("Runs skipped (status skipped) by flow control; nothing skips runs yet.")); err != nil {
		return nil, err
	}
	if x.stepDuration, err = m.Float64Histogram(MetricStepDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of each executed step attempt (replays are not counted)."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, err
	}
	if x.queueWait, err = m.Float64Histogram(MetricQueueWait, metric.WithUnit("s"),
		metric.WithDescription("Time from a run's creation (its event committed) to its first claim by a worker."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, err
	}
	if x.queued, err = m.Int64ObservableGauge(MetricRunsQueued, metric.WithUnit("{run}"),
		metric.WithDescription("Runs created and not started yet, waiting in this client's queue, per function (read from the database every 15 s).")); err != nil {
		return nil, err
	}
	if x.oldest, err = m.Float64ObservableGauge(MetricOldestQueuedAge, metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest run not started yet in this client's queue, per function (0 when none).")); err != nil {
		return nil, err
	}
	if _, err = m.RegisterCallback(x.observeBacklog, x.queued, x.oldest); err != nil {
		return nil, err
	}
	return x, nil
}

// fnOpt is the measurement option of a function's attribute set, built
// once per function.
func (m *metrics) fnOpt(functionID string) metric.MeasurementOption {
	if o, ok := m.byFunction.Load(functionID); ok {
		return o.(metric.MeasurementOption)
	}
	o := metric.WithAttributeSet(attribute.NewSet(AttrFunctionID.String(functionID)))
	m.byFunction.Store(functionID, o)
	return o
}

// RunStarted counts a run's first claim and records how long it waited
// since it was created.
func (t *Telemetry) RunStarted(ctx context.Context, functionID string, queueWait time.Duration) {
	if !t.Metering() {
		return
	}
	o := t.m.fnOpt(functionID)
	t.m.runsStarted.Add(ctx, 1, o)
	t.m.queueWait.Record(ctx, max(queueWait.Seconds(), 0), o)
}

// RunEnded counts a run that ended with status (completed, failed,
// cancelled).
func (t *Telemetry) RunEnded(ctx context.Context, functionID, status string) {
	if !t.Metering() {
		return
	}
	k := [2]string{functionID, status}
	o, ok := t.m.byStatus.Load(k)
	if !ok {
		o = metric.WithAttributeSet(attribute.NewSet(AttrFunctionID.String(functionID), AttrStatus.String(status)))
		t.m.byStatus.Store(k, o)
	}
	t.m.runsEnded.Add(ctx, 1, o.(metric.MeasurementOption))
}

// RunSkipped counts a run that ended skipped. Nothing calls it until flow
// control (which skips runs) lands; the counter is registered so that
// dashboards can be built against it.
func (t *Telemetry) RunSkipped(ctx context.Context, functionID string) {
	if !t.Metering() {
		return
	}
	t.m.runsSkipped.Add(ctx, 1, t.m.fnOpt(functionID))
}

// StepDone records the duration of one executed step attempt.
func (t *Telemetry) StepDone(ctx context.Context, functionID string, d time.Duration) {
	if !t.Metering() {
		return
	}
	t.m.stepDuration.Record(ctx, d.Seconds(), t.m.fnOpt(functionID))
}

// Backlog is one function's queued runs, as the maintenance loop reads
// them.
type Backlog struct {
	FunctionID string
	Queued     int64
	OldestAge  time.Duration // of the oldest queued run, when read
}

type backlogSnapshot struct {
	rows []Backlog
	at   time.Time
}

// SetBacklog replaces the backlog the gauges report (read at at); nil
// rows clear it (the loop stopped: nothing is reported any more).
func (t *Telemetry) SetBacklog(rows []Backlog, at time.Time) {
	if !t.Metering() {
		return
	}
	if rows == nil {
		t.m.backlog.Store(nil)
		return
	}
	t.m.backlog.Store(&backlogSnapshot{rows: rows, at: at})
}

// observeBacklog reports the last snapshot: the oldest age grows with the
// time since it was read.
func (m *metrics) observeBacklog(_ context.Context, o metric.Observer) error {
	s := m.backlog.Load()
	if s == nil {
		return nil
	}
	since := time.Since(s.at)
	for _, r := range s.rows {
		opt := m.fnOpt(r.FunctionID)
		o.ObserveInt64(m.queued, r.Queued, opt)
		age := 0.0
		if r.Queued > 0 {
			age = (r.OldestAge + since).Seconds()
		}
		o.ObserveFloat64(m.oldest, age, opt)
	}
	return nil
}
