package maintenance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable/internal/store"
)

// Retention says what the retention loop keeps. The client fills in the
// defaults; here a negative duration keeps that category forever, and a
// zero or negative Interval means this process never sweeps.
type Retention struct {
	Completed time.Duration // completed (and skipped) runs, after they ended
	Failed    time.Duration // failed runs, after they ended
	Cancelled time.Duration // cancelled runs, after they ended
	Events    time.Duration // events, after they were received (at least MinEventAge)
	Interval  time.Duration // between two sweeps of this process
}

// enabled reports whether this process sweeps at all: expired idempotency
// keys are always pruned, so only Interval decides.
func (r Retention) enabled() bool { return r.Interval > 0 }

const (
	// MinEventAge is the age under which no event is pruned, whatever
	// Retention.Events says: a wait being registered reads the events
	// received up to an hour before it began (a sender's transaction may
	// have been open that long; see EventsSince), and its attempt takes a
	// moment to register it. Open waits read no stored event: an event
	// finds them when it is sent.
	MinEventAge = time.Hour + 15*time.Minute
	// MinCronTickAge is the least a cron tick is kept (and as long as
	// completed runs when that is longer; forever when they are): a tick's
	// row decides which process fires it, which matters for a minute, and
	// then records which run it started.
	MinCronTickAge = 7 * 24 * time.Hour
	// RetentionTimeout is the statement timeout of one batch.
	RetentionTimeout = 30 * time.Second
	// RunBatch is the most index entries a batch of runs reads (deleting
	// the runs among them of its category, with their steps); RowBatch the
	// most a batch of events reads (deleting those nobody needs), or of
	// idempotency keys or cron ticks deletes.
	RunBatch = 2000
	RowBatch = 10000

	// retentionGiveUp is the number of batches in a row that may time out
	// before a category gives up the sweep (its batch stays reduced for
	// the next one).
	retentionGiveUp = 3
	// frontierMargin: a category's next sweep starts this long before the
	// cutoff of its last complete one (a run ended, or an event received,
	// by a transaction that committed later still falls in).
	frontierMargin = time.Hour
	// fullSweepEvery: a category's first sweep in a process, and one every
	// fullSweepEvery, reads from the very start, for what the frontier
	// left behind (rows locked during a sweep, the trigger event of a run
	// that was live then, a transaction open longer than frontierMargin).
	fullSweepEvery = 6 * time.Hour
	// maxBatchPause caps the pause after a batch, which is twice as long as
	// the batch took: a sweep clearing a backlog keeps one connection busy a
	// third of the time at most, leaving the hot path its share of the
	// database (cmd/durable-bench measures it).
	maxBatchPause = time.Second
)

// PruneCounts is what one sweep deleted.
type PruneCounts struct {
	Completed, Failed, Cancelled int64 // runs, by status (Completed includes skipped)
	Steps                        int64 // of those runs
	Events                       int64
	IdempotencyKeys              int64
	CronTicks                    int64
	FlowState                    int64 // rows of flow-control state (GCRA, Singleton and collecting keys)
}

// Total is the number of rows deleted.
func (c PruneCounts) Total() int64 {
	return c.Completed + c.Failed + c.Cancelled + c.Steps + c.Events + c.IdempotencyKeys + c.CronTicks + c.FlowState
}

// Runs is the number of runs deleted.
func (c PruneCounts) Runs() int64 { return c.Completed + c.Failed + c.Cancelled }

// batchSize is the size of a category's batches: halved after a statement
// timeout (down to one), restored gradually, a quarter more after each
// batch that did not time out, up to its maximum.
type batchSize struct{ max, n int }

func newBatchSize(max int) batchSize { return batchSize{max: max, n: max} }

func (b *batchSize) timedOut()  { b.n = max(1, b.n/2) }
func (b *batchSize) succeeded() { b.n = min(b.max, b.n+max(1, b.n/4)) }

// keyset is a position in an index ordered by (time, id).
type keyset struct {
	at time.Time
	id string
}

