// Package maintenance runs the loops every executing process keeps up
// beside River: heartbeats, recovery of runs left by dead processes,
// Timeouts expiry, punctual wake-ups of suspended runs, routing of the
// system events runs emit, cron triggers, and retention (retention.go:
// pruning what Config.Retention no longer keeps). Services starts them all
// and Stop stops every goroutine (and timer) it started.
package maintenance

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/robfig/cron/v3"

	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/internal/telemetry"
	"github.com/pgdurable/durable/riverjobs"
)

// Cron is a cron trigger of a function of this process.
type Cron struct {
	FunctionID string
	Spec       string
	Config     store.FunctionConfig
}

// Config is what the services need.
type Config struct {
	Pool         *pgxpool.Pool
	Queries      *store.Queries
	Router       *router.Router
	Logger       *slog.Logger
	WorkerID     string // this process's River client ID
	Queue        string
	RecoverAfter time.Duration
	Crons        []Cron
	// Retention is what the retention loop keeps (see retention.go); its
	// zero value never sweeps.
	Retention Retention
	// Telemetry, when it meters, gets the backlog gauges' values from a
	// loop that reads them every BacklogEvery (default 15 s); nil for none.
	Telemetry    *telemetry.Telemetry
	BacklogEvery time.Duration
}

// Services are the maintenance loops of one client.
type Services struct {
	cfg    Config
	pool   *pgxpool.Pool
	q      *store.Queries
	router *router.Router
	logger *slog.Logger

	wakeCh  chan time.Time
	routeCh chan struct{}
	pruner  *Pruner // nil when this process never sweeps

	attMu     sync.Mutex
	attempers map[string]bool // River client IDs whose heartbeat this process keeps (under attMu)

	mu       sync.Mutex
	bgCancel context.CancelFunc
	bgDone   sync.WaitGroup
}

// New builds the services; Start starts them.
func New(cfg Config) *Services {
	s := &Services{cfg: cfg, pool: cfg.Pool, q: cfg.Queries, router: cfg.Router, logger: cfg.Logger,
		wakeCh: make(chan time.Time, 1), routeCh: make(chan struct{}, 1),
		attempers: map[string]bool{cfg.WorkerID: true}}
	if cfg.Retention.enabled() {
		s.pruner = NewPruner(cfg.Pool, cfg.Queries, cfg.Logger, cfg.Retention)
	}
	return s
}

// Pruner returns the retention loop's pruner (nil when this process never
// sweeps).
func (s *Services) Pruner() *Pruner { return s.pruner }

// Start registers this process's heartbeat and starts the loops, which run
// until Stop (ctx's values are kept, its cancellation is not).
func (s *Services) Start(ctx context.Context) error {
	if err := s.Heartbeat(ctx); err != nil {
		return err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.bgCancel = cancel
	s.mu.Unlock()
	s.start(bg)
	return nil
}

// Stop stops every loop and waits for them, then removes this process's
// heartbeats so that anything it left running is recovered at once rather
// than after RecoverAfter.
func (s *Services) Stop(ctx context.Context) error {
	s.mu.Lock()
	cancel := s.bgCancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.bgDone.Wait()
	if _, err := s.pool.Exec(ctx, s.q.DeleteWorker, s.heartbeatIDs()); err != nil {
		return fmt.Errorf("durable: removing worker heartbeat: %w", err)
	}
	return nil
}

// CronBackoff is the delay before retrying a cron tick that failed fails
// times in a row.
func CronBackoff(fails int) time.Duration { return cronBackoff(fails) }

// startUpkeep starts the loops every executing process runs: heartbeats,
// recovery of runs left by dead processes, and punctual wake-ups.
func (s *Services) start(ctx context.Context) {
	every := s.cfg.RecoverAfter / 5
	s.loop(ctx, every, "heartbeat", s.Heartbeat)
	s.loop(ctx, every, "recovery", s.rescue)
	s.loop(ctx, time.Second, "timeouts", s.ExpireRuns)
	s.loop(ctx, time.Second, "flow control", s.reapSlots)
	if s.pruner != nil {
		s.loop(ctx, s.cfg.Retention.Interval, "retention", func(ctx context.Context) error {
			_, _, err := s.pruner.Sweep(ctx)
			return err
		})
	}
	if jobs := s.cronJobs(); len(jobs) > 0 {
		s.bgDone.Add(1)
		go func() {
			defer s.bgDone.Done()
			s.cronLoop(ctx, jobs)
		}()
	}
	s.bgDone.Add(2)
	go func() {
		defer s.bgDone.Done()
		s.waker(ctx)
	}()
	go func() {
		defer s.bgDone.Done()
		s.routeLoop(ctx)
	}()
	if s.cfg.Telemetry.Metering() {
		s.bgDone.Add(1)
		go func() {
			defer s.bgDone.Done()
			s.backlogLoop(ctx)
		}()
	}
}

// kickRouter asks the router to look for events to route now.
// KickRouter asks the routing loop to route stored system events now.
func (s *Services) KickRouter() {
	select {
	case s.routeCh <- struct{}{}:
	default:
	}
}

// routeLoop routes the events the library emits itself (system events) to
// the runs they trigger. They are stored in the transaction that ends a
// run; any live process routes them, exactly once, right after (this one
// at once when it emitted them, the others within a second).
func (s *Services) routeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.routeCh:
		case <-time.After(time.Second):
		}
		for {
			n, err := s.router.RouteOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.logger.WarnContext(ctx, "durable: routing system events failed", "error", err)
				}
				break
			}
			if n < 100 {
				break
			}
		}
	}
}

