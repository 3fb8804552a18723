package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/pgdurable/durable/internal/ids"
)

// phaseCost is what one throughput phase (a durable one, or the River-only
// baseline) achieved and cost, per unit of work (a run or a job).
type phaseCost struct {
	label string
	unit  string // "run" or "job"
	n     int
	rate  float64       // units per second
	pgCPU time.Duration // Postgres backend CPU of the phase's connections; -1 when unknown
	proc  time.Duration // this process's CPU
	sd    serverDelta
	tr    counts
	busy  float64 // the machine's busy share
}

// River-only baseline job: its own kind and queue. Its args have the
// shape of a durable run's job ({"run_id": <26-character ID>}), so that
// the GIN index on river_job.args has the same work to do.
const (
	noopKind  = "bench_noop"
	noopQueue = "bench_river"
)

type noopArgs struct {
	RunID string `json:"run_id"`
}

func (noopArgs) Kind() string { return noopKind }

func (noopArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: noopQueue} }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	worked *atomic.Int64
}

func (w *noopWorker) Work(context.Context, *river.Job[noopArgs]) error {
	w.worked.Add(1)
	return nil
}

// riverBaseline measures River's own job lifecycle, with no durable
// engine: RiverJobs no-op jobs inserted by Senders goroutines, RiverBatch
// per InsertMany call (one transaction, like a Send of that many events),
// worked by a River client configured like the library's internal one
// (MaxWorkers workers on one queue, FetchCooldown 2 ms, FetchPollInterval
// 1 s) on a traced pool of PoolConns connections. The clock stops when a
// count query on river_job, polled every 50 ms, sees every job completed.
// It then compares the phase's rate and costs with the durable throughput
// phases of the same run.
func (e *env) riverBaseline(ctx context.Context, base baseline, sub string) error {
	o := e.o
	batch := o.RiverBatch
	e.section(fmt.Sprintf("3%s. River-only baseline: %d no-op River jobs, %d job%s per InsertMany call, no durable engine",
		sub, o.RiverJobs, batch, plural(batch)))
	e.printf("  a River client like the library's internal one (MaxWorkers %d on one queue, pgxpool MaxConns %d, FetchCooldown 2 ms,\n"+
		"  FetchPollInterval 1 s), its own kind %q and queue %q, job args {\"run_id\": <26 chars>} like a run's job; same schema\n",
		o.MaxWorkers, o.PoolConns, noopKind, noopQueue)

	var worked atomic.Int64
	before, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	tr := newTracer(e.schema)
	pool, err := e.pool(ctx, "river", int32(o.PoolConns), tr, o.EngineParams)
	if err != nil {
		return err
	}
	defer pool.Close()
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &noopWorker{worked: &worked}); err != nil {
		return err
	}
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:               e.schema,
		Logger:               e.logger.With("phase", "river"),
		FetchCooldown:        2 * time.Millisecond,
		FetchPollInterval:    time.Second,
		JobTimeout:           -1,
		RescueStuckJobsAfter: 100 * 365 * 24 * time.Hour,
		MaxAttempts:          1000,
		Queues:               map[string]river.QueueConfig{noopQueue: {MaxWorkers: o.MaxWorkers}},
		Workers:              workers,
	})
	if err != nil {
		return fmt.Errorf("river.NewClient: %w", err)
	}
	if err := rc.Start(ctx); err != nil {
		return fmt.Errorf("river client Start: %w", err)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		err := rc.Stop(sctx)
		pool.Close()
		if err != nil {
			return fmt.Errorf("river client Stop: %w", err)
		}
		return nil
	}
	defer func() { _ = stop() }()

	poll, err := e.conn(ctx, "poll")
	if err != nil {
		return err
	}
	defer poll.Close(context.WithoutCancel(ctx))
	countSQL := `SELECT count(*) FILTER (WHERE state = 'completed'),
		count(*) FILTER (WHERE state IN ('discarded', 'cancelled', 'retryable')), count(*)
		FROM ` + e.table("river_job") + ` WHERE kind = $1`
	var polls int64
	var completed, failed, created int
	if err := poll.QueryRow(ctx, countSQL, noopKind).Scan(&completed, &failed, &created); err != nil {
		return fmt.Errorf("count query: %w", err)
	}
	polls++
	if created != 0 {
		return fmt.Errorf("river_job already holds %d jobs of kind %s", created, noopKind)
	}
	// Let the client settle (leader election, queue registration) before
	// the clock starts, as the durable phases' clients have by then.
	time.Sleep(100 * time.Millisecond)

	t0 := tr.snap()
	pg0 := e.backendCPU(ctx, "river")
	cpu0, proc0, pool0 := readCPU(), processCPU(), pool.Stat()
	start := time.Now()
	insCtx, cancelInserts := context.WithCancel(ctx)
	defer cancelInserts()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		insErr  error
		insEnd  atomic.Int64
		insLat  []time.Duration
		inserts int
	)
	for range o.Senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			for {
				first := next.Add(int64(batch)) - int64(batch)
				if first >= int64(o.RiverJobs) {
					break
				}
				n := min(int64(batch), int64(o.RiverJobs)-first)
				params := make([]river.InsertManyParams, n)
				for i := range params {
					params[i] = river.InsertManyParams{Args: noopArgs{RunID: ids.New()}}
				}
				s0 := time.Now()
				if _, err := rc.InsertMany(insCtx, params); err != nil {
					mu.Lock()
					insErr = errors.Join(insErr, fmt.Errorf("InsertMany: %w", err))
					mu.Unlock()
					cancelInserts()
					return
				}
				lat = append(lat, time.Since(s0))
			}
			end := int64(time.Since(start))
			for {
				cur := insEnd.Load()
				if end <= cur || insEnd.CompareAndSwap(cur, end) {
					break
				}
			}
			mu.Lock()
			insLat = append(insLat, lat...)
			inserts += len(lat)
			mu.Unlock()
		}()
	}

	lastProgress, lastCompleted := time.Now(), -1
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var end time.Time
	for end.IsZero() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%d of %d jobs completed)", ctx.Err(), completed, o.RiverJobs)
		case <-insCtx.Done():
			if ctx.Err() == nil {
				wg.Wait()
				return insErr
			}
		case <-tick.C:
		}
		err := poll.QueryRow(ctx, countSQL, noopKind).Scan(&completed, &failed, &created)
		polls++
		if err != nil {
			return fmt.Errorf("count query: %w", err)
		}
		if completed >= o.RiverJobs {
			end = time.Now()
			break
		}
		if failed > 0 {
			return fmt.Errorf("%d River jobs were discarded, cancelled or are retrying (%d completed)", failed, completed)
		}
		if completed != lastCompleted {
			lastCompleted, lastProgress = completed, time.Now()
		} else if time.Since(lastProgress) > 20*time.Second {
			return fmt.Errorf("%w: %d of %d River jobs completed, %d inserted, none completed in the last 20s",
				errStall, completed, o.RiverJobs, created)
		}
	}
	wall := end.Sub(start)
	cpu1, proc1, pool1 := readCPU(), processCPU(), pool.Stat()
	pgCPU := cpuSince(pg0, e.backendCPU(ctx, "river"))
	wg.Wait()
	if insErr != nil {
		return insErr
	}
	traced := diffTrace(t0, tr.snap())

	var p50, p99, dbWall float64
	err = poll.QueryRow(ctx, `SELECT
			percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)),
			percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)),
			extract(epoch FROM max(finalized_at) - min(created_at))
		FROM `+e.table("river_job")+` WHERE kind = $1`, noopKind).Scan(&p50, &p99, &dbWall)
	polls++
	if err != nil {
		return fmt.Errorf("reading job latencies: %w", err)
	}
	rows, err := poll.Query(ctx, `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'river_job' ORDER BY 1`, e.schema)
	polls++
	if err != nil {
		return fmt.Errorf("listing river_job's indexes: %w", err)
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("listing river_job's indexes: %w", err)
	}
	poll.Close(ctx)
	if err := stop(); err != nil {
		return err
	}
	after, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	if w := worked.Load(); w != int64(o.RiverJobs) {
		return fmt.Errorf("the no-op worker ran %d times for %d jobs, want exactly %d", w, o.RiverJobs, o.RiverJobs)
	}

	rate := float64(o.RiverJobs) / wall.Seconds()
	target := base.CommitsPerSec / 6
	insTook := time.Duration(insEnd.Load())
	sl := sortedCopy(insLat)
	e.printf("  inserting: %d goroutines, %d job%s per InsertMany call (%d calls); inserts took %s (%.0f jobs/s), InsertMany p50 %s, p99 %s\n",
		o.Senders, batch, plural(batch), inserts, insTook.Round(time.Millisecond), float64(o.RiverJobs)/insTook.Seconds(),
		ms(percentile(sl, 0.5)), ms(percentile(sl, 0.99)))
	e.printf("  wall time, first insert to all %d jobs seen completed (50 ms polls): %s\n", o.RiverJobs, wall.Round(time.Millisecond))
	e.printf("  server clock: first job created to last job finalized %.3f s; job latency (created->finalized) p50 %.1f ms, p99 %.1f ms\n",
		dbWall, p50*1000, p99*1000)
	e.printf("  throughput: %.0f jobs/s = %.2fx the durable target of %.0f runs/s (%.0f commits/s / 6)\n",
		rate, rate/target, target, base.CommitsPerSec)
	e.printf("  that is %.2f one-row-commit equivalents per job at the machine's 32-connection rate (a run's budget is 6)\n",
		base.CommitsPerSec/rate)
	e.printf("  no-op worker executions: %d (exactly once each)\n", worked.Load())
	e.printf("  %s\n", strings.Replace(traced.describe(o.RiverJobs, "job"), "engine's pool", "River client's pool", 1))
	if o.Statements {
		e.printf("%s", indent(traced.table(o.RiverJobs, "job", 12), "    "))
	}
	sd := delta(before, after, polls)
	e.printf("  %s\n", sd.describe(o.RiverJobs, "job"))
	if float64(sd.Commits) > 1.2*float64(traced.c.Commits) {
		e.printf("    (the server counted %.1fx the transactions this process ran in the window: other sessions were busy on this database)\n",
			float64(sd.Commits)/float64(max(traced.c.Commits, 1)))
	}
	e.printf("%s", indent(tableDelta(before, after, o.RiverJobs, "job"), "    "))
	e.printf("    river_job has %d indexes, every one rewritten by a non-HOT update: %s\n", len(indexes), strings.Join(indexes, ", "))
	acq, waited := pool1.AcquireCount()-pool0.AcquireCount(), pool1.EmptyAcquireCount()-pool0.EmptyAcquireCount()
	waitTime := pool1.EmptyAcquireWaitTime() - pool0.EmptyAcquireWaitTime()
	e.printf("  River client's pool (MaxConns %d): %d acquires, %d (%.0f%%) waited for a free connection, %s waiting in all\n",
		o.PoolConns, acq, waited, 100*float64(waited)/float64(max(acq, 1)), waitTime.Round(time.Millisecond))
	e.printf("  CPU during the window: machine %s busy (all processes, %d CPUs); this process used %s of CPU (%.2f cores)\n",
		pct(cpuBusy(cpu0, cpu1)), runtime.NumCPU(), (proc1 - proc0).Round(time.Millisecond), float64(proc1-proc0)/float64(wall))
	e.printf("    Postgres backend CPU of the River client's connections: %s per job; this process: %.3f ms per job\n",
		perUnit(pgCPU, int64(o.RiverJobs)), float64(proc1-proc0)/float64(time.Millisecond)/float64(o.RiverJobs))

	river := phaseCost{
		label: fmt.Sprintf("3%s River only, %d job%s per InsertMany", sub, batch, plural(batch)), unit: "job", n: o.RiverJobs,
		rate: rate, pgCPU: pgCPU, proc: proc1 - proc0, sd: sd, tr: traced.c, busy: cpuBusy(cpu0, cpu1),
	}
	e.costs = append(e.costs, river)
	e.compareCosts(base, river)
	e.summarize(fmt.Sprintf("River only: no-op jobs/s, %d/InsertMany", batch), fmt.Sprintf("%.0f jobs/s (%.2fx target)", rate, rate/target),
		"reference", "-")
	var ratios []string
	for _, c := range e.costs {
		if c.unit == "run" {
			ratios = append(ratios, fmt.Sprintf("%.2f (%s)", c.rate/rate, strings.TrimSpace(strings.SplitN(c.label, " ", 2)[0])))
		}
	}
	if len(ratios) > 0 {
		e.summarize("durable runs/s / River-only jobs/s", strings.Join(ratios, ", "), "-", "-")
	}
	return nil
}

