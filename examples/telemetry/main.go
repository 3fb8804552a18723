// Command telemetry shows pgdurable's OpenTelemetry spans and metrics: a
// client wired to the SDK's stdout exporters runs one function, whose
// event is sent from inside an app span ("signup-handler", as an HTTP
// handler's would be), and the example prints every span and the metrics
// as the exporters write them (JSON), then a summary of the spans.
//
//	go run ./examples/telemetry
//
// What to look for: one "durable.run" span per attempt of the run, each
// linked to the handler's span (the trace context was stored with the
// event); one "durable.step" span per executed step, a child of its
// attempt's; the step that fails once has a span with the error, and the
// attempt after it replays the step that succeeded without a span. The
// metrics (durable.runs.started, durable.runs.ended, durable.step.duration,
// durable.run.queue_wait, the backlog gauges durable.runs.queued and
// durable.runs.oldest_queued_age) are printed once the run has ended.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_telemetry, which it drops and recreates on each
// run and leaves afterwards for inspection.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// SignedUp is the data of a "user/signed-up" event.
type SignedUp struct {
	UserID string `json:"userId"`
	Email  string `json:"email"`
}

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_telemetry"

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "telemetry:", err)
		os.Exit(1)
	}
}

// run runs the example in schema of the database at url.
func run(ctx context.Context, url, schema string) error {
	pool, err := openSchema(ctx, url, schema)
	if err != nil {
		return err
	}
	defer pool.Close()

	// 1. The OpenTelemetry SDK, writing to stdout. A real app would use
	// an OTLP exporter; pgdurable only sees the providers.
	traceOut, err := stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	if err != nil {
		return err
	}
	spans := &recorder{SpanExporter: traceOut}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	metricOut, err := stdoutmetric.New(stdoutmetric.WithWriter(os.Stdout))
	if err != nil {
		return err
	}
	// Read once, at the end (an app would use a periodic reader).
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// 2. A function: its second step fails once and is retried.
	var emails atomic.Int32
	welcome := durable.NewFunction(durable.FunctionOpts{
		ID:       "welcome",
		Triggers: []durable.Trigger{{Event: "user/signed-up"}},
	}, func(ctx context.Context, in durable.Input[SignedUp]) (string, error) {
		name, err := durable.Step(ctx, "load-profile", func(ctx context.Context) (string, error) {
			return strings.Split(in.Event.Data.Email, "@")[0], nil
		})
		if err != nil {
			return "", err
		}
		return durable.Step(ctx, "send-email", func(ctx context.Context) (string, error) {
			if emails.Add(1) == 1 {
				return "", errors.New("mail server busy") // the span records it; the step is retried
			}
			return "welcomed " + name, nil
		})
	})

	// 3. A client with both providers (give them to sending clients too:
	// they store the trace context with the events).
	client, err := durable.NewClient(pool, &durable.Config{
		Schema: schema, Functions: []durable.Function{welcome},
		TracerProvider: tp, MeterProvider: mp,
		RetryBackoff: func(int) time.Duration { return 200 * time.Millisecond },
	})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(stopCtx)
	}
	defer stop()

	// 4. The app sends the event from inside its own span.
	hctx, handler := tp.Tracer("example-app").Start(ctx, "signup-handler")
	ids, err := client.Send(hctx, durable.Event{Name: "user/signed-up", Data: SignedUp{UserID: "u-1", Email: "ada@example.com"}})
	handler.End()
	if err != nil {
		return err
	}
	fmt.Printf("sent user/signed-up (event %s) from span %s\n", ids[0], handler.SpanContext().SpanID())

	// 5. Wait for the run, for 30 s at most.
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var runs []*durable.Run
	for len(runs) == 0 {
		if runs, err = client.RunsForEvent(waitCtx, ids[0]); err != nil {
			return fmt.Errorf("looking for the run of event %s: %w", ids[0], err)
		}
		select {
		case <-waitCtx.Done():
			return fmt.Errorf("no run for event %s", ids[0])
		case <-time.After(10 * time.Millisecond):
		}
	}
	r, err := client.WaitRun(waitCtx, runs[0].ID)
	if err != nil {
		return fmt.Errorf("run %s did not end: %w", runs[0].ID, err)
	}
	fmt.Printf("run %s: %s, result %s\n", r.ID, r.Status, r.Output)

	// 6. The last attempt ends its span right after the run's commit: wait
	// for it, then print the metrics (the backlog gauges too, which a
	// started client refreshes every 15 s), stop the client and flush.
	for !spans.has("durable.run", "completed") && waitCtx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return err
	}
	if err := metricOut.Export(ctx, &rm); err != nil {
		return err
	}
	stop()
	if err := tp.Shutdown(ctx); err != nil {
		return err
	}
	if err := mp.Shutdown(ctx); err != nil {
		return err
	}

	fmt.Println("spans of the run:")
	runSpans, linked := 0, 0
	for _, s := range spans.ended() {
		if attr(s, "durable.run_id") != r.ID {
			continue
		}
		line := fmt.Sprintf("  %-12s attempt=%s", s.Name(), attr(s, "durable.attempt"))
		if id := attr(s, "durable.step_id"); id != "" {
			line += " step=" + id
		}
		if o := attr(s, "durable.outcome"); o != "" {
			line += " outcome=" + o
		}
		if s.Status().Description != "" {
			line += " error=" + s.Status().Description
		}
		if s.Name() == "durable.run" {
			runSpans++
			for _, l := range s.Links() {
				if l.SpanContext.SpanID() == handler.SpanContext().SpanID() {
					linked++
					line += " (linked to signup-handler)"
				}
			}
		}
		fmt.Println(line)
	}
	if r.Status != durable.RunCompleted {
		return fmt.Errorf("run ended %s: %s", r.Status, r.Error)
	}
	if runSpans < 2 || linked != runSpans {
		return fmt.Errorf("expected two or more durable.run spans all linked to the handler's span, got %d (%d linked)", runSpans, linked)
	}
	return nil
}