func (s *Services) loop(ctx context.Context, every time.Duration, name string, fn func(context.Context) error) {
	s.bgDone.Add(1)
	go func() {
		defer s.bgDone.Done()
		for {
			jitter := time.Duration(rand.Int64N(int64(every)/5 + 1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(every - every/10 + jitter):
			}
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				s.logger.WarnContext(ctx, "durable: "+name+" failed", "error", err)
			}
		}
	}()
}

// noteAttempter makes sure the River client executing a job has a
// heartbeat row before the job's first step, so that recovery never takes
// a live process's run (it matters when an app's own River client works
// durable's jobs).
func (s *Services) NoteAttempter(ctx context.Context, id string) error {
	s.attMu.Lock()
	known := s.attempers[id]
	if !known {
		s.attempers[id] = true
	}
	s.attMu.Unlock()
	if known {
		return nil
	}
	host, _ := os.Hostname()
	_, err := s.pool.Exec(ctx, s.q.Heartbeat, []string{id}, host, os.Getpid())
	return err
}

func (s *Services) heartbeatIDs() []string {
	s.attMu.Lock()
	defer s.attMu.Unlock()
	out := make([]string, 0, len(s.attempers))
	for id := range s.attempers {
		out = append(out, id)
	}
	return out
}

// Heartbeat records that this process (and the River clients it works
// for) is alive.
func (s *Services) Heartbeat(ctx context.Context) error {
	host, _ := os.Hostname()
	_, err := s.pool.Exec(ctx, s.q.Heartbeat, s.heartbeatIDs(), host, os.Getpid())
	return err
}

// rescue hands jobs held by dead processes to live ones.
func (s *Services) rescue(ctx context.Context) error {
	var n, notified int
	var runIDs []string
	err := s.pool.QueryRow(ctx, s.q.Rescue, s.cfg.RecoverAfter.Seconds(), riverjobs.Kind, s.router.Channel()).Scan(&n, &notified, &runIDs)
	if err != nil {
		return err
	}
	if n > 0 {
		// run_ids lists at most 20 of them.
		s.logger.InfoContext(ctx, "durable: recovered runs of dead workers", "count", n, "run_ids", runIDs)
		s.KickWaker(time.Now())
	}
	if rand.IntN(100) == 0 {
		if _, err = s.pool.Exec(ctx, s.q.PruneWorkers); err == nil {
			_, err = s.pool.Exec(ctx, s.q.PruneFunctionWorkers)
		}
	}
	return err
}

// reapSlots gives the concurrency slots of dead processes (and lapsed
// reservations) to the runs waiting at their gates, and makes a promotion
// that was missed (a run that joined a queue as its last slot freed).
func (s *Services) reapSlots(ctx context.Context) error {
	var promoted int
	if err := s.pool.QueryRow(ctx, s.q.ReapSlots, s.router.Channel()).Scan(&promoted); err != nil {
		return err
	}
	if promoted > 0 {
		s.logger.DebugContext(ctx, "durable: runs waiting at flow-control gates given free slots", "count", promoted)
	}
	return nil
}

