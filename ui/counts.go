package ui

import (
	"context"
	"sync"
	"time"

	"github.com/pgdurable/durable"
)

// Counting runs by status reads up to durable.ExactCountLimit rows or a
// sample: too much for every page view. Counts are cached per function,
// refreshed in the background at most every countTTL, and a page waits
// for a count at most countWait (the first time), else shows none yet.
const (
	countTTL      = 10 * time.Second
	countWait     = 120 * time.Millisecond
	countTimeout  = 10 * time.Second
	countMaxCache = 256
)

type countCache struct {
	count func(ctx context.Context, fn string) (*durable.RunCounts, error)
	mu    sync.Mutex
	byKey map[string]*countEntry
	now   func() time.Time
}

type countEntry struct {
	counts  *durable.RunCounts
	err     error
	at      time.Time
	running chan struct{} // closed when the refresh under way ends; nil if none
}

func newCountCache(c *durable.Client) *countCache {
	count := func(ctx context.Context, fn string) (*durable.RunCounts, error) {
		return c.CountRuns(ctx, durable.CountFilter{FunctionID: fn})
	}
	return &countCache{count: count, byKey: map[string]*countEntry{}, now: time.Now}
}

// get returns the cached counts of a function's runs ("" for all),
// starting a refresh when they are older than countTTL and waiting for it
// at most wait when there are none yet. It returns nil while none are
// known, and when the counts were made.
func (c *countCache) get(ctx context.Context, fn string, wait time.Duration) (*durable.RunCounts, time.Time, error) {
	c.mu.Lock()
	e := c.byKey[fn]
	if e == nil {
		if len(c.byKey) >= countMaxCache {
			clear(c.byKey) // function IDs come from users' URLs: bound the map
		}
		e = &countEntry{}
		c.byKey[fn] = e
	}
	if e.running == nil && (e.at.IsZero() || c.now().Sub(e.at) > countTTL) {
		done := make(chan struct{})
		e.running = done
		go c.refresh(fn, e, done)
	}
	counts, err, running, at := e.counts, e.err, e.running, e.at
	c.mu.Unlock()
	if counts == nil && err == nil && running != nil && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-running:
		case <-t.C:
		case <-ctx.Done():
		}
		c.mu.Lock()
		counts, err, at = e.counts, e.err, e.at
		c.mu.Unlock()
	}
	return counts, at, err
}

func (c *countCache) refresh(fn string, e *countEntry, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), countTimeout)
	defer cancel()
	counts, err := c.count(ctx, fn)
	c.mu.Lock()
	if err == nil || e.counts == nil {
		e.counts, e.err = counts, err
	}
	e.at = c.now()
	e.running = nil
	c.mu.Unlock()
	close(done)
}

// statusCount is one status's count as a page shows it.
type statusCount struct {
	Status durable.RunStatus
	N      int64
}

// countList orders counts by status for display.
func countList(rc *durable.RunCounts) []statusCount {
	if rc == nil {
		return nil
	}
	var ss []durable.RunStatus
	for s := range rc.ByStatus {
		ss = append(ss, s)
	}
	sortStatuses(ss)
	out := make([]statusCount, len(ss))
	for i, s := range ss {
		out[i] = statusCount{s, rc.ByStatus[s]}
	}
	return out
}