// compareCosts prints the durable throughput phases of this run next to
// the River-only baseline, per run and per job.
func (e *env) compareCosts(base baseline, river phaseCost) {
	e.printf("  same run, side by side (per run for the durable phases, per job for River):\n")
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "phase\trate\tmachine busy\tPG backend CPU\tbench CPU\tWAL bytes\tWAL records\tserver commits\tclient txns\tround trips")
	cpu := func(d time.Duration, n int) string {
		if d < 0 {
			return "?"
		}
		return ms(d / time.Duration(max(n, 1)))
	}
	for _, c := range e.costs {
		u := float64(max(c.n, 1))
		fmt.Fprintf(tw, "%s\t%.0f %ss/s\t%s\t%s\t%s\t%.0f\t%.1f\t%.2f\t%.2f\t%.2f\n", c.label, c.rate, c.unit, pct(c.busy),
			cpu(c.pgCPU, c.n), cpu(c.proc, c.n), float64(c.sd.WALBytes)/u, float64(c.sd.WALRecords)/u,
			float64(c.sd.Commits)/u, float64(c.tr.Commits)/u, float64(c.tr.RoundTrips)/u)
	}
	_ = tw.Flush()
	e.printf("%s", indent(b.String(), "    "))
	for _, c := range e.costs {
		if c.unit != "run" {
			continue
		}
		line := fmt.Sprintf("    %s: %.2fx River's rate (a run takes the wall-clock share of %.2f River jobs)",
			c.label, c.rate/river.rate, river.rate/c.rate)
		if c.pgCPU >= 0 && river.pgCPU > 0 {
			line += fmt.Sprintf("; PG backend CPU per run %.2fx per job", (float64(c.pgCPU)/float64(c.n))/(float64(river.pgCPU)/float64(river.n)))
		}
		if river.sd.WALBytes > 0 {
			line += fmt.Sprintf("; WAL bytes per run %.2fx per job", (float64(c.sd.WALBytes)/float64(c.n))/(float64(river.sd.WALBytes)/float64(river.n)))
		}
		e.printf("%s\n", line)
	}
	for _, c := range e.costs {
		if c.unit != "run" {
			continue
		}
		e.printf("    target: %s >= 0.50x River-only jobs/s (%.0f runs/s) -> %s (%.2fx)\n", c.label, river.rate/2, verdict(c.rate >= river.rate/2), c.rate/river.rate)
		e.summarize(c.label+": runs/s vs River-only jobs/s", fmt.Sprintf("%.2fx (%.0f vs %.0f)", c.rate/river.rate, c.rate, river.rate),
			">= 0.50x", verdict(c.rate >= river.rate/2))
	}
	e.printf("    (River's job lifecycle alone uses %.2f one-row-commit equivalents per job at the machine's 32-connection rate of %.0f commits/s)\n",
		base.CommitsPerSec/river.rate, base.CommitsPerSec)
	e.printf("    (WAL and server commits are cluster/database-wide: other sessions on the server add to them; Postgres backend CPU and client figures are this phase's own)\n")
}