// recorder passes spans to the stdout exporter and keeps them for the
// summary.
type recorder struct {
	sdktrace.SpanExporter
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

func (r *recorder) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	r.mu.Lock()
	r.spans = append(r.spans, spans...)
	r.mu.Unlock()
	return r.SpanExporter.ExportSpans(ctx, spans)
}

// has reports whether a span named name with the durable.outcome outcome
// has ended.
func (r *recorder) has(name, outcome string) bool {
	for _, s := range r.ended() {
		if s.Name() == name && attr(s, "durable.outcome") == outcome {
			return true
		}
	}
	return false
}

func (r *recorder) ended() []sdktrace.ReadOnlySpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sdktrace.ReadOnlySpan(nil), r.spans...)
}

// attr is a span attribute as a string ("" when absent).
func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// databaseURL is DATABASE_URL, else TEST_DATABASE_URL, else the local
// server with trust auth.
func databaseURL() string {
	for _, env := range []string{"DATABASE_URL", "TEST_DATABASE_URL"} {
		if u := os.Getenv(env); u != "" {
			return u
		}
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openSchema connects to url and gives the example a fresh schema: the one
// an earlier run left is dropped and migrate.Up creates it again. It prints
// where the example writes, without the password.
func openSchema(ctx context.Context, url, schema string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("bad database URL (set DATABASE_URL): %w", err)
	}
	c := pool.Config().ConnConfig
	where := fmt.Sprintf("postgres://%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = pool.Ping(pingCtx); err != nil {
		err = fmt.Errorf("no Postgres answers at %s; set DATABASE_URL to a server you can reach: %w", where, err)
	} else if _, err = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err == nil {
		err = migrate.Up(ctx, pool, schema)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	fmt.Printf("pgdurable example: writing to schema %q in %s (recreated on each run and kept afterwards; drop it with: DROP SCHEMA %s CASCADE)\n", schema, where, schema)
	return pool, nil
}
