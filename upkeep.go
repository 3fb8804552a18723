package durable

import (
	"context"
	"math/rand/v2"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/riverjobs"
)

// startUpkeep starts the loops every executing process runs: heartbeats,
// recovery of runs left by dead processes, and punctual wake-ups.
func (c *Client) startUpkeep(ctx context.Context) {
	every := c.cfg.RecoverAfter / 5
	c.loop(ctx, every, "heartbeat", c.heartbeat)
	c.loop(ctx, every, "recovery", c.rescue)
	c.loop(ctx, time.Second, "timeouts", c.expireRuns)
	if jobs := c.cronJobs(); len(jobs) > 0 {
		c.bgDone.Add(1)
		go func() {
			defer c.bgDone.Done()
			c.cronLoop(ctx, jobs)
		}()
	}
	c.bgDone.Add(2)
	go func() {
		defer c.bgDone.Done()
		c.waker(ctx)
	}()
	go func() {
		defer c.bgDone.Done()
		c.routeLoop(ctx)
	}()
}

// kickRouter asks the router to look for events to route now.
func (c *Client) kickRouter() {
	select {
	case c.routeCh <- struct{}{}:
	default:
	}
}

// routeLoop routes the events the library emits itself (system events) to
// the runs they trigger. They are stored in the transaction that ends a
// run; any live process routes them, exactly once, right after (this one
// at once when it emitted them, the others within a second).
func (c *Client) routeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.routeCh:
		case <-time.After(time.Second):
		}
		for {
			n, err := c.router.RouteOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					c.logger.WarnContext(ctx, "durable: routing system events failed", "error", err)
				}
				break
			}
			if n < 100 {
				break
			}
		}
	}
}

func (c *Client) loop(ctx context.Context, every time.Duration, name string, fn func(context.Context) error) {
	c.bgDone.Add(1)
	go func() {
		defer c.bgDone.Done()
		for {
			jitter := time.Duration(rand.Int64N(int64(every)/5 + 1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(every - every/10 + jitter):
			}
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				c.logger.WarnContext(ctx, "durable: "+name+" failed", "error", err)
			}
		}
	}()
}

// noteAttempter makes sure the River client executing a job has a
// heartbeat row before the job's first step, so that recovery never takes
// a live process's run (it matters when an app's own River client works
// durable's jobs).
func (c *Client) noteAttempter(ctx context.Context, id string) error {
	c.attMu.Lock()
	known := c.attempers[id]
	if !known {
		c.attempers[id] = true
	}
	c.attMu.Unlock()
	if known {
		return nil
	}
	host, _ := os.Hostname()
	_, err := c.pool.Exec(ctx, c.q.Heartbeat, []string{id}, host, os.Getpid())
	return err
}

func (c *Client) heartbeatIDs() []string {
	c.attMu.Lock()
	defer c.attMu.Unlock()
	out := make([]string, 0, len(c.attempers))
	for id := range c.attempers {
		out = append(out, id)
	}
	return out
}

func (c *Client) heartbeat(ctx context.Context) error {
	host, _ := os.Hostname()
	_, err := c.pool.Exec(ctx, c.q.Heartbeat, c.heartbeatIDs(), host, os.Getpid())
	return err
}

// rescue hands jobs held by dead processes to live ones.
func (c *Client) rescue(ctx context.Context) error {
	var n, notified int
	err := c.pool.QueryRow(ctx, c.q.Rescue, c.cfg.RecoverAfter.Seconds(), riverjobs.Kind, c.notifyChannel).Scan(&n, &notified)
	if err != nil {
		return err
	}
	if n > 0 {
		c.logger.InfoContext(ctx, "durable: recovered runs of dead workers", "count", n)
		c.kickWaker(time.Now())
	}
	if rand.IntN(100) == 0 {
		_, err = c.pool.Exec(ctx, c.q.PruneWorkers)
	}
	return err
}

// expireRuns cancels runs past their Timeouts.Start or Timeouts.Finish.
func (c *Client) expireRuns(ctx context.Context) error {
	// Batch after batch until a short one: a backlog (a burst of runs
	// nobody started in time) is cleared in this sweep, not a batch a
	// second, and no query reads more than a batch.
	const batch = expireBatch
	for {
		rows, err := c.pool.Query(ctx, c.q.ExpiredRuns, batch)
		if err != nil {
			return err
		}
		type expired struct{ id, which string }
		runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (expired, error) {
			var e expired
			err := row.Scan(&e.id, &e.which)
			return e, err
		})
		if err != nil {
			return err
		}
		cancelled := 0
		for _, r := range runs {
			reason := "timed out: not started within Timeouts.Start"
			if r.which == "finish" {
				reason = "timed out: not finished within Timeouts.Finish"
			}
			var ok bool
			err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) (err error) {
				ok, err = c.router.CancelRun(ctx, tx, r.id, reason)
				return err
			})
			if err != nil {
				return err
			}
			if ok {
				cancelled++
			}
		}
		// A full batch of which none could be cancelled (each ended
		// meanwhile) would come back the same: leave it to the next sweep.
		if len(runs) < batch || cancelled == 0 {
			return nil
		}
	}
}

// kickWaker tells the waker that a job of this process is due at t.
func (c *Client) kickWaker(t time.Time) {
	for {
		select {
		case c.wakeCh <- t:
			return
		default:
		}
		// The channel holds an earlier or later kick: keep the earlier.
		select {
		case old := <-c.wakeCh:
			if old.Before(t) {
				t = old
			}
		default:
		}
	}
}

// waker makes due jobs available and notifies River's producers as soon as
// they are due, instead of waiting for River's scheduler (every 5 s) or a
// producer's poll.
func (c *Client) waker(ctx context.Context) {
	const poll = time.Second
	next, isDue := time.Now().Add(poll), false
	for {
		timer := time.NewTimer(max(time.Until(next), 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case t := <-c.wakeCh:
			timer.Stop()
			if t.Before(next) {
				next, isDue = t, true
			}
			continue
		case <-timer.C:
		}
		// Notify when something came due, not on every poll.
		force := isDue
		var promoted, notified int
		var due *time.Time
		// The next due time is looked for only within the poll: a later
		// one is found by a later poll, so jobs scheduled far ahead are
		// never read.
		err := c.pool.QueryRow(ctx, c.q.Wake, c.cfg.Queue, c.notifyChannel, c.notifyPayload, force, poll.Seconds()).Scan(&promoted, &notified, &due)
		next, isDue = time.Now().Add(poll), false
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.logger.WarnContext(ctx, "durable: wake-up check failed", "error", err)
			continue
		}
		if due != nil && due.Before(next) {
			next, isDue = *due, true
		}
	}
}

func randFloat() float64 { return rand.Float64() }
