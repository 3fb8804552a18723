package store

import "sync"

// Group runs items in groups, as a group commit does: an item submitted
// while fewer than Runners groups are running goes at once, run by its
// submitter with whatever else is queued; items submitted while every
// runner is busy queue and go together in the next group, of at most Max
// items. Nothing waits to fill a group. The Batcher's statements and the
// router's shared Sends are grouped this way.
type Group[T any] struct {
	Runners, Max int
	// Run runs one group; it must finish every item in it.
	Run func(items []T)

	mu      sync.Mutex
	queue   []T
	running int
}

// Submit queues item. When a runner is free, the caller becomes one until
// done reports its item finished (a queue left then goes on in a new
// goroutine, so no caller runs more than it must).
func (g *Group[T]) Submit(item T, done func() bool) {
	g.mu.Lock()
	g.queue = append(g.queue, item)
	start := g.running < max(1, g.Runners)
	if start {
		g.running++
	}
	g.mu.Unlock()
	if start {
		g.flush(done)
	}
}

// flush runs groups until the queue is empty or, with done set, until
// done reports true.
func (g *Group[T]) flush(done func() bool) {
	for {
		g.mu.Lock()
		n := min(len(g.queue), max(1, g.Max))
		if done != nil && n > 0 && done() {
			g.mu.Unlock()
			go g.flush(nil)
			return
		}
		if n == 0 {
			g.running--
			g.mu.Unlock()
			return
		}
		items := append([]T(nil), g.queue[:n]...)
		g.queue = append(g.queue[:0], g.queue[n:]...)
		g.mu.Unlock()
		g.Run(items)
	}
}
