package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Batcher runs the hot path's one-statement writes (an attempt's claim and
// load, its mid-attempt step commits, an ungated run's end) of many
// attempts together, as River's completer batches job completions: the
// statements waiting when a connection frees up travel in one batch, one
// round trip and one implicit transaction, so one commit (one WAL flush)
// serves them all. Each statement keeps its own atomicity (a run's end is
// still one statement with its last step) and its own result; only their
// commit is shared. Nothing waits to fill a batch: a statement that finds a
// flusher free goes at once (the idle latency is one round trip, as before),
// and those that arrive while flushers are busy go together in the next
// batch. At most Flushers batches are in flight, which also bounds how many
// of the pool's connections the hot path keeps busy: many more busy
// backends than the server has cores costs CPU per statement (measured:
// 5.9 ms of Postgres CPU per 3-step run with 40 busy connections, 3.2 ms
// with 6, on 2 cores).
//
// When a statement fails, the batch's transaction rolls back as a whole;
// its statements then run again in halves, down to the failing one alone,
// so that only it sees its error. A connection error gives every statement
// of the batch that error (its outcome is unknown, as for a single
// statement). The grouping itself is a Group's.
type Batcher struct {
	db    Pool
	group Group[*batchReq]
}

type batchReq struct {
	sql  string
	args []any
	dest []any
	done chan error
}

// NewBatcher builds a Batcher on db with at most flushers batches in
// flight, each of at most maxBatch statements.
func NewBatcher(db Pool, flushers, maxBatch int) *Batcher {
	b := &Batcher{db: db}
	b.group = Group[*batchReq]{Runners: flushers, Max: maxBatch, Run: b.run}
	return b
}

// batchTimeout bounds one batch: a statement's caller waits for its batch
// (whatever its own context says: the batch writes into what the caller
// reads), so a batch must end.
const batchTimeout = time.Minute

// QueryRow queues sql; Scan waits for the batch it went in and reads the
// statement's row into dest. ctx is not watched once queued (see
// batchTimeout).
func (b *Batcher) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return batchedRow{b: b, ctx: ctx, sql: sql, args: args}
}

type batchedRow struct {
	b    *Batcher
	ctx  context.Context
	sql  string
	args []any
}

func (r batchedRow) Scan(dest ...any) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	req := &batchReq{sql: r.sql, args: r.args, dest: dest, done: make(chan error, 1)}
	// A caller that finds a flusher free flushes, in its own goroutine,
	// until its statement is done (an idle process pays no hand-off).
	r.b.group.Submit(req, func() bool { return len(req.done) > 0 })
	return <-req.done
}

// run executes reqs in one batch; after a statement error it runs them
// again in halves, down to the statement to blame alone.
func (b *Batcher) run(reqs []*batchReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	b.runIn(ctx, reqs)
}

func (b *Batcher) runIn(ctx context.Context, reqs []*batchReq) {
	errs, err := sendBatch(ctx, b.db, reqs)
	var pgErr *pgconn.PgError
	if err != nil && len(reqs) > 1 && errors.As(err, &pgErr) {
		// The whole batch rolled back: halve it (a refused statement
		// costs the others about 2·log2(n) transactions, not n).
		half := len(reqs) / 2
		b.runIn(ctx, reqs[:half])
		b.runIn(ctx, reqs[half:])
		return
	}
	for i, r := range reqs {
		if err != nil {
			r.done <- err
		} else {
			r.done <- errs[i]
		}
	}
}

// sendBatch runs reqs on db as one implicit transaction planned
// generically (see SetGenericPlans). errs holds each statement's own result
// (no row, say); err is the batch's: a statement Postgres refused (the
// transaction rolled back) or a connection error (its commit is unknown).
func sendBatch(ctx context.Context, db Pool, reqs []*batchReq) (errs []error, err error) {
	batch := &pgx.Batch{}
	batch.Queue(SetGenericPlans)
	for _, r := range reqs {
		batch.Queue(r.sql, r.args...)
	}
	br := db.SendBatch(ctx, batch)
	errs = make([]error, len(reqs))
	if _, err = br.Exec(); err == nil {
		for i, r := range reqs {
			errs[i] = br.QueryRow().Scan(r.dest...)
			var pgErr *pgconn.PgError
			if errors.As(errs[i], &pgErr) {
				err = errs[i]
				break
			}
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return errs, err
}