// category is one kind of row the pruner deletes, with its own batch size
// and, for those read by keyset pages (runs, events), its frontier.
type category struct {
	name     string
	keep     time.Duration // negative: kept forever
	statuses []string      // runs: the statuses of the category
	batch    batchSize
	// frontier is the cutoff of the category's last complete sweep (zero
	// before the first): what lay before it was pruned then, except what
	// fullSweepEvery is for.
	frontier time.Time
	lastFull time.Time
}

// start returns where a sweep of c begins, and whether it is a full one.
func (c *category) start(now time.Time) (keyset, bool) {
	if c.frontier.IsZero() || now.Sub(c.lastFull) >= fullSweepEvery {
		return keyset{}, true
	}
	return keyset{at: c.frontier.Add(-frontierMargin)}, false
}

// finished records a complete sweep of c up to cutoff.
func (c *category) finished(cutoff, now time.Time, full bool) {
	c.frontier = cutoff
	if full {
		c.lastFull = now
	}
}

// RetentionHook is called, in tests, at each stage of a sweep: "skipped"
// (another process holds the lock), "locked" (this sweep holds it),
// "batch" and "timeout" (a batch of category of size n committed, or
// timed out), "done".
type RetentionHook func(stage, category string, n int)

// Pruner deletes what Retention no longer keeps: ended runs with their
// steps, events no run or wait needs, expired idempotency keys and old
// cron ticks. A sweep runs while its process holds an advisory lock, so
// one process at a time sweeps a schema; each category is deleted in
// batches (each its own transaction with a statement timeout) until one
// comes back short.
type Pruner struct {
	pool   *pgxpool.Pool
	q      *store.Queries
	logger *slog.Logger

	timeout atomic.Int64 // statement timeout of a batch, in ns
	hook    atomic.Pointer[RetentionHook]

	mu                           sync.Mutex // one sweep at a time; guards the categories
	completed, failed, cancelled category
	events, keys, ticks, flow    category
}

// NewPruner builds a pruner keeping what ret says.
func NewPruner(pool *pgxpool.Pool, q *store.Queries, logger *slog.Logger, ret Retention) *Pruner {
	tickKeep := time.Duration(-1)
	if ret.Completed >= 0 {
		tickKeep = max(MinCronTickAge, ret.Completed)
	}
	eventKeep := ret.Events
	if eventKeep >= 0 {
		eventKeep = max(eventKeep, MinEventAge)
	}
	// "skipped" is the end state of runs flow control turns away (the
	// API's RunSkipped): kept like completed runs.
	p := &Pruner{pool: pool, q: q, logger: logger,
		completed: category{name: "completed", keep: ret.Completed, statuses: []string{store.RunCompleted, "skipped"}, batch: newBatchSize(RunBatch)},
		failed:    category{name: "failed", keep: ret.Failed, statuses: []string{store.RunFailed}, batch: newBatchSize(RunBatch)},
		cancelled: category{name: "cancelled", keep: ret.Cancelled, statuses: []string{store.RunCancelled}, batch: newBatchSize(RunBatch)},
		events:    category{name: "events", keep: eventKeep, batch: newBatchSize(RowBatch)},
		keys:      category{name: "idempotency_keys", keep: 0, batch: newBatchSize(RowBatch)},
		ticks:     category{name: "cron_ticks", keep: tickKeep, batch: newBatchSize(RowBatch)},
		flow:      category{name: "flow_state", keep: 0, batch: newBatchSize(RowBatch)},
	}
	p.timeout.Store(int64(RetentionTimeout))
	return p
}

// SetStatementTimeout sets the statement timeout of the batches (tests).
func (p *Pruner) SetStatementTimeout(d time.Duration) { p.timeout.Store(int64(d)) }

// SetHook installs h (nil removes it; tests).
func (p *Pruner) SetHook(h RetentionHook) {
	if h == nil {
		p.hook.Store(nil)
		return
	}
	p.hook.Store(&h)
}

// BatchSizes returns the current batch size of each category (tests).
func (p *Pruner) BatchSizes() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, c := range p.categories() {
		out[c.name] = c.batch.n
	}
	return out
}

func (p *Pruner) categories() []*category {
	return []*category{&p.completed, &p.failed, &p.cancelled, &p.events, &p.keys, &p.ticks, &p.flow}
}

