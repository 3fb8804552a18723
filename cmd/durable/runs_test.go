package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
)

// napper fails its "fetch" step once, then sleeps an hour.
func napper() durable.Function {
	var fetches atomic.Int32
	return durable.NewFunction(durable.FunctionOpts{
		ID:       "napper",
		Triggers: []durable.Trigger{{Event: "nap/start"}},
	}, func(ctx context.Context, in durable.Input[any]) (string, error) {
		_, err := durable.Step(ctx, "fetch", func(ctx context.Context) (int, error) {
			if fetches.Add(1) == 1 {
				return 0, errors.New("upstream 503")
			}
			return 200, nil
		})
		if err != nil {
			return "", err
		}
		if err := durable.Sleep(ctx, "nap", time.Hour); err != nil {
			return "", err
		}
		return "rested", nil
	})
}

func TestRunsShowAndCancel(t *testing.T) {
	t.Parallel()
	env := durabletest.New(t, napper())
	id := env.Start(durable.Event{Name: "nap/start"})
	run := env.WaitStep(id, "nap", "sleeping")
	nap := run.Steps[1]
	require.NotNil(t, nap.WakeAt)

	out := cli(t, env.Schema, "runs", "show", id).ok(t)
	require.Contains(t, lineOf(t, out, "Run:"), id)
	require.Contains(t, lineOf(t, out, "Function:"), "napper")
	require.Contains(t, lineOf(t, out, "Status:"), "running")
	require.Contains(t, lineOf(t, out, "Events:"), run.EventIDs[0])
	// The timeline: fetch ran (a failed attempt marked, its error under
	// it), nap sleeps until its deadline, beyond the chart.
	fetch := lineOf(t, out, "fetch ")
	require.Contains(t, fetch, "completed")
	require.Contains(t, fetch, "█")
	require.Contains(t, fetch, "✗")
	require.Contains(t, out, "✗ attempt 1 failed at +")
	require.Contains(t, out, ": upstream 503\n")
	napLine := lineOf(t, out, "nap ")
	require.Contains(t, napLine, "sleeping")
	require.Contains(t, napLine, "░▸|")
	require.Contains(t, napLine, "wakes "+fmtTime(*nap.WakeAt))
	require.Less(t, strings.Index(out, "fetch "), strings.Index(out, "nap "))

	shown := jsonOut[runJSON](t, cli(t, env.Schema, "runs", "show", id, "--json"))
	require.Equal(t, id, shown.ID)
	require.Len(t, shown.Steps, 2)
	require.Equal(t, "upstream 503", shown.Steps[0].Failures[0].Error)
	require.Equal(t, 1, shown.Steps[0].Failures[0].Attempt)
	require.Equal(t, "sleeping", shown.Steps[1].Status)
	require.True(t, nap.WakeAt.Equal(*shown.Steps[1].WakeAt))

	cli(t, env.Schema, "runs", "show", "no-such-run").fails(t, exitRuntime, `durable: runs show: run "no-such-run" not found`)

	// Cancel the sleeping run.
	require.Contains(t, cli(t, env.Schema, "runs", "cancel", id).ok(t), "Run "+id+" cancelled.")
	got, err := env.Client.GetRun(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, durable.RunCancelled, got.Status)
	require.Contains(t, lineOf(t, cli(t, env.Schema, "runs", "show", id).ok(t), "nap "), "cancelled")
	// Again: nothing to do, and said so.
	again := jsonOut[struct {
		Status       string `json:"status"`
		AlreadyEnded bool   `json:"already_ended"`
	}](t, cli(t, env.Schema, "runs", "cancel", id, "--json"))
	require.Equal(t, "cancelled", again.Status)
	require.True(t, again.AlreadyEnded)
	cli(t, env.Schema, "runs", "cancel", "no-such-run").fails(t, exitRuntime, `durable: runs cancel: run "no-such-run" not found`)
	require.Contains(t, lineOf(t, cli(t, env.Schema, "runs", "list", "--status", "cancelled").ok(t), id), "cancelled")
}

