package store

import (
	"encoding/json"
	"time"
)

// Event is an event's JSON form, the same shape everywhere: stored in
// runs, seen by CEL expressions as `event` (see AsMap).
type Event struct {
	ID   string          `json:"id"`
	Name string          `json:"name"`
	Data json.RawMessage `json:"data"`
	TS   time.Time       `json:"ts"`
	// Trace is the trace context of the ctx the event was sent (or the run
	// invoked) with, when the sender traces: stored in durable_event.trace
	// and in the events of the runs it starts, whose spans link to it. It
	// is never part of what functions or expressions see.
	Trace *TraceContext `json:"trace,omitempty"`
}

// TraceContext is a W3C trace context (https://www.w3.org/TR/trace-context/),
// as the OpenTelemetry propagation API writes it.
type TraceContext struct {
	Parent string `json:"traceparent"`
	State  string `json:"tracestate,omitempty"`
}

// AsMap returns the event as CEL sees it.
func (e Event) AsMap() map[string]any {
	var data any
	if len(e.Data) > 0 {
		_ = json.Unmarshal(e.Data, &data)
	}
	return map[string]any{"id": e.ID, "name": e.Name, "data": data, "ts": e.TS.UTC().Format(time.RFC3339Nano)}
}

// FunctionConfig is the part of a function's options that whoever creates
// its runs needs, stored in durable_function.config when the function is
// registered (the creator may be a send-only process).
type FunctionConfig struct {
	Idempotency string           `json:"idempotency,omitempty"`
	CancelOn    []CancelOnConfig `json:"cancel_on,omitempty"`
	StartMS     int64            `json:"start_timeout_ms,omitempty"`
	FinishMS    int64            `json:"finish_timeout_ms,omitempty"`
	// System marks a function only the library triggers (an OnFailure
	// handler): Invoke refuses it.
	System bool `json:"system,omitempty"`
	// Flow control (see the FunctionOpts of the same names).
	Concurrency []ConcurrencyConfig `json:"concurrency,omitempty"`
	Throttle    *ThrottleConfig     `json:"throttle,omitempty"`
	RateLimit   *RateLimitConfig    `json:"rate_limit,omitempty"`
	Debounce    *DebounceConfig     `json:"debounce,omitempty"`
	Batch       *BatchConfig        `json:"batch,omitempty"`
	Priority    string              `json:"priority,omitempty"`
	Singleton   *SingletonConfig    `json:"singleton,omitempty"`
}

// ConcurrencyConfig is a stored FunctionOpts.Concurrency entry; Scope is
// "function" or "shared".
type ConcurrencyConfig struct {
	Limit int    `json:"limit"`
	Key   string `json:"key,omitempty"`
	Scope string `json:"scope"`
}

// ThrottleConfig is a stored FunctionOpts.Throttle.
type ThrottleConfig struct {
	Limit    int    `json:"limit"`
	PeriodMS int64  `json:"period_ms"`
	Burst    int    `json:"burst,omitempty"`
	Key      string `json:"key,omitempty"`
}

// RateLimitConfig is a stored FunctionOpts.RateLimit.
type RateLimitConfig struct {
	Limit    int    `json:"limit"`
	PeriodMS int64  `json:"period_ms"`
	Key      string `json:"key,omitempty"`
}

// DebounceConfig is a stored FunctionOpts.Debounce.
type DebounceConfig struct {
	PeriodMS  int64  `json:"period_ms"`
	Key       string `json:"key,omitempty"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

// BatchConfig is a stored FunctionOpts.Batch.
type BatchConfig struct {
	MaxSize   int    `json:"max_size"`
	TimeoutMS int64  `json:"timeout_ms"`
	Key       string `json:"key,omitempty"`
	If        string `json:"if,omitempty"`
}

// SingletonConfig is a stored FunctionOpts.Singleton.
type SingletonConfig struct {
	Key  string `json:"key,omitempty"`
	Mode string `json:"mode"`
}

// Gated reports whether runs of the function pass flow-control gates
// (Concurrency or Throttle) when an attempt starts.
func (c FunctionConfig) Gated() bool { return len(c.Concurrency) > 0 || c.Throttle != nil }

// CancelOnConfig is a stored FunctionOpts.CancelOn entry.
type CancelOnConfig struct {
	Event     string `json:"event"`
	If        string `json:"if,omitempty"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

// DecodeFunctionConfig reads a stored config; an unreadable one is empty.
func DecodeFunctionConfig(b []byte) FunctionConfig {
	var cfg FunctionConfig
	if len(b) > 0 {
		_ = json.Unmarshal(b, &cfg)
	}
	return cfg
}

// System event names: the events the library emits itself.
const (
	EventFunctionFinished  = "durable/function.finished"
	EventFunctionFailed    = "durable/function.failed"
	EventFunctionCancelled = "durable/function.cancelled"
	EventFunctionInvoked   = "durable/function.invoked"
	EventScheduledTimer    = "durable/scheduled.timer"
)

// Deref returns *s, or "" for nil.
func Deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
