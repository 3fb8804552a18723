// Command durable-bench measures the durable engine against the machine it
// runs on and prints a plain-text report.
//
// Usage:
//
//	go run ./cmd/durable-bench [-runs 2000] [-steps-seq 100] [-latency-samples 200]
//
// It finds Postgres the way the tests do (internal/testdb: TEST_DATABASE_URL,
// DATABASE_URL, else the local server), creates a fresh schema named
// bench_<random hex> with migrate.Up, runs four phases and drops the schema:
//
//  1. Machine limit, with no engine involved: the latency of a one-row
//     INSERT commit on one connection (p50 and mean), and the commits per
//     second 32 connections reach doing the same in a loop.
//  2. Per-step latency: a function doing N sequential no-op durable.Step
//     calls, timed from inside the function (before the first step's call
//     to after the last step returns, divided by N); the median over a few
//     runs, against a target of 1.5 times the one-row commit latency.
//  3. Throughput: R events sent concurrently, each starting a run of three
//     no-op steps; wall time from the first send to the moment a count query
//     sees every run completed; against a target of the 32-connection
//     commits/s divided by 6 (a budget of six commits per run).
//  4. Event-commit-to-first-step latency: one event at a time to an idle
//     client, from the moment Send returns (the event's transaction has
//     committed) to the moment the first step's body starts; p50 against a
//     target of 20 ms.
//
// Each phase also reports what it cost the database, two ways: client-side,
// from a pgx tracer on the engine's pool (exact round trips, transactions
// and the statements behind them, within the measured window), and
// server-side, from pg_stat_database.xact_commit deltas (database-wide, so
// they include the client's start and stop and any other session using the
// same database). A CPU profile of the throughput phase can be written with
// -cpuprofile.
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
	flag.IntVar(&o.SendBatch, "send-batch", o.SendBatch, "throughput phase: events per Send call (1 = one transaction per event)")
	flag.IntVar(&o.BaselineCommits, "baseline-commits", o.BaselineCommits, "machine limit: measured one-row commits on one connection")
	flag.DurationVar(&o.BaselineDuration, "baseline-duration", o.BaselineDuration, "machine limit: duration of the 32-connection commit loop")
	flag.IntVar(&o.MaxWorkers, "max-workers", o.MaxWorkers, "engine phases: durable Config.MaxWorkers")
	flag.IntVar(&o.PoolConns, "pool-conns", o.PoolConns, "engine phases: MaxConns of the engine's pgxpool")
	flag.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the throughput phase to this file")
	flag.BoolVar(&o.Statements, "statements", o.Statements, "print the statements behind each engine phase (from the pgx tracer)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
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
