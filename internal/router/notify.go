package router

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/store"
)

// notifyEvery is the least time between two NOTIFYs of one process to
// River's producers: Postgres serialises the commits of notifying
// transactions, and producers also poll.
const notifyEvery = 5 * time.Millisecond

// notifier rate-limits the NOTIFY that wakes River's producers: Postgres
// serialises the commits of notifying transactions, so one every
// notifyEvery per process is plenty (producers also poll).
type notifier struct {
	mu      sync.Mutex
	last    time.Time
	pending bool
	timer   *time.Timer // the pending notification's
	stopped bool
}

// Stop cancels a pending notification and sends no more from timers.
func (rt *Router) Stop() {
	rt.notes.mu.Lock()
	defer rt.notes.mu.Unlock()
	rt.notes.stopped = true
	if rt.notes.timer != nil {
		rt.notes.timer.Stop()
	}
}

// notifyDue reports whether a notification may be sent now (and records
// it as sent).
func (rt *Router) notifyDue() bool {
	rt.notes.mu.Lock()
	defer rt.notes.mu.Unlock()
	if time.Since(rt.notes.last) < notifyEvery {
		return false
	}
	rt.notes.last = time.Now()
	return true
}

// NotifyProducers tells River's producers that runs are ready, after the
// transaction that created them committed: at once, or, within
// notifyEvery of the previous notification, once that interval ends.
func (rt *Router) NotifyProducers(ctx context.Context) {
	rt.notes.mu.Lock()
	wait := notifyEvery - time.Since(rt.notes.last)
	if wait <= 0 {
		rt.notes.last = time.Now()
		rt.notes.mu.Unlock()
		rt.sendNotify(ctx)
		return
	}
	if rt.notes.pending || rt.notes.stopped {
		rt.notes.mu.Unlock()
		return
	}
	rt.notes.pending = true
	rt.notes.timer = time.AfterFunc(wait, func() {
		rt.notes.mu.Lock()
		rt.notes.pending = false
		rt.notes.last = time.Now()
		stopped := rt.notes.stopped
		rt.notes.mu.Unlock()
		if !stopped {
			rt.sendNotify(context.WithoutCancel(ctx))
		}
	})
	rt.notes.mu.Unlock()
}

func (rt *Router) sendNotify(parent context.Context) {
	ctx, cancel := context.WithTimeout(parent, 5*time.Second)
	defer cancel()
	if _, err := rt.pool.Exec(ctx, rt.q.NotifyInsert, rt.channel, rt.payload); err != nil {
		level := slog.LevelWarn
		if parent.Err() != nil {
			level = slog.LevelDebug // the caller gave up (its context ended): nothing is wrong
		}
		rt.logger.Log(ctx, level, "durable: notifying producers failed; they will find the runs at their next poll", "error", err)
	}
}

// PrepareEvent validates an event and turns it into its stored form. pos
// is its position in the call, used in error messages.
func PrepareEvent(id, name string, data any, ts time.Time, pos, maxSize int) (store.Event, error) {
	where := fmt.Sprintf("event %d", pos)
	if name != "" {
		where = fmt.Sprintf("event %d (%q)", pos, name)
	}
	name = strings.TrimSpace(name)
	if name == "" {
		return store.Event{}, fmt.Errorf("durable: %s: Name is required", where)
	}
	if len(name) > 256 {
		return store.Event{}, fmt.Errorf("durable: %s: Name is %d bytes, over the 256-byte limit", where, len(name))
	}
	if len(id) > 256 {
		return store.Event{}, fmt.Errorf("durable: %s: ID is %d bytes, over the 256-byte limit", where, len(id))
	}
	var raw json.RawMessage
	switch d := data.(type) {
	case nil:
		raw = json.RawMessage("{}")
	case json.RawMessage:
		if !json.Valid(d) {
			return store.Event{}, fmt.Errorf("durable: %s: Data is not valid JSON", where)
		}
		raw = d
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return store.Event{}, fmt.Errorf("durable: %s: Data does not marshal to JSON: %w", where, err)
		}
		raw = b
	}
	if len(raw) > maxSize {
		return store.Event{}, fmt.Errorf("durable: %s: Data is %d bytes, over the %d-byte limit (Config.MaxEventSize)", where, len(raw), maxSize)
	}
	if ts.IsZero() {
		ts = time.Now()
	}
	if id == "" {
		id = ids.At(ts)
	}
	return store.Event{ID: id, Name: name, Data: raw, TS: ts.UTC().Truncate(time.Microsecond)}, nil
}