func TestRunsRerunFromStep(t *testing.T) {
	t.Parallel()
	var a, b atomic.Int32
	fn := durable.NewFunction(durable.FunctionOpts{ID: "two-steps", Triggers: []durable.Trigger{{Event: "go"}}},
		func(ctx context.Context, in durable.Input[any]) (int32, error) {
			x, err := durable.Step(ctx, "a", func(ctx context.Context) (int32, error) { return a.Add(1), nil })
			if err != nil {
				return 0, err
			}
			y, err := durable.Step(ctx, "b", func(ctx context.Context) (int32, error) { return b.Add(1), nil })
			return 10*x + y, err
		})
	env := durabletest.New(t, fn)
	orig := env.Run(durable.Event{Name: "go"})
	require.Equal(t, durable.RunCompleted, orig.Status)

	newID := strings.TrimSpace(cli(t, env.Schema, "runs", "rerun", orig.ID, "--from-step", "b").ok(t))
	require.NotEqual(t, orig.ID, newID)
	rerun := waitRun(t, env, newID)
	require.Equal(t, durable.RunCompleted, rerun.Status)
	require.Equal(t, orig.ID, rerun.RerunOf)
	// Step a was copied, not run again; b ran again.
	require.Equal(t, int32(1), a.Load())
	require.Equal(t, int32(2), b.Load())
	require.JSONEq(t, "12", string(rerun.Output))

	// Both ends of the link show.
	require.Contains(t, lineOf(t, cli(t, env.Schema, "runs", "show", orig.ID).ok(t), "Reruns:"), newID)
	require.Contains(t, lineOf(t, cli(t, env.Schema, "runs", "show", newID).ok(t), "Rerun of:"), orig.ID)

	// From the top, with --json.
	top := jsonOut[struct {
		ID      string `json:"id"`
		RerunOf string `json:"rerun_of"`
	}](t, cli(t, env.Schema, "runs", "rerun", orig.ID, "--json"))
	require.Equal(t, orig.ID, top.RerunOf)
	require.Equal(t, durable.RunCompleted, waitRun(t, env, top.ID).Status)
	require.Equal(t, int32(2), a.Load())

	r := cli(t, env.Schema, "runs", "rerun", orig.ID, "--from-step", "zzz")
	r.fails(t, exitRuntime, `durable: runs rerun:`)
	require.Contains(t, r.stderr, `--from-step "zzz"`)
	require.Contains(t, r.stderr, "its steps: a, b")
	cli(t, env.Schema, "runs", "rerun", "no-such-run").fails(t, exitRuntime, `run "no-such-run" not found`)
}

func TestFunctionsList(t *testing.T) {
	t.Parallel()
	env := durabletest.New(t, greet(), napper())
	out := cli(t, env.Schema, "functions", "list").ok(t)
	host, err := os.Hostname()
	require.NoError(t, err)
	line := lineOf(t, out, "greet ")
	require.Contains(t, line, `user/signup if event.data.name != ""`)
	require.Contains(t, line, " yes ")
	require.Contains(t, line, host)
	require.Contains(t, lineOf(t, out, "napper "), "nap/start")

	fns := jsonOut[struct {
		Functions []functionJSON `json:"functions"`
	}](t, cli(t, env.Schema, "functions", "list", "--json"))
	require.Len(t, fns.Functions, 2)
	g := fns.Functions[0]
	require.Equal(t, "greet", g.ID)
	require.Equal(t, []triggerJSON{{Event: "user/signup", If: `event.data.name != ""`}}, g.Triggers)
	require.True(t, g.Live)
	require.Len(t, g.Workers, 1)
	require.Equal(t, os.Getpid(), g.Workers[0].PID)
	require.Equal(t, host, g.Workers[0].Hostname)

	// Once the process stops, its functions are no longer live.
	require.NoError(t, env.Client.Stop(t.Context()))
	line = lineOf(t, cli(t, env.Schema, "functions", "list").ok(t), "greet ")
	require.Contains(t, line, " no ")
}

func TestRunsShowParentAndChild(t *testing.T) {
	t.Parallel()
	parent := durable.NewFunction(durable.FunctionOpts{ID: "parent", Triggers: []durable.Trigger{{Event: "family"}}},
		func(ctx context.Context, in durable.Input[any]) (string, error) {
			return durable.Invoke[string](ctx, "call-child", durable.InvokeOpts{Function: "greet", Data: map[string]string{"name": "kid"}, Timeout: time.Minute})
		})
	env := durabletest.New(t, parent, greet())
	run := env.Run(durable.Event{Name: "family"})
	require.Equal(t, durable.RunCompleted, run.Status)
	childID := run.Steps[0].ChildRunID
	require.NotEmpty(t, childID)

	out := cli(t, env.Schema, "runs", "show", run.ID).ok(t)
	require.Contains(t, lineOf(t, out, "Child runs:"), childID+" (step call-child)")
	require.Contains(t, lineOf(t, out, "Output:"), `"hi kid"`)
	step := lineOf(t, out, "call-child ")
	require.Contains(t, step, "invoke")
	require.Contains(t, step, "child run "+childID)
	require.Contains(t, step, "░")
	require.Contains(t, lineOf(t, cli(t, env.Schema, "runs", "show", childID).ok(t), "Parent run:"), run.ID)
}