func (p *Pruner) note(stage, category string, n int) {
	if h := p.hook.Load(); h != nil {
		(*h)(stage, category, n)
	}
}

// Sweep prunes once, unless another process is sweeping the schema. It
// returns what it deleted and whether it held the lock (and swept), and
// logs one line at Info level when it deleted anything. A category that
// fails (its batches time out retentionGiveUp times in a row, say) does
// not stop the others; the errors are joined.
func (p *Pruner) Sweep(ctx context.Context) (PruneCounts, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var counts PruneCounts
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return counts, false, err
	}
	defer conn.Release()
	var locked bool
	var now time.Time
	if err := conn.QueryRow(ctx, p.q.RetentionLock).Scan(&locked, &now); err != nil {
		return counts, false, err
	}
	if !locked {
		p.note("skipped", "", 0)
		return counts, false, nil
	}
	defer p.unlock(ctx, conn)
	p.note("locked", "", 0)
	t0 := time.Now()

	var errs []error
	for _, r := range []struct {
		c *category
		n *int64
	}{{&p.completed, &counts.Completed}, {&p.failed, &counts.Failed}, {&p.cancelled, &counts.Cancelled}} {
		if r.c.keep < 0 {
			continue
		}
		if err := p.sweepRuns(ctx, conn, r.c, now, r.n, &counts.Steps); err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			return counts, true, ctx.Err()
		}
	}
	if p.events.keep >= 0 {
		if err := p.sweepEvents(ctx, conn, now, &counts.Events); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.sweepRows(ctx, conn, &p.keys, p.q.PruneIdempotencyKeys, now, &counts.IdempotencyKeys); err != nil {
		errs = append(errs, err)
	}
	if p.ticks.keep >= 0 {
		if err := p.sweepRows(ctx, conn, &p.ticks, p.q.PruneCronTicks, now.Add(-p.ticks.keep), &counts.CronTicks); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.sweepFlow(ctx, conn, now, &counts.FlowState); err != nil {
		errs = append(errs, err)
	}
	if ctx.Err() != nil {
		return counts, true, ctx.Err()
	}
	if counts.Total() > 0 {
		p.logger.InfoContext(ctx, "durable: retention pruned",
			"completed_runs", counts.Completed, "failed_runs", counts.Failed, "cancelled_runs", counts.Cancelled,
			"steps", counts.Steps, "events", counts.Events, "idempotency_keys", counts.IdempotencyKeys,
			"cron_ticks", counts.CronTicks, "flow_state", counts.FlowState, "took", time.Since(t0).Round(time.Millisecond))
	}
	p.note("done", "", int(counts.Total()))
	return counts, true, errors.Join(errs...)
}

// unlock releases the sweep's lock. A connection that may still hold it
// never goes back to the pool: closing it releases the lock.
func (p *Pruner) unlock(ctx context.Context, conn *pgxpool.Conn) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(uctx, p.q.RetentionUnlock); err != nil {
		_ = conn.Conn().Close(uctx)
	}
}

