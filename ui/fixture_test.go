package ui_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
	"github.com/pgdurable/durable/ui"
)

// Order is the test functions' event payload.
type Order struct {
	ID    string `json:"id"`
	Plan  string `json:"plan"`
	Total int    `json:"total"`
}

// fixture is a client running three functions, and the run browser over
// it.
type fixture struct {
	env *durabletest.Env
	// chargeFails makes the "charge" step of "checkout" fail; prepared
	// counts the runs of its "prepare" step's body.
	chargeFails atomic.Bool
	prepared    atomic.Int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{}
	checkout := durable.NewFunction(durable.FunctionOpts{
		ID:       "checkout",
		Triggers: []durable.Trigger{{Event: "order/created"}},
		Retries:  durable.Ptr(1),
	}, func(ctx context.Context, in durable.Input[Order]) (map[string]any, error) {
		if _, err := durable.Step(ctx, "prepare", func(context.Context) (string, error) {
			f.prepared.Add(1)
			return "cart-" + in.Event.Data.ID, nil
		}); err != nil {
			return nil, err
		}
		paid, err := durable.Step(ctx, "charge", func(context.Context) (int, error) {
			if f.chargeFails.Load() {
				return 0, errors.New("card declined for " + in.Event.Data.ID)
			}
			return in.Event.Data.Total, nil
		})
		if err != nil {
			return nil, err
		}
		return map[string]any{"order": in.Event.Data.ID, "total": paid, "secret": "tok-" + in.Event.Data.ID}, nil
	})
	nap := durable.NewFunction(durable.FunctionOpts{
		ID:       "nap",
		Triggers: []durable.Trigger{{Event: "nap/start"}},
	}, func(ctx context.Context, in durable.Input[Order]) (string, error) {
		if _, err := durable.Step(ctx, "lie-down", func(context.Context) (string, error) { return "zzz", nil }); err != nil {
			return "", err
		}
		return "rested", durable.Sleep(ctx, "snooze", time.Hour)
	})
	f.env = durabletest.New(t, checkout, nap)
	return f
}

// handler is the run browser with opts.
func (f *fixture) handler(t *testing.T, opts *ui.Options) http.Handler {
	t.Helper()
	h, err := ui.NewHandler(f.env.Client, opts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// server serves the run browser with opts under opts.Prefix on a mux, as
// an app would mount it.
func (f *fixture) server(t *testing.T, opts *ui.Options) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	prefix := ""
	if opts != nil {
		prefix = opts.Prefix
	}
	mux.Handle(prefix+"/", f.handler(t, opts))
	mux.HandleFunc("/app", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("the app")) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// completed runs a checkout to completion.
func (f *fixture) completed(t *testing.T, id, plan string, total int) *durable.Run {
	t.Helper()
	run := f.env.Run(durable.Event{Name: "order/created", Data: Order{ID: id, Plan: plan, Total: total}})
	if run.Status != durable.RunCompleted {
		t.Fatalf("checkout %s: %s (%s)", id, run.Status, run.Error)
	}
	return run
}

// failed runs a checkout whose charge fails twice.
func (f *fixture) failed(t *testing.T, id string) *durable.Run {
	t.Helper()
	f.chargeFails.Store(true)
	defer f.chargeFails.Store(false)
	run := f.env.Run(durable.Event{Name: "order/created", Data: Order{ID: id, Plan: "free", Total: 5}})
	if run.Status != durable.RunFailed {
		t.Fatalf("checkout %s: %s, want failed", id, run.Status)
	}
	return run
}

// sleeping starts a nap and waits until it sleeps.
func (f *fixture) sleeping(t *testing.T, id string) string {
	t.Helper()
	runID := f.env.Start(durable.Event{Name: "nap/start", Data: Order{ID: id}})
	f.env.WaitStep(runID, "snooze", "sleeping")
	return runID
}
