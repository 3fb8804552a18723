package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgdurable/durable"
)

// throughput measures section 3: Runs events sent concurrently, each
// starting a run of a function with three no-op steps.
//
// Sending: Senders goroutines take event numbers from a shared counter and
// send batch events per Client.Send call. The phase runs once per size in
// SendBatches: by default 1 (every event is its own transaction, as when
// each comes from a separate request) and 20 (fewer, larger transactions,
// so that the sending side weighs less and the runs' execution shows).
// The clock starts before the first send and stops when a count query on
// durable_run, polled every 50 ms on a connection of its own, sees every
// run completed; the time the sends took is reported separately, so one
// can tell whether sending was the bottleneck.
//
// The target is the machine's 32-connection commits/s divided by 6: a
// budget of six commits per run.
func (e *env) throughput(ctx context.Context, base baseline, sub string, batch int) error {
	o := e.o
	e.section(fmt.Sprintf("3%s. Throughput: %d runs x 3 no-op steps, %d event%s per Send call", sub, o.Runs, batch, plural(batch)))
	fnID := fmt.Sprintf("bench-throughput-%d", batch)
	eventName := fmt.Sprintf("bench/tp-%d", batch)

	var bodies, stepBodies atomic.Int64
	fn := durable.NewFunction(durable.FunctionOpts{
		ID:       fnID,
		Triggers: []durable.Trigger{{Event: eventName}},
	}, func(ctx context.Context, in durable.Input[json.RawMessage]) (int, error) {
		bodies.Add(1)
		sum := 0
		for _, id := range []string{"a", "b", "c"} {
			v, err := durable.Step(ctx, id, func(context.Context) (int, error) {
				stepBodies.Add(1)
				return 1, nil
			})
			if err != nil {
				return 0, err
			}
			sum += v
		}
		return sum, nil
	})

	before, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	g, err := e.startEngine(ctx, "throughput", fn)
	if err != nil {
		return err
	}
	defer func() { _ = g.close(ctx) }()
	poll, err := e.conn(ctx, "poll")
	if err != nil {
		return err
	}
	defer poll.Close(context.WithoutCancel(ctx))
	countSQL := `SELECT count(*) FILTER (WHERE status = 'completed'),
		count(*) FILTER (WHERE status IN ('failed', 'cancelled')), count(*)
		FROM ` + e.table("durable_run") + ` WHERE function_id = $1`
	var polls int64
	var completed, failed, created int
	if err := poll.QueryRow(ctx, countSQL, fnID).Scan(&completed, &failed, &created); err != nil { // warms the statement cache
		return fmt.Errorf("count query: %w", err)
	}
	polls++

	var stopProfile func()
	profile := o.CPUProfile
	if profile != "" && sub != "" {
		// One profile per sub-phase: cpu.pprof becomes cpu-3a.pprof, cpu-3b.pprof.
		ext := filepath.Ext(profile)
		profile = strings.TrimSuffix(profile, ext) + "-3" + sub + ext
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
		defer func() {
			if stopProfile != nil {
				stopProfile()
			}
		}()
	}

	t0 := g.tr.snap()
	pg0 := e.backendCPU(ctx, "throughput")
	cpu0, proc0, pool0 := readCPU(), processCPU(), g.pool.Stat()
	start := time.Now()
	sendCtx, cancelSends := context.WithCancel(ctx)
	defer cancelSends()
	var (
		next     atomic.Int64
		sendWG   sync.WaitGroup
		sendMu   sync.Mutex
		sendErr  error
		sendsEnd atomic.Int64 // ns since start when the last Send returned
		sendLat  []time.Duration
	)
	for range o.Senders {
		sendWG.Add(1)
		go func() {
			defer sendWG.Done()
			var lat []time.Duration
			for {
				first := next.Add(int64(batch)) - int64(batch)
				if first >= int64(o.Runs) {
					break
				}
				n := min(int64(batch), int64(o.Runs)-first)
				events := make([]durable.Event, n)
				for i := range events {
					events[i] = durable.Event{Name: eventName, Data: map[string]int64{"i": first + int64(i)}}
				}
				s0 := time.Now()
				if _, err := g.client.Send(sendCtx, events...); err != nil {
					sendMu.Lock()
					sendErr = errors.Join(sendErr, fmt.Errorf("Send: %w", err))
					sendMu.Unlock()
					cancelSends()
					return
				}
				lat = append(lat, time.Since(s0))
			}
			end := int64(time.Since(start))
			for {
				cur := sendsEnd.Load()
				if end <= cur || sendsEnd.CompareAndSwap(cur, end) {
					break
				}
			}
			sendMu.Lock()
			sendLat = append(sendLat, lat...)
			sendMu.Unlock()
		}()
	}

	// Poll until every run has completed.
	lastProgress, lastCompleted := time.Now(), -1
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var end time.Time
	for end.IsZero() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%d of %d runs completed)\n%s", ctx.Err(), completed, o.Runs, e.diagnose(ctx, fnID))
		case <-sendCtx.Done():
			if ctx.Err() == nil {
				sendWG.Wait()
				return sendErr
			}
		case <-tick.C:
		}
		err := poll.QueryRow(ctx, countSQL, fnID).Scan(&completed, &failed, &created)
		polls++
		if err != nil {
			return fmt.Errorf("count query: %w", err)
		}
		if completed >= o.Runs {
			end = time.Now()
			break
		}
		if failed > 0 {
			return fmt.Errorf("%d runs failed or were cancelled (%d completed)\n%s", failed, completed, e.diagnose(ctx, fnID))
		}
		if completed != lastCompleted {
			lastCompleted, lastProgress = completed, time.Now()
		} else if time.Since(lastProgress) > 20*time.Second {
			return fmt.Errorf("%w: %d of %d runs completed, %d created, none completed in the last 20s\n%s",
				errStall, completed, o.Runs, created, e.diagnose(ctx, fnID))
		}
	}
	wall := end.Sub(start)
	cpu1, proc1, pool1 := readCPU(), processCPU(), g.pool.Stat()
	pgCPU := cpuSince(pg0, e.backendCPU(ctx, "throughput"))
	sendWG.Wait()
	if sendErr != nil {
		return sendErr
	}
	traced := diffTrace(t0, g.tr.snap())
	if stopProfile != nil {
		stopProfile()
		stopProfile = nil
	}

	// Run latencies and the DB's own view of the window, from the
	// server's clock.
	var p50, p99, dbWall float64
	err = poll.QueryRow(ctx, `SELECT
			percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - created_at)),
			percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - created_at)),
			extract(epoch FROM max(ended_at) - min(created_at))
		FROM `+e.table("durable_run")+` WHERE function_id = $1`, fnID).Scan(&p50, &p99, &dbWall)
	polls++
	if err != nil {
		return fmt.Errorf("reading run latencies: %w", err)
	}
	poll.Close(ctx)
	if err := g.close(ctx); err != nil {
		return err
	}
	after, err := e.mon.snapshot(ctx)
	if err != nil {
		return err
	}
	if b, s := bodies.Load(), stepBodies.Load(); b != int64(o.Runs) || s != int64(3*o.Runs) {
		return fmt.Errorf("function bodies ran %d times and step bodies %d times for %d runs, want %d and %d (exactly once each)",
			b, s, o.Runs, o.Runs, 3*o.Runs)
	}

	rate := float64(o.Runs) / wall.Seconds()
	target := base.CommitsPerSec / 6
	sendsTook := time.Duration(sendsEnd.Load())
	sl := sortedCopy(sendLat)
	e.printf("  sending: %d goroutines, %d event%s per Send call (%d calls); sends took %s (%.0f events/s), Send p50 %s, p99 %s\n",
		o.Senders, batch, plural(batch), len(sendLat), sendsTook.Round(time.Millisecond),
		float64(o.Runs)/sendsTook.Seconds(), ms(percentile(sl, 0.5)), ms(percentile(sl, 0.99)))
	e.printf("  wall time, first send to all %d runs seen completed (50 ms polls): %s\n", o.Runs, wall.Round(time.Millisecond))
	e.printf("  server clock: first run created to last run ended %.3f s; run latency (created->ended) p50 %.1f ms, p99 %.1f ms\n",
		dbWall, p50*1000, p99*1000)
	e.printf("  throughput: %.0f runs/s; a budget of six one-row commits per run would allow %.0f runs/s (%.0f commits/s / 6); the target, half of River-alone jobs/s, is checked beside River's figure (3b)\n",
		rate, target, base.CommitsPerSec)
	e.printf("  that is %.2f one-row-commit equivalents per run at the machine's 32-connection rate\n", base.CommitsPerSec/rate)
	e.printf("  function bodies executed: %d, step bodies: %d (exactly once each)\n", bodies.Load(), stepBodies.Load())
	e.printf("  %s\n", traced.describe(o.Runs, "run"))
	if e.o.Statements {
		e.printf("%s", indent(traced.table(o.Runs, "run", 20), "    "))
	}
	sd := delta(before, after, polls)
	e.printf("  %s\n", sd.describe(o.Runs, "run"))
	if float64(sd.Commits) > 1.2*float64(traced.c.Commits) {
		e.printf("    (the server counted %.1fx the transactions this process ran in the window: other sessions were busy on this database)\n",
			float64(sd.Commits)/float64(max(traced.c.Commits, 1)))
	}
	e.printf("%s", indent(tableDelta(before, after, o.Runs, "run"), "    "))
	acq, waited := pool1.AcquireCount()-pool0.AcquireCount(), pool1.EmptyAcquireCount()-pool0.EmptyAcquireCount()
	waitTime := pool1.EmptyAcquireWaitTime() - pool0.EmptyAcquireWaitTime()
	e.printf("  engine pool (MaxConns %d): %d acquires, %d (%.0f%%) waited for a free connection, %s waiting in all (avg %s per waiting acquire)\n",
		o.PoolConns, acq, waited, 100*float64(waited)/float64(max(acq, 1)), waitTime.Round(time.Millisecond), ms(waitTime/time.Duration(max(waited, 1))))
	e.printf("  CPU during the window: machine %s busy (all processes, %d CPUs); this process used %s of CPU (%.2f cores)\n",
		pct(cpuBusy(cpu0, cpu1)), runtime.NumCPU(), (proc1 - proc0).Round(time.Millisecond), float64(proc1-proc0)/float64(wall))
	e.printf("    Postgres backend CPU of the engine's connections: %s per run; this process: %.3f ms per run\n",
		perUnit(pgCPU, int64(o.Runs)), float64(proc1-proc0)/float64(time.Millisecond)/float64(o.Runs))
	if profile != "" {
		e.printf("  CPU profile of this phase written to %s\n", profile)
	}
	e.costs = append(e.costs, phaseCost{
		label: fmt.Sprintf("3%s durable, %d event%s per Send", sub, batch, plural(batch)), unit: "run", n: o.Runs,
		rate: rate, pgCPU: pgCPU, proc: proc1 - proc0, sd: sd, tr: traced.c, busy: cpuBusy(cpu0, cpu1),
	})
	e.summarize(fmt.Sprintf("throughput, %d runs x 3 steps, %d/Send", o.Runs, batch), fmt.Sprintf("%.0f runs/s", rate),
		">= 0.50x River-only jobs/s", "see below")
	return nil
}
