// Command durable-bench measures the durable engine against the machine it
// runs on and prints a plain-text report.
//
// Usage:
//
//	go run ./cmd/durable-bench [-runs 2000] [-steps-seq 100] [-latency-samples 200]
//
// It finds Postgres the way the tests do (internal/testdb: TEST_DATABASE_URL,
// DATABASE_URL, else the local server), creates a fresh schema named
// bench_<random hex> with migrate.Up, runs ten phases and drops the schema
// (sections 6 and 7 make schemas of their own, and drop them):
//
//  1. Machine limit, with no engine involved: the latency of a one-row
//     autocommit INSERT on one connection (p50 and mean over 500 commits
//     after a warm-up), and the commits per second 32 connections reach
//     doing the same in a loop for 3 seconds.
//  2. Per-step latency: a function doing N sequential no-op durable.Step
//     calls, timed from inside the function (before the first step's call
//     to after the last step returns, divided by N); the median over five
//     runs, against a target of 1.2 times the one-row commit p50.
//  3. Throughput: R events sent concurrently by 32 goroutines, each event
//     starting a run of three no-op steps; wall time from the first send to
//     the moment a count query (polled every 50 ms) sees every run
//     completed; against a target of half the River-only jobs/s measured
//     in the same run (checked beside River's figure). It runs once per size in
//     -send-batches: by default 3a with one event per Send call (one
//     transaction per event) and 3b with 20. Then, in the same run, a
//     River-only baseline (3c): -river-jobs no-op River jobs of a kind and
//     queue of their own, inserted -river-batch per InsertMany call by the
//     same 32 goroutines, worked by a River client configured like the
//     library's internal one (MaxWorkers 100, pool 40, FetchCooldown 2 ms),
//     to completion (counted in river_job); jobs/s, CPU and WAL per job are
//     printed next to the durable phases' per-run figures: River's own job
//     lifecycle (insert, fetch, completion) is the floor under a run's cost.
//  4. Event-commit-to-first-step latency: one event at a time to an idle
//     client, from the moment Send returns (the event's transaction has
//     committed) to the moment the first step's body starts; p50 against a
//     target of 5 ms.
//  5. Wait-resume latency: a function that waits (WaitForEvent on
//     "bench/resume", If async.data.k == event.data.k) and then runs one
//     step; one run at a time, once GetRun shows the wait recorded, the
//     matching event is sent; from the moment that Send returns to the
//     moment the step's body starts; p50 against a target of 5 ms.
//  6. Send cost with open waits: in two fresh schemas, one with no wait and
//     one with -open-waits waits on "bench/resume" (one real waiting run,
//     the rest rows inserted with SQL in the engine's shape on a
//     placeholder run), the latency of a Send of a "bench/resume" event that
//     matches none (-send-cost-samples per schema, alternating), p50 ratio
//     against a target of 1.2x; then a matching Send must consume exactly one
//     wait and resume exactly one run.
//  7. ListRuns: in a fresh schema filled with -list-runs runs (1,000,000 by
//     default; one INSERT ... SELECT from generate_series, then VACUUM
//     ANALYZE) of five functions, mixed statuses and 30 days of creation
//     times, Client.ListRuns pages of 50 with no filter, by function, by
//     status, both, by time range, all three, deep in through a cursor,
//     and with an If; p50 and p99 over 50 calls each (and each query's
//     EXPLAIN ANALYZE) against a target of p99 <= 50 ms.
//  8. Per-step latency while pruning: -prune-runs ended runs (1,000,000 by
//     default, three steps each, ended 40 days ago) loaded with SQL
//     (generate_series), then -prune-concurrency runs executing at once,
//     20 no-op steps each, each Step call a sample: p50 and p99 over
//     -prune-window with no pruning, then over -prune-window while the
//     retention pruner (as another process runs it, with the library's
//     batches, statement timeout and pauses, on its own pool) deletes the
//     backlog; p99 ratio against a target of 2x.
//  9. Flow control and checkpointing (flow.go): with Concurrency{Limit:
//     10} and -flow-runs queued runs of one 2 ms step, the hand-off from
//     a run's end to the next run's step (p50 <= 10 ms, p99 <= 50 ms) and
//     runs/s against a client with MaxWorkers 10 (>= 0.8); -flow-keys keys at
//     Limit 1 sent behind a hot key's backlog, the start delay of each
//     (p99 <= 100 ms); and -steps-seq sequential steps with BufferedSteps
//     10 against the default (transactions and ms per step).
//  10. Wake-up (phase digit 0, wakeup.go): -wake-runs runs created and
//     put to sleep until the same instant T, then each runs one step: how
//     long after T each step starts (target: all within 2 s).
//
// Every engine phase builds its own client (MaxWorkers 100, RecoverAfter
// default) on its own pgxpool (MaxConns 40), and reports what it cost,
// several ways:
//
//   - client side, from a pgx tracer on the engine's pool: round trips,
//     transactions (and how many wrote) and the statements behind them, per
//     step, run or event, exact within the measured window;
//   - server side, from pg_stat_database.xact_commit and pg_stat_wal deltas
//     (database- and cluster-wide, so they include the client's start and
//     stop and any other session on the same server), and from
//     pg_stat_user_tables of the bench schema (exact rows written per
//     table);
//   - CPU: the machine's (from /proc/stat), this process's, and that of the
//     Postgres backends serving the phase's connections (from /proc, when
//     Postgres runs on this machine).
//
// The throughput phase also reports how often the engine's pool made a
// caller wait for a connection, and -cpuprofile writes a CPU profile of it.
// -phases, -engine-param (session settings such as synchronous_commit=off
// for the engine's pools) and the sizing flags are there for experiments.
//
// The command exits with status 1 and a message on stderr when anything
// fails: no database, a run that fails or never completes, a step body that
// runs twice. The library's own warnings are written to stderr and counted
// in the report.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	o := defaultOptions()
	flag.IntVar(&o.Runs, "runs", o.Runs, "throughput phase: number of runs (events), each with 3 no-op steps")
	flag.IntVar(&o.StepsSeq, "steps-seq", o.StepsSeq, "per-step phase: sequential no-op steps in one run")
	flag.IntVar(&o.StepRuns, "step-runs", o.StepRuns, "per-step phase: number of runs (the median is reported)")
	flag.IntVar(&o.LatencySamples, "latency-samples", o.LatencySamples, "event-latency phase: number of events sent one at a time")
	flag.DurationVar(&o.LatencyPause, "latency-pause", o.LatencyPause, "event-latency phase: pause between one sample and the next send")
	flag.IntVar(&o.Senders, "senders", o.Senders, "throughput phase: goroutines sending events")
	flag.Func("send-batches", "throughput phase: comma-separated events per Send call, one throughput run per size (default \"1,20\"; 1 = one transaction per event)", func(s string) error {
		o.SendBatches = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			o.SendBatches = append(o.SendBatches, n)
		}
		return nil
	})
	flag.StringVar(&o.Phases, "phases", o.Phases, "phases to run, as digits 1 to 9 and 0 for section 10 (1 is always needed)")
	flag.IntVar(&o.WakeRuns, "wake-runs", o.WakeRuns, "wake-up phase: runs sleeping until the same instant")
	flag.IntVar(&o.PreloadEnded, "preload-ended", 0, "fill the bench schema first with this many ended runs (3 steps each): figures must stay flat as tables grow")
	flag.IntVar(&o.PreloadSleeping, "preload-sleeping", 0, "fill the bench schema first with this many sleeping runs (a scheduled River job each)")
	flag.IntVar(&o.FlowRuns, "flow-runs", o.FlowRuns, "flow-control phase: queued runs behind Concurrency{Limit: 10}")
	flag.IntVar(&o.FlowKeys, "flow-keys", o.FlowKeys, "flow-control phase: keys at Concurrency{Limit: 1} sent behind a hot key's backlog")
	flag.Func("engine-param", "a session setting for the engine's pools, as name=value (repeatable; e.g. synchronous_commit=off)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("want name=value, got %q", s)
		}
		if o.EngineParams == nil {
			o.EngineParams = map[string]string{}
		}
		o.EngineParams[k] = v
		return nil
	})
	flag.IntVar(&o.BaselineCommits, "baseline-commits", o.BaselineCommits, "machine limit: measured one-row commits on one connection")
	flag.DurationVar(&o.BaselineDuration, "baseline-duration", o.BaselineDuration, "machine limit: duration of the 32-connection commit loop")
	flag.IntVar(&o.MaxWorkers, "max-workers", o.MaxWorkers, "engine phases: durable Config.MaxWorkers")
	flag.IntVar(&o.PoolConns, "pool-conns", o.PoolConns, "engine phases: MaxConns of the engine's pgxpool")
	flag.IntVar(&o.RiverJobs, "river-jobs", o.RiverJobs, "River-only baseline (section 3): number of no-op jobs (0 skips it)")
	flag.IntVar(&o.RiverBatch, "river-batch", o.RiverBatch, "River-only baseline: jobs per InsertMany call")
	flag.IntVar(&o.WaitSamples, "wait-samples", o.WaitSamples, "wait-resume phase: number of runs resumed one at a time")
	flag.IntVar(&o.OpenWaits, "open-waits", o.OpenWaits, "Send-cost phase: open waits in the loaded schema")
	flag.IntVar(&o.SendCostSamples, "send-cost-samples", o.SendCostSamples, "Send-cost phase: non-matching Send calls measured per schema")
	flag.IntVar(&o.ListRuns, "list-runs", o.ListRuns, "ListRuns phase: runs the listed schema is filled with")
	flag.IntVar(&o.PruneRuns, "prune-runs", o.PruneRuns, "pruning phase: ended runs (3 steps each) loaded for the pruner")
	flag.DurationVar(&o.PruneWindow, "prune-window", o.PruneWindow, "pruning phase: length of each latency window (without, then with pruning)")
	flag.IntVar(&o.PruneConcurrency, "prune-concurrency", o.PruneConcurrency, "pruning phase: runs executing at once")
	flag.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the throughput phase to this file")
	flag.BoolVar(&o.Statements, "statements", o.Statements, "print the statements behind each engine phase (from the pgx tracer)")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	o.LogOutput = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "durable-bench: error: %v\n", err)
		cancel()
		stop()
		os.Exit(1)
	}
}