// sweepRuns deletes the runs of c that ended before its cutoff, with their
// steps, a page of the ended-runs index at a time.
func (p *Pruner) sweepRuns(ctx context.Context, conn *pgxpool.Conn, c *category, now time.Time, runs, steps *int64) error {
	cutoff := now.Add(-c.keep)
	after, full := c.start(now)
	err := p.batches(ctx, conn, c, func(ctx context.Context, tx pgx.Tx, n int) (bool, error) {
		var read, r, s int64
		var lastAt *time.Time
		var lastID *string
		if err := tx.QueryRow(ctx, p.q.PruneRuns, c.statuses, cutoff, after.at, after.id, n).
			Scan(&read, &lastAt, &lastID, &r, &s); err != nil {
			return false, err
		}
		*runs += r
		*steps += s
		if lastAt != nil && lastID != nil {
			after = keyset{*lastAt, *lastID}
		}
		return read >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("durable: retention: %s runs: %w", c.name, err)
	}
	c.finished(cutoff, now, full)
	return nil
}

// sweepEvents deletes the events received before the cutoff that nothing
// needs, a page of the events index at a time.
func (p *Pruner) sweepEvents(ctx context.Context, conn *pgxpool.Conn, now time.Time, deleted *int64) error {
	c := &p.events
	cutoff := now.Add(-c.keep)
	after, full := c.start(now)
	err := p.batches(ctx, conn, c, func(ctx context.Context, tx pgx.Tx, n int) (bool, error) {
		var read, d int64
		var lastAt *time.Time
		var lastID *string
		if err := tx.QueryRow(ctx, p.q.PruneEvents, cutoff, after.at, after.id, n).
			Scan(&read, &lastAt, &lastID, &d); err != nil {
			return false, err
		}
		*deleted += d
		if lastAt != nil && lastID != nil {
			after = keyset{*lastAt, *lastID}
		}
		return read >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("durable: retention: events: %w", err)
	}
	c.finished(cutoff, now, full)
	return nil
}

// sweepRows runs query (a DELETE of at most $2 rows before the cutoff $1,
// every one of which goes) until a batch deletes fewer.
func (p *Pruner) sweepRows(ctx context.Context, conn *pgxpool.Conn, c *category, query string, cutoff time.Time, deleted *int64) error {
	err := p.batches(ctx, conn, c, func(ctx context.Context, tx pgx.Tx, n int) (bool, error) {
		tag, err := tx.Exec(ctx, query, cutoff, n)
		if err != nil {
			return false, err
		}
		*deleted += tag.RowsAffected()
		return tag.RowsAffected() >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("durable: retention: %s: %w", c.name, err)
	}
	return nil
}

// sweepFlow prunes flow-control state (PruneFlowState) in batches.
func (p *Pruner) sweepFlow(ctx context.Context, conn *pgxpool.Conn, now time.Time, deleted *int64) error {
	err := p.batches(ctx, conn, &p.flow, func(ctx context.Context, tx pgx.Tx, n int) (bool, error) {
		var most int64
		if err := tx.QueryRow(ctx, p.q.PruneFlowState, now, n).Scan(&most); err != nil {
			return false, err
		}
		*deleted += most
		return most >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("durable: retention: %s: %w", p.flow.name, err)
	}
	return nil
}

// batches runs step, one transaction per batch of c's current size (with
// the statement timeout set locally), until step says the batch came back
// short. After a statement timeout the batch is halved and tried again; it
// grows back a quarter per batch that did not time out. After
// retentionGiveUp timeouts in a row the category gives up this sweep. A
// pause twice as long as the batch took (at most maxBatchPause) follows
// each batch, to leave the database to the hot path.
func (p *Pruner) batches(ctx context.Context, conn *pgxpool.Conn, c *category, step func(context.Context, pgx.Tx, int) (bool, error)) error {
	timeouts := 0
	for {
		n := c.batch.n
		timeout := max(time.Duration(p.timeout.Load()), time.Millisecond)
		start := time.Now()
		var more bool
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, p.q.RetentionTimeout, strconv.FormatInt(timeout.Milliseconds(), 10)); err != nil {
				return err
			}
			var err error
			more, err = step(ctx, tx, n)
			return err
		})
		switch {
		case err == nil:
			timeouts = 0
			c.batch.succeeded()
			p.note("batch", c.name, n)
			if !more {
				return nil
			}
		case isStatementTimeout(ctx, err):
			timeouts++
			c.batch.timedOut()
			p.note("timeout", c.name, n)
			if timeouts >= retentionGiveUp {
				return fmt.Errorf("%d batches in a row exceeded the statement timeout (%s); the batch is now %d rows, the rest waits for the next sweep: %w",
					timeouts, timeout, c.batch.n, err)
			}
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(2*time.Since(start), maxBatchPause)):
		}
	}
}

// isStatementTimeout reports whether err is a statement cancelled by its
// timeout (rather than by ctx: pgx cancels a query the same way).
func isStatementTimeout(ctx context.Context, err error) bool {
	var pg *pgconn.PgError
	return ctx.Err() == nil && errors.As(err, &pg) && pg.Code == "57014"
}
