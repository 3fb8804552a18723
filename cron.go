package durable

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"
)

// cronSchedule is a parsed Trigger.Cron.
type cronSchedule struct {
	spec  string
	sched cron.Schedule
	every time.Duration // for "@every": ticks aligned to the Unix epoch
}

// parseCron parses a 5-field spec with an optional TZ=/CRON_TZ= prefix, or
// a descriptor (@hourly, @daily, @every 30s, ...).
func parseCron(spec string) (*cronSchedule, error) {
	s := strings.TrimSpace(spec)
	if rest, ok := strings.CutPrefix(s, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("cron %q: %w", spec, err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("cron %q: @every must be at least 1s", spec)
		}
		return &cronSchedule{spec: spec, every: d}, nil
	}
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w", spec, err)
	}
	return &cronSchedule{spec: spec, sched: sched}, nil
}

// next returns the first tick strictly after t. Every process computes the
// same ticks, so the tick's primary key decides which one starts the run.
func (s *cronSchedule) next(t time.Time) time.Time {
	if s.every > 0 {
		n := t.UnixNano() / int64(s.every)
		return time.Unix(0, (n+1)*int64(s.every)).UTC()
	}
	return s.sched.Next(t).UTC()
}

type cronJob struct {
	fn    *funcDef
	sched *cronSchedule
}

// cronJobs lists the cron triggers of this client's functions.
func (c *Client) cronJobs() []cronJob {
	var out []cronJob
	for _, d := range c.funcs {
		for _, t := range d.opts.Triggers {
			if t.Cron == "" {
				continue
			}
			s, err := parseCron(t.Cron)
			if err != nil {
				continue // rejected by NewClient
			}
			out = append(out, cronJob{fn: d, sched: s})
		}
	}
	return out
}

// cronLoop starts one run per tick of each cron trigger. Every process
// that has the function runs this loop; the durable_cron_tick primary key
// makes exactly one of them start each tick's run, so a restart or
// several processes never fire a tick twice. A tick missed by less than a
// minute (a restart across it) is still fired. A tick that fails (the
// database is down, say) is retried after a backoff, 1s doubling to a
// minute, per trigger.
func (c *Client) cronLoop(ctx context.Context, jobs []cronJob) {
	next := make([]time.Time, len(jobs))
	fails := make([]int, len(jobs))         // failures of next[i] in a row
	retryAt := make([]time.Time, len(jobs)) // when next[i] may be tried again
	now := time.Now()
	for i, j := range jobs {
		// Start from the latest tick of the past minute, if any (fired
		// already by another process or not: the tick's key decides).
		t := j.sched.next(now.Add(-time.Minute))
		for {
			n := j.sched.next(t)
			if n.After(now) {
				break
			}
			t = n
		}
		next[i] = t
	}
	// A trigger is due at its tick, or after its backoff while it fails.
	due := func(i int) time.Time {
		if retryAt[i].After(next[i]) {
			return retryAt[i]
		}
		return next[i]
	}
	for {
		soonest := 0
		for i := range next {
			if due(i).Before(due(soonest)) {
				soonest = i
			}
		}
		// A little jitter spreads the processes' inserts.
		wait := time.Until(due(soonest)) + time.Duration(rand.Int64N(int64(20*time.Millisecond)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		j := jobs[soonest]
		tick := next[soonest]
		if err := c.fireTick(ctx, j, tick); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Try the same tick again, later: retrying at once would
			// hammer a failing database (and flood the log) from every
			// process.
			fails[soonest]++
			backoff := cronBackoff(fails[soonest])
			retryAt[soonest] = time.Now().Add(backoff)
			c.logger.WarnContext(ctx, "durable: cron tick failed", "function_id", j.fn.opts.ID, "tick", tick,
				"retry_in", backoff, "error", err)
			continue
		}
		fails[soonest], retryAt[soonest] = 0, time.Time{}
		next[soonest] = j.sched.next(tick)
	}
}

// fireTick starts the run of one tick unless another process did.
func (c *Client) fireTick(ctx context.Context, j cronJob, tick time.Time) error {
	fnID := j.fn.opts.ID
	data, err := json.Marshal(map[string]any{"cron": j.sched.spec, "tick": tick.Format(time.RFC3339Nano)})
	if err != nil {
		return err
	}
	ev := eventJSON{
		ID:   "cron:" + fnID + ":" + strconv.FormatInt(tick.UnixMilli(), 10),
		Name: EventScheduledTimer, Data: data, TS: tick,
	}
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, c.q.ClaimCronTick, fnID, tick)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil // another process fired this tick
		}
		runID, err := c.router.StartRun(ctx, tx, fnID, j.fn.config(), ev)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, c.q.SetCronTickRun, fnID, tick, runID)
		return err
	})
}
