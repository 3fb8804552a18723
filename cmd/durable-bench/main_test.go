package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSmoke runs a scaled-down benchmark against the test database and
// checks that the report has every section and that nothing failed. The
// figures themselves are not checked: at this size they mean little.
func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	o := defaultOptions()
	o.Runs = 20
	o.StepsSeq = 10
	o.StepRuns = 2
	o.LatencySamples = 10
	o.LatencyPause = 5 * time.Millisecond
	o.Senders = 4
	o.SendBatches = []int{1, 5}
	o.BaselineCommits = 50
	o.BaselineWarmup = 10
	o.BaselineConns = 4
	o.BaselineDuration = 300 * time.Millisecond
	o.PoolConns = 10
	o.MaxWorkers = 10
	o.RiverJobs = 20
	o.RiverBatch = 5
	o.WaitSamples = 5
	o.OpenWaits = 50
	o.SendCostSamples = 10
	o.ListRuns = 20000
	o.PruneRuns = 20000
	o.PruneWindow = 500 * time.Millisecond
	o.PruneConcurrency = 2
	o.FlowRuns = 40
	o.FlowKeys = 20
	o.WakeRuns = 20
	o.PreloadEnded = 100
	o.PreloadSleeping = 50
	var logs bytes.Buffer
	o.LogOutput = &logs

	var out bytes.Buffer
	err := run(ctx, o, &out)
	t.Logf("report:\n%s", out.String())
	if logs.Len() > 0 {
		t.Logf("library log:\n%s", logs.String())
	}
	require.NoError(t, err)

	report := out.String()
	for _, want := range []string{
		"preloaded: 100 ended runs (3 steps each) and 50 sleeping runs",
		"== 1. Machine limit",
		"(a) 1 connection",
		"(b) 4 connections",
		"== 2. Per-step latency",
		"median per-step latency",
		"== 3a. Throughput: 20 runs x 3 no-op steps, 1 event per Send call",
		"== 3b. Throughput: 20 runs x 3 no-op steps, 5 events per Send call",
		"throughput:",
		"== 3c. River-only baseline: 20 no-op River jobs, 5 jobs per InsertMany call",
		"same run, side by side",
		"3c River only, 5 jobs per InsertMany",
		"== 4. Event-commit-to-first-step latency",
		"first step body starts: p50",
		"== 5. Wait-resume latency",
		"step \"after\" body starts: p50",
		"== 6. Send cost with 0 vs 50 open waits",
		"ratio 50 vs 0 waits: p50",
		"1 consumed",
		"runs resumed: 1",
		"== 7. ListRuns: pages of 50 among 20000 runs",
		"page deep in (cursor after 10000 runs):",
		"If matching 1 run (eval bound):",
		"== 8. Per-step latency while pruning 20,000 ended runs",
		"p99 while pruning / without:",
		"== 9. Flow control and checkpointing",
		"slot freed (a run's function returned) -> next run's step: p50",
		"start delay of each key's run",
		"BufferedSteps 10:",
		"== 10. Wake-up: 20 runs sleeping until the same instant",
		"T -> step \"after\" starts: p50",
		"== Summary ==",
		"library log records at WARN or above: 0 (ERROR: 0)",
	} {
		require.Contains(t, report, want)
	}
	// Sections 2, 3a, 3b, 4, 5 and 6 (twice) each give a verdict, and so
	// does the summary.
	require.GreaterOrEqual(t, strings.Count(report, "PASS")+strings.Count(report, "MISS"), 14)
	// The matching Send of section 6 consumed one wait and resumed one run.
	require.Regexp(t, `matching Send, 50 open waits: consumed / resumed\s+1 wait / 1 run\s+exactly 1 / 1\s+PASS`, report)
	// Section 6 sends events that match nothing on purpose; the library's
	// once-per-name notice about them is the only line expected.
	var unexpected []string
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if l != "" && !strings.Contains(l, "an event started no run") {
			unexpected = append(unexpected, l)
		}
	}
	require.Empty(t, unexpected, "the library logged warnings or errors")
}