// ExpireRuns cancels runs past their Timeouts.Start or Timeouts.Finish.
func (s *Services) ExpireRuns(ctx context.Context) error {
	// Batch after batch until a short one: a backlog (a burst of runs
	// nobody started in time) is cleared in this sweep, not a batch a
	// second, and no query reads more than a batch.
	const batch = expireBatch
	for {
		rows, err := s.pool.Query(ctx, s.q.ExpiredRuns, batch)
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
			err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) (err error) {
				ok, err = s.router.CancelRun(ctx, tx, r.id, reason)
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
func (s *Services) KickWaker(t time.Time) {
	for {
		select {
		case s.wakeCh <- t:
			return
		default:
		}
		// The channel holds an earlier or later kick: keep the earlier.
		select {
		case old := <-s.wakeCh:
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
func (s *Services) waker(ctx context.Context) {
	const poll = time.Second
	next, isDue := time.Now().Add(poll), false
	for {
		timer := time.NewTimer(max(time.Until(next), 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case t := <-s.wakeCh:
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
		err := s.pool.QueryRow(ctx, s.q.Wake, s.cfg.Queue, s.router.Channel(), s.router.Payload(), force, poll.Seconds()).Scan(&promoted, &notified, &due)
		next, isDue = time.Now().Add(poll), false
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.logger.WarnContext(ctx, "durable: wake-up check failed", "error", err)
			continue
		}
		if due != nil && due.Before(next) {
			next, isDue = *due, true
		}
	}
}

// CronSchedule is a parsed Trigger.Cron.
type CronSchedule struct {
	spec  string
	sched cron.Schedule
	every time.Duration // for "@every": ticks aligned to the Unix epoch
}

// ParseCron parses a 5-field spec with an optional TZ=/CRON_TZ= prefix, or
// a descriptor (@hourly, @daily, @every 30s, ...).
func ParseCron(spec string) (*CronSchedule, error) {
	s := strings.TrimSpace(spec)
	if rest, ok := strings.CutPrefix(s, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("cron %q: %w", spec, err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("cron %q: @every must be at least 1s", spec)
		}
		return &CronSchedule{spec: spec, every: d}, nil
	}
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w", spec, err)
	}
	return &CronSchedule{spec: spec, sched: sched}, nil
}

// next returns the first tick strictly after t. Every process computes the
// same ticks, so the tick's primary key decides which one starts the run.
func (s *CronSchedule) next(t time.Time) time.Time {
	if s.every > 0 {
		n := t.UnixNano() / int64(s.every)
		return time.Unix(0, (n+1)*int64(s.every)).UTC()
	}
	return s.sched.Next(t).UTC()
}

type cronJob struct {
	fn    Cron
	sched *CronSchedule
}

// cronLoop starts one run per tick of each cron trigger. Every process
// that has the function runs this loop; the durable_cron_tick primary key
// makes exactly one of them start each tick's run, so a restart or
// several processes never fire a tick twice. A tick missed by less than a
// minute (a restart across it) is still fired. A tick that fails (the
// database is down, say) is retried after a backoff, 1s doubling to a
// minute, per trigger.
func (s *Services) cronLoop(ctx context.Context, jobs []cronJob) {
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
		if err := s.fireTick(ctx, j, tick); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Try the same tick again, later: retrying at once would
			// hammer a failing database (and flood the log) from every
			// process.
			fails[soonest]++
			backoff := cronBackoff(fails[soonest])
			retryAt[soonest] = time.Now().Add(backoff)
			s.logger.WarnContext(ctx, "durable: cron tick failed", "function_id", j.fn.FunctionID, "tick", tick,
				"retry_in", backoff, "error", err)
			continue
		}
		fails[soonest], retryAt[soonest] = 0, time.Time{}
		next[soonest] = j.sched.next(tick)
	}
}

// fireTick starts the run of one tick unless another process did.
func (s *Services) fireTick(ctx context.Context, j cronJob, tick time.Time) error {
	fnID := j.fn.FunctionID
	data, err := json.Marshal(map[string]any{"cron": j.sched.spec, "tick": tick.Format(time.RFC3339Nano)})
	if err != nil {
		return err
	}
	ev := store.Event{
		ID:   "cron:" + fnID + ":" + strconv.FormatInt(tick.UnixMilli(), 10),
		Name: store.EventScheduledTimer, Data: data, TS: tick,
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, s.q.ClaimCronTick, fnID, tick)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil // another process fired this tick
		}
		runID, err := s.router.StartRun(ctx, tx, fnID, j.fn.Config, ev)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, s.q.SetCronTickRun, fnID, tick, runID)
		return err
	})
}

// expireBatch is how many expired runs the timeouts sweep reads per query.
const expireBatch = 100

// cronBackoff is the delay before retrying a cron tick that failed fails
// times in a row: 1s doubling to a minute, so that a database outage is
// not hammered by every process (nor the log flooded).
func cronBackoff(fails int) time.Duration {
	d := time.Second
	for i := 1; i < fails && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

// cronJobs parses the cron triggers (NewClient checked them).
func (s *Services) cronJobs() []cronJob {
	var out []cronJob
	for _, c := range s.cfg.Crons {
		if sched, err := ParseCron(c.Spec); err == nil {
			out = append(out, cronJob{fn: c, sched: sched})
		}
	}
	return out
}
