package router

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/store"
)

// Concurrent Sends share transactions (Client.Send): the events of the
// calls waiting when a sender frees up are stored and routed together, in
// one transaction (one commit instead of one per call), as if one Send had
// carried them all; each call gets its own events' IDs. Nothing waits to
// fill a transaction: a call that finds the sender free goes at once, in its
// own goroutine. At most combineSenders transactions are in flight, each
// with the events of at most combineCalls calls: 32 goroutines sending one
// event each otherwise keep 32 backends busy on 2 cores, which costs
// Postgres CPU per statement (see store.Batcher). One sender measured
// better than two (3-step runs/s 1,051–1,109 against 850–951, back to back
// on 2 cores): the transactions grow with the load.
//
// When a shared transaction fails, its calls are halved and each half
// runs again (down to a call alone), so that a call gets only its own
// error (events are deduplicated by ID, so a transaction whose commit was
// lost with its connection stores nothing twice). The grouping itself is
// store.Group's, as for the engine's batched statements. A call whose context carries a trace goes alone: its trace
// context is stored with its events.
const (
	combineSenders = 1
	combineCalls   = 64
	combineTimeout = time.Minute
)

type sendCall struct {
	ctx    context.Context // used when the call goes alone
	events []store.Event
	ids    []string
	err    error
	queued bool // it was in a shared transaction: its ctx no longer bounds it
	done   chan struct{}
}

// SendOwn is Send in a transaction of the router's own (Client.Send),
// shared with concurrent calls (see combineSenders); the producers are
// told about the runs it started. Once its events are queued, it waits for
// their transaction's outcome (at most combineTimeout) even if ctx ends,
// so that the IDs it returns are the truth.
func (rt *Router) SendOwn(ctx context.Context, events []store.Event) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if rt.tel != nil && rt.tel.TraceContext(ctx) != nil {
		return rt.sendAlone(ctx, events)
	}
	call := &sendCall{ctx: ctx, events: events, done: make(chan struct{})}
	rt.combine.Submit(call, call.finished)
	<-call.done
	return call.ids, call.err
}

// sendAlone runs one call's Send in a transaction of its own.
func (rt *Router) sendAlone(ctx context.Context, events []store.Event) ([]string, error) {
	var out []string
	var started int
	err := pgx.BeginTxFunc(ctx, rt.pool, store.BeginGeneric, func(tx pgx.Tx) (err error) {
		out, started, err = rt.Send(ctx, tx, events, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	if started > 0 {
		rt.NotifyProducers(ctx)
	}
	return out, nil
}

func (s *sendCall) finished() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// sendShared stores and routes the events of calls in one transaction and
// hands each call its IDs; when that fails, each call runs alone.
func (rt *Router) sendShared(calls []*sendCall) {
	if len(calls) == 1 {
		// Alone, a call is what it always was: bounded by its context
		// (or, after its shared transaction failed, by combineTimeout).
		cctx := calls[0].ctx
		if calls[0].queued {
			var cancel context.CancelFunc
			cctx, cancel = context.WithTimeout(context.WithoutCancel(cctx), combineTimeout)
			defer cancel()
		}
		calls[0].ids, calls[0].err = rt.sendAlone(cctx, calls[0].events)
		close(calls[0].done)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), combineTimeout)
	defer cancel()
	for _, call := range calls {
		call.queued = true
	}
	var all []store.Event
	for _, call := range calls {
		all = append(all, call.events...)
	}
	ids, err := rt.sendAlone(ctx, all)
	if err != nil {
		// Halve until the call to blame is alone: a refused call costs
		// its companions about 2·log2(n) more transactions, not n.
		half := len(calls) / 2
		rt.sendShared(calls[:half])
		rt.sendShared(calls[half:])
		return
	}
	for _, call := range calls {
		call.ids, ids = ids[:len(call.events):len(call.events)], ids[len(call.events):]
		close(call.done)
	}
}
