package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// baseline is the machine's limit, measured without the engine.
type baseline struct {
	CommitP50, CommitMean, CommitP99 time.Duration // one-row INSERT commit, one connection
	CommitsPerSec                    float64       // with BaselineConns connections
}

// machineLimit measures section 1: autocommit one-row INSERTs into
// bench_t, first one at a time on one connection (latency), then on
// BaselineConns connections in a loop (throughput). The pool has two
// connections more than the loop uses, like the 32-on-34 setup the
// design notes quote.
func (e *env) machineLimit(ctx context.Context) (baseline, error) {
	o := e.o
	var b baseline
	e.section("1. Machine limit: one-row INSERT commits through pgx, no engine")
	before, err := e.mon.snapshot(ctx)
	if err != nil {
		return b, err
	}
	pool, err := e.pool(ctx, "baseline", int32(o.BaselineConns+2), nil, nil)
	if err != nil {
		return b, err
	}
	defer pool.Close()
	insert := "INSERT INTO " + e.table("bench_t") + " (v) VALUES ($1)"

	// (a) latency on one connection.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return b, fmt.Errorf("acquiring a connection: %w", err)
	}
	lat := make([]time.Duration, 0, o.BaselineCommits)
	var pgA0 backendCPU
	for i := 0; i < o.BaselineWarmup+o.BaselineCommits; i++ {
		if i == o.BaselineWarmup {
			pgA0 = e.backendCPU(ctx, "baseline")
		}
		t0 := time.Now()
		if _, err := conn.Exec(ctx, insert, int64(i)); err != nil {
			conn.Release()
			return b, fmt.Errorf("one-row INSERT: %w", err)
		}
		if i >= o.BaselineWarmup {
			lat = append(lat, time.Since(t0))
		}
	}
	conn.Release()
	pgA := cpuSince(pgA0, e.backendCPU(ctx, "baseline"))
	s := sortedCopy(lat)
	b.CommitP50, b.CommitMean, b.CommitP99 = percentile(s, 0.5), mean(lat), percentile(s, 0.99)
	e.printf("  (a) 1 connection, %d commits after %d warm-up: p50 %s, mean %s, p99 %s\n",
		len(lat), o.BaselineWarmup, ms(b.CommitP50), ms(b.CommitMean), ms(b.CommitP99))
	e.printf("      Postgres backend CPU: %s per commit\n", perUnit(pgA, int64(len(lat))))

	// (b) throughput on BaselineConns connections.
	cpu0, pg0 := readCPU(), e.backendCPU(ctx, "baseline")
	n, elapsed, err := commitLoop(ctx, pool, insert, o.BaselineConns, o.BaselineDuration)
	if err != nil {
		return b, err
	}
	busy, pgCPU := cpuBusy(cpu0, readCPU()), cpuSince(pg0, e.backendCPU(ctx, "baseline"))
	b.CommitsPerSec = float64(n) / elapsed.Seconds()
	e.printf("  (b) %d connections (pool MaxConns %d), %s loop: %d commits = %.0f commits/s (machine CPU %s busy)\n",
		o.BaselineConns, o.BaselineConns+2, elapsed.Round(time.Millisecond), n, b.CommitsPerSec, pct(busy))
	e.printf("      Postgres backend CPU of these connections: %s per commit\n", perUnit(pgCPU, n))
	pool.Close()

	after, err := e.mon.snapshot(ctx)
	if err != nil {
		return b, err
	}
	d := delta(before, after, 0)
	total := int64(o.BaselineWarmup+o.BaselineCommits) + n
	e.printf("  cross-check: the client made %d INSERT commits; the server counted %d (whole database);\n"+
		"    WAL: %d fsyncs = %.2f commits per fsync (group commit), %.0f bytes per commit\n",
		total, d.Commits, d.WALSync, float64(total)/float64(max(d.WALSync, 1)), float64(d.WALBytes)/float64(max(total, 1)))
	e.printf("  target: none; these are the references for sections 2 and 3\n")
	e.summarize("one-row commit latency, 1 conn (p50 / mean)", ms(b.CommitP50)+" / "+ms(b.CommitMean), "reference", "-")
	e.summarize(fmt.Sprintf("one-row commits/s, %d conns", o.BaselineConns), fmt.Sprintf("%.0f/s", b.CommitsPerSec), "reference", "-")
	return b, nil
}

// commitLoop runs conns goroutines, each on its own connection, doing
// one-row INSERT commits until d has passed, and returns the number of
// commits and the time from the start to the last goroutine's end.
func commitLoop(ctx context.Context, pool *pgxpool.Pool, insert string, conns int, d time.Duration) (int64, time.Duration, error) {
	// Open every connection before the clock starts.
	held := make([]*pgxpool.Conn, 0, conns)
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	for range conns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("acquiring connection %d: %w", len(held)+1, err)
		}
		held = append(held, c)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		errs  []error
	)
	start := time.Now()
	deadline := start.Add(d)
	for i, c := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			for time.Now().Before(deadline) {
				if _, err := c.Exec(ctx, insert, int64(i)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("connection %d: one-row INSERT: %w", i, err))
					mu.Unlock()
					return
				}
				n++
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, time.Since(start), errors.Join(errs...)
}
