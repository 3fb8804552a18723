package riverbridge_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable/internal/riverbridge"
	"github.com/pgdurable/durable/internal/testdb"
)

const (
	testKind  = "riverbridge_test"
	testQueue = "riverbridge_q"
	// wait bounds every wait on River; generous, since the machine may be
	// loaded and the tests run with -race.
	wait = 15 * time.Second
	tick = 10 * time.Millisecond
)

// testArgs is shaped like the library's run job: {"run_id": ...}.
type testArgs struct {
	RunID string `json:"run_id"`
}

func (testArgs) Kind() string { return testKind }

// env is one test's pool and fresh schema.
type env struct {
	t      *testing.T
	ctx    context.Context
	url    string
	pool   *pgxpool.Pool
	schema string
	logs   *logRecorder
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// newEnv returns an env whose schema holds River's tables, migrated by
// River's own migrator.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := newBareEnv(t, "rb_"+randHex(12))
	e.migrate(0)
	return e
}

// newBareEnv returns an env whose schema exists and is empty; it is dropped
// when the test ends.
func newBareEnv(t *testing.T, schema string) *env {
	t.Helper()
	// Every wait on the database ends: a test that fails while holding a
	// connection must not hang the others.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	url, err := testdb.URL(ctx)
	require.NoError(t, err)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		defer cancel()
		dropCtx, dropCancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer dropCancel()
		_, _ = pool.Exec(dropCtx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		pool.Close()
	})
	return &env{t: t, ctx: ctx, url: url, pool: pool, schema: schema, logs: &logRecorder{}}
}

func (e *env) migrator() *rivermigrate.Migrator[pgx.Tx] {
	e.t.Helper()
	m, err := rivermigrate.New(riverpgxv5.New(e.pool), &rivermigrate.Config{
		Schema: e.schema,
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(e.t, err)
	return m
}

// migrate runs River's migrations up to target (0: all).
func (e *env) migrate(target int) {
	e.t.Helper()
	_, err := e.migrator().Migrate(e.ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{TargetVersion: target})
	require.NoError(e.t, err)
}

// newClient builds a River client on the env's schema with the library's
// fetch settings unless cfg says otherwise. It is not started.
func (e *env) newClient(cfg *river.Config) *river.Client[pgx.Tx] {
	e.t.Helper()
	cfg.Schema = e.schema
	if cfg.Logger == nil {
		cfg.Logger = slog.New(e.logs)
	}
	if cfg.FetchCooldown == 0 {
		cfg.FetchCooldown = 2 * time.Millisecond
	}
	if cfg.FetchPollInterval == 0 {
		cfg.FetchPollInterval = time.Second
	}
	c, err := river.NewClient(riverpgxv5.New(e.pool), cfg)
	require.NoError(e.t, err)
	return c
}

// start starts c and stops it when the test ends.
func (e *env) start(c *river.Client[pgx.Tx]) {
	e.t.Helper()
	require.NoError(e.t, c.Start(e.ctx))
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = c.StopAndCancel(ctx)
	})
}

func (e *env) table(name string) string {
	return pgx.Identifier{e.schema, name}.Sanitize()
}

func (e *env) jobState(id int64) (string, error) {
	var s string
	err := e.pool.QueryRow(e.ctx, "SELECT state::text FROM "+e.table("river_job")+" WHERE id = $1", id).Scan(&s)
	return s, err
}

// waitJobState waits until the job is in state.
func (e *env) waitJobState(id int64, state, msg string) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		s, err := e.jobState(id)
		return err == nil && s == state
	}, wait, tick, msg)
}

func workers(f func(ctx context.Context, job *river.Job[testArgs]) error) *river.Workers {
	ws := river.NewWorkers()
	river.AddWorker(ws, river.WorkFunc(f))
	return ws
}

func queues() map[string]river.QueueConfig {
	return map[string]river.QueueConfig{testQueue: {MaxWorkers: 4}}
}

// receive waits for a value on ch, failing with msg after d.
func receive[T any](t *testing.T, ch <-chan T, d time.Duration, msg string) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		require.FailNow(t, msg)
		panic("unreachable")
	}
}

// jobEvent waits for the first event of job id.
func jobEvent(t *testing.T, events <-chan *river.Event, id int64, msg string) *river.Event {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case ev := <-events:
			if ev != nil && ev.Job != nil && ev.Job.ID == id {
				return ev
			}
		case <-timer.C:
			require.FailNow(t, msg)
		}
	}
}

// logRecorder keeps what River logs at warning level and above.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", rec.Level, rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, b.String())
	r.mu.Unlock()
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// 1. Insert notification: channel and payload.

func TestInsertNotification(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := riverbridge.InsertTopic(e.schema)
	queue := "rb_q_" + randHex(8) // this test's own, so no other test's notification can pass for River's

	conn, err := pgx.Connect(e.ctx, e.url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(e.ctx, "LISTEN "+pgx.Identifier{topic}.Sanitize())
	require.NoError(t, err)

	c := e.newClient(&river.Config{}) // insert only
	_, err = c.Insert(e.ctx, testArgs{RunID: "r1"}, &river.InsertOpts{Queue: queue})
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(e.ctx, wait)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	require.NoError(t, err, "River changed its insert notification: Client.Insert sent nothing on %q "+
		"(InsertTopic); the library NOTIFYs that channel to wake River's producers", topic)
	require.Equal(t, topic, n.Channel, "River changed its insert notification channel (InsertTopic)")

	var theirs, ours map[string]any
	require.NoError(t, json.Unmarshal([]byte(n.Payload), &theirs),
		"River's insert notification payload is no longer a JSON object: %s", n.Payload)
	require.NoError(t, json.Unmarshal([]byte(riverbridge.InsertPayload(queue)), &ours))
	require.ElementsMatch(t, slices.Collect(maps.Keys(theirs)), slices.Collect(maps.Keys(ours)),
		"River changed its insert notification payload: River sends %s, InsertPayload sends %s",
		n.Payload, riverbridge.InsertPayload(queue))
	require.Equal(t, queue, theirs["queue"],
		"River changed its insert notification payload: the queue is no longer its \"queue\" (River sent %s)", n.Payload)
	require.Equal(t, ours, theirs, "River changed its insert notification payload (InsertPayload)")
}

// River refuses a schema longer than MaxSchemaLen; one that long still
// makes an insert channel Postgres accepts.
func TestMaxSchemaLen(t *testing.T) {
	t.Parallel()
	e := newBareEnv(t, "rb_"+randHex(riverbridge.MaxSchemaLen-len("rb_")))
	require.Len(t, e.schema, riverbridge.MaxSchemaLen)

	_, err := e.pool.Exec(e.ctx, "SELECT pg_notify($1, $2)",
		riverbridge.InsertTopic(e.schema), riverbridge.InsertPayload(testQueue))
	require.NoError(t, err, "Postgres refuses the insert channel of a schema of MaxSchemaLen bytes")

	_, err = river.NewClient(riverpgxv5.New(e.pool), &river.Config{Schema: e.schema})
	require.NoError(t, err, "River's Config refuses a schema of MaxSchemaLen bytes")
	_, err = river.NewClient(riverpgxv5.New(e.pool), &river.Config{Schema: e.schema + "x"})
	require.Error(t, err, "River's Config accepts a schema longer than MaxSchemaLen: River changed its limit")
}

// 2. Raw job insert.

func TestRawJobInsert(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	var rawID int64
	require.NoError(t, e.pool.QueryRow(e.ctx, riverbridge.InsertJobSQL(e.schema),
		`{"run_id": "raw"}`, testKind, 1000, testQueue).Scan(&rawID))

	worked := make(chan string, 4)
	c := e.newClient(&river.Config{
		Queues: queues(),
		Workers: workers(func(_ context.Context, job *river.Job[testArgs]) error {
			worked <- job.Args.RunID
			return nil
		}),
	})
	res, err := c.Insert(e.ctx, testArgs{RunID: "river"}, &river.InsertOpts{Queue: testQueue, MaxAttempts: 1000})
	require.NoError(t, err)

	// Every column the raw insert leaves to its default holds what River's
	// own insert writes there, including any column a River upgrade adds.
	row := func(id int64) map[string]any {
		var m map[string]any
		require.NoError(t, e.pool.QueryRow(e.ctx,
			"SELECT to_jsonb(j) - 'id' - 'args' - 'created_at' - 'scheduled_at' FROM "+e.table("river_job")+" j WHERE id = $1",
			id).Scan(&m))
		return m
	}
	raw, own := row(rawID), row(res.Job.ID)
	for col, v := range own {
		assert.Equal(t, v, raw[col],
			"River's own insert sets river_job.%s to %v, the column default the raw insert (InsertJobSQL) relies on gives %v",
			col, v, raw[col])
	}
	assert.Len(t, raw, len(own))

	e.start(c)
	seen := map[string]bool{}
	for len(seen) < 2 {
		seen[receive(t, worked, wait, "River did not work a job inserted with the library's raw SQL (InsertJobSQL); worked: "+fmt.Sprint(seen))] = true
	}
	require.True(t, seen["raw"], "River's worker did not see the raw job's args")
	e.waitJobState(rawID, "completed", "River did not complete a job inserted with the library's raw SQL (InsertJobSQL)")
}

// 3. Whose attempt.

func TestLastAttempter(t *testing.T) {
	t.Parallel()
	id, ok := riverbridge.LastAttempter(nil)
	assert.False(t, ok)
	assert.Empty(t, id)
	id, ok = riverbridge.LastAttempter([]string{"a", "b"})
	assert.True(t, ok)
	assert.Equal(t, "b", id)
}

func TestAttemptedBy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	idA, idB := "rb-a-"+randHex(8), "rb-b-"+randHex(8)

	type seen struct {
		attemptedBy []string
		sqlLast     string
		attemptedAt time.Time
		now         time.Time
		err         error
	}
	observe := func(ctx context.Context, job *river.Job[testArgs]) seen {
		s := seen{attemptedBy: slices.Clone(job.AttemptedBy)}
		s.err = e.pool.QueryRow(ctx, "SELECT "+riverbridge.LastAttempterSQL+", attempted_at, now() FROM "+
			e.table("river_job")+" WHERE id = $1", job.ID).Scan(&s.sqlLast, &s.attemptedAt, &s.now)
		return s
	}

	seenA := make(chan seen, 1)
	a := e.newClient(&river.Config{
		ID:     idA,
		Queues: queues(),
		Workers: workers(func(ctx context.Context, job *river.Job[testArgs]) error {
			seenA <- observe(ctx, job)
			return river.JobSnooze(time.Hour)
		}),
	})
	res, err := a.Insert(e.ctx, testArgs{RunID: "r1"}, &river.InsertOpts{Queue: testQueue})
	require.NoError(t, err)
	e.start(a)
	sa := receive(t, seenA, wait, "client A did not work the job")
	e.waitJobState(res.Job.ID, "scheduled", "River did not make a job snoozed for an hour scheduled")
	stopCtx, cancel := context.WithTimeout(e.ctx, wait)
	defer cancel()
	require.NoError(t, a.Stop(stopCtx))

	// The library's wake-up (durable_deliver, Rescue) without NOTIFY: B's
	// first fetch finds the job.
	_, err = e.pool.Exec(e.ctx, riverbridge.WakeJobSQL(e.schema), res.Job.ID)
	require.NoError(t, err)
	seenB := make(chan seen, 1)
	b := e.newClient(&river.Config{
		ID:     idB,
		Queues: queues(),
		Workers: workers(func(ctx context.Context, job *river.Job[testArgs]) error {
			seenB <- observe(ctx, job)
			return nil
		}),
	})
	e.start(b)
	sb := receive(t, seenB, wait, "client B did not work the woken job")

	for name, s := range map[string]seen{"A": sa, "B": sb} {
		require.NoError(t, s.err, "client %s: reading the job's attempted_by in SQL (LastAttempterSQL)", name)
		assert.WithinDuration(t, s.now, s.attemptedAt, 5*time.Second,
			"River no longer sets attempted_at when it fetches a job (the library's Rescue reads it)")
	}
	assert.Equal(t, []string{idA}, sa.attemptedBy, "River changed Job.AttemptedBy: it no longer lists the client IDs that worked the job")
	assert.Equal(t, []string{idA, idB}, sb.attemptedBy,
		"River changed Job.AttemptedBy: it no longer appends the working client's Config.ID")
	last, ok := riverbridge.LastAttempter(sb.attemptedBy)
	assert.True(t, ok)
	assert.Equal(t, idB, last, "River changed Job.AttemptedBy: its last element is not the working client's Config.ID (LastAttempter)")
	assert.Equal(t, idB, sb.sqlLast,
		"River changed river_job.attempted_by: its last element is not the working client's Config.ID (LastAttempterSQL)")
	assert.Equal(t, idA, sa.sqlLast,
		"River changed river_job.attempted_by: its last element is not the working client's Config.ID (LastAttempterSQL)")
}

// 4. Snooze and error semantics.

type attempt struct {
	start   time.Time
	attempt int
}

func TestSnooze(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		d     time.Duration
		state rivertype.JobState // right after the snooze
	}{
		{"zero", 0, rivertype.JobStateAvailable},
		// Either side of SchedulerInterval, to pin it.
		{"within scheduler interval", riverbridge.SchedulerInterval - 500*time.Millisecond, rivertype.JobStateAvailable},
		{"beyond scheduler interval", riverbridge.SchedulerInterval + 500*time.Millisecond, rivertype.JobStateScheduled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			attempts := make(chan attempt, 4)
			var calls atomic.Int32
			c := e.newClient(&river.Config{
				Queues: queues(),
				Workers: workers(func(_ context.Context, job *river.Job[testArgs]) error {
					attempts <- attempt{start: time.Now(), attempt: job.Attempt}
					if calls.Add(1) == 1 {
						return river.JobSnooze(tc.d)
					}
					return nil
				}),
			})
			events, cancel := c.Subscribe(river.EventKindJobSnoozed)
			defer cancel()
			res, err := c.Insert(e.ctx, testArgs{RunID: "r1"}, &river.InsertOpts{Queue: testQueue})
			require.NoError(t, err)
			e.start(c)

			first := receive(t, attempts, wait, "River did not work the job")
			require.Equal(t, 1, first.attempt)
			ev := jobEvent(t, events, res.Job.ID, "River sent no snooze event for a job whose worker returned JobSnooze")
			snoozed := ev.Job
			require.Equal(t, 0, snoozed.Attempt, "River's JobSnooze now uses up an attempt")
			require.Equal(t, tc.state, snoozed.State,
				"River changed what JobSnooze(%s) leaves the job in (SchedulerInterval %s)", tc.d, riverbridge.SchedulerInterval)
			require.WithinRange(t, snoozed.ScheduledAt, first.start.Add(tc.d-time.Millisecond), first.start.Add(tc.d+3*time.Second),
				"River no longer schedules a job snoozed for %s at the end of the snooze", tc.d)

			if tc.state == rivertype.JobStateScheduled {
				var state string
				var att int
				var at time.Time
				require.NoError(t, e.pool.QueryRow(e.ctx, "SELECT state::text, attempt, scheduled_at FROM "+e.table("river_job")+
					" WHERE id = $1", res.Job.ID).Scan(&state, &att, &at))
				assert.Equal(t, "scheduled", state)
				assert.Equal(t, 0, att)
				assert.True(t, at.Equal(snoozed.ScheduledAt))
				return
			}
			second := receive(t, attempts, tc.d+wait, "River did not work a snoozed job again")
			require.Equal(t, 1, second.attempt, "River's JobSnooze now uses up an attempt")
			require.False(t, second.start.Before(snoozed.ScheduledAt),
				"River worked an available job before its scheduled_at: the library's Wake query assumes a short snooze waits for it")
			t.Logf("worked again %s after the first attempt", second.start.Sub(first.start))
			if tc.d == 0 {
				require.Less(t, second.start.Sub(first.start), 3*time.Second,
					"River no longer makes a job snoozed with JobSnooze(0) available again at once")
			}
			e.waitJobState(res.Job.ID, "completed", "River did not complete a job after its snooze")
		})
	}
}

// retryPolicy records what River asks and answers a fixed delay.
type retryPolicy struct {
	d        time.Duration
	mu       sync.Mutex
	calls    int
	attempt  int
	nErrors  int
	returned time.Time
}

func (p *retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.attempt, p.nErrors = job.Attempt, len(job.Errors)
	p.returned = time.Now().Add(p.d)
	return p.returned
}

func TestErrorRetry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		d     time.Duration
		state rivertype.JobState // right after the error
	}{
		// Either side of SchedulerInterval, to pin it. The library's own
		// retry policy backs off from one second: the first case is the
		// one it meets.
		{"within scheduler interval", riverbridge.SchedulerInterval - 500*time.Millisecond, rivertype.JobStateAvailable},
		{"beyond scheduler interval", riverbridge.SchedulerInterval + 500*time.Millisecond, rivertype.JobStateRetryable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			policy := &retryPolicy{d: tc.d}
			attempts := make(chan attempt, 4)
			var calls atomic.Int32
			c := e.newClient(&river.Config{
				Queues:      queues(),
				RetryPolicy: policy,
				Workers: workers(func(_ context.Context, job *river.Job[testArgs]) error {
					attempts <- attempt{start: time.Now(), attempt: job.Attempt}
					if calls.Add(1) == 1 {
						return errors.New("riverbridge: boom")
					}
					return nil
				}),
			})
			events, cancel := c.Subscribe(river.EventKindJobFailed)
			defer cancel()
			res, err := c.Insert(e.ctx, testArgs{RunID: "r1"}, &river.InsertOpts{Queue: testQueue, MaxAttempts: 1000})
			require.NoError(t, err)
			e.start(c)

			first := receive(t, attempts, wait, "River did not work the job")
			require.Equal(t, 1, first.attempt)
			failed := jobEvent(t, events, res.Job.ID, "River sent no failure event for a job whose worker returned an error").Job

			policy.mu.Lock()
			pCalls, pAttempt, pErrors, pAt := policy.calls, policy.attempt, policy.nErrors, policy.returned
			policy.mu.Unlock()
			require.Equal(t, 1, pCalls, "River no longer asks the client's RetryPolicy when a worker fails")
			assert.Equal(t, 1, pAttempt, "River changed the job its RetryPolicy sees: Attempt")
			assert.Equal(t, 0, pErrors,
				"River changed the job its RetryPolicy sees: Errors now includes the failure being retried (the library's retryPolicy counts them)")

			require.Equal(t, tc.state, failed.State,
				"River changed what a worker's error leaves the job in, for a retry in %s (SchedulerInterval %s)", tc.d, riverbridge.SchedulerInterval)
			require.Equal(t, 1, failed.Attempt, "River no longer uses up an attempt on a worker's error")
			require.Len(t, failed.Errors, 1, "River no longer records a worker's error in errors")
			assert.Equal(t, 1, failed.Errors[0].Attempt)
			assert.Equal(t, "riverbridge: boom", failed.Errors[0].Error)
			require.WithinDuration(t, pAt, failed.ScheduledAt, time.Millisecond,
				"River no longer schedules the retry when the client's RetryPolicy says")

			var state string
			var nErrors int
			require.NoError(t, e.pool.QueryRow(e.ctx, "SELECT state::text, coalesce(array_length(errors, 1), 0) FROM "+
				e.table("river_job")+" WHERE id = $1", res.Job.ID).Scan(&state, &nErrors))
			if tc.state == rivertype.JobStateRetryable {
				assert.Equal(t, "retryable", state)
				assert.Equal(t, 1, nErrors)
				return
			}
			second := receive(t, attempts, tc.d+wait, "River did not retry the job")
			require.Equal(t, 2, second.attempt)
			require.False(t, second.start.Before(failed.ScheduledAt), "River retried an available job before its scheduled_at")
			e.waitJobState(res.Job.ID, "completed", "River did not complete the retried job")
		})
	}
}

// 5. Completer assumptions.

func TestCompletedByLibrary(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	started := make(chan int64, 1)
	release := make(chan struct{})
	c := e.newClient(&river.Config{
		Queues: queues(),
		Workers: workers(func(ctx context.Context, job *river.Job[testArgs]) error {
			started <- job.ID
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}),
	})
	events, cancel := c.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobSnoozed,
		river.EventKindJobCancelled, river.EventKindJobInterrupted)
	defer cancel()
	res, err := c.Insert(e.ctx, testArgs{RunID: "r1"}, &river.InsertOpts{Queue: testQueue})
	require.NoError(t, err)
	e.start(c)
	id := receive(t, started, wait, "River did not work the job")

	// The library completes the job in its own transaction while the
	// worker still runs, then the worker returns nil.
	tx, err := e.pool.Begin(e.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	tag, err := tx.Exec(e.ctx, riverbridge.CompleteJobSQL(e.schema), id)
	require.NoError(t, err, "River's river_job refuses the library's completion (CompleteJobSQL)")
	require.EqualValues(t, 1, tag.RowsAffected())
	var finalizedAt time.Time
	require.NoError(t, tx.QueryRow(e.ctx, "SELECT finalized_at FROM "+e.table("river_job")+" WHERE id = $1", id).Scan(&finalizedAt))
	require.NoError(t, tx.Commit(e.ctx))
	close(release)

	ev := jobEvent(t, events, res.Job.ID, "River did not finish handling a job the library completed while its worker ran")
	require.Equal(t, river.EventKindJobCompleted, ev.Kind,
		"River turned a job the library completed while its worker ran into %s", ev.Job.State)
	require.Equal(t, rivertype.JobStateCompleted, ev.Job.State)

	var state string
	var att, nErrors int
	var fin time.Time
	require.NoError(t, e.pool.QueryRow(e.ctx, "SELECT state::text, attempt, finalized_at, coalesce(array_length(errors, 1), 0) FROM "+
		e.table("river_job")+" WHERE id = $1", id).Scan(&state, &att, &fin, &nErrors))
	assert.Equal(t, "completed", state, "River changed a job the library completed while its worker ran")
	assert.True(t, fin.Equal(finalizedAt), "River rewrote finalized_at of a job the library completed")
	assert.Equal(t, 1, att)
	assert.Zero(t, nErrors, "River recorded an error on a job the library completed")
	assert.Empty(t, e.logs.all(), "River logged warnings or errors about a job the library completed while its worker ran")
}

func TestWakeByNotify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		notify string // $1 the channel, $2 arg
		arg    string
	}{
		// The payload as the Go side sends it (Client.notifyPayload).
		{"InsertPayload", "SELECT pg_notify($1, $2)", riverbridge.InsertPayload(testQueue)},
		// The payload as the SQL side sends it (durable_deliver, Rescue).
		{"json_build_object", "SELECT pg_notify($1, json_build_object('queue', $2::text)::text)", testQueue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			started := make(chan time.Time, 1)
			probed := make(chan struct{}, 1)
			c := e.newClient(&river.Config{
				// The library polls every second; a poll this long means
				// only the notification can explain a prompt fetch.
				FetchPollInterval: 10 * time.Second,
				FetchCooldown:     2 * time.Millisecond,
				Queues:            queues(),
				Workers: workers(func(_ context.Context, job *river.Job[testArgs]) error {
					if job.Args.RunID == "probe" {
						probed <- struct{}{}
					} else {
						started <- time.Now()
					}
					return nil
				}),
			})
			res, err := c.Insert(e.ctx, testArgs{RunID: "r1"},
				&river.InsertOpts{Queue: testQueue, ScheduledAt: time.Now().Add(time.Hour)})
			require.NoError(t, err)
			require.Equal(t, rivertype.JobStateScheduled, res.Job.State)
			// The producer's first fetch (at Start, not waited for) must be
			// over before the wake-up, or it could find the woken job
			// itself: it finds this probe.
			_, err = c.Insert(e.ctx, testArgs{RunID: "probe"}, &river.InsertOpts{Queue: testQueue})
			require.NoError(t, err)
			e.start(c)
			receive(t, probed, wait, "River did not work the probe job")

			tx, err := e.pool.Begin(e.ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(context.Background()) }()
			tag, err := tx.Exec(e.ctx, riverbridge.WakeJobSQL(e.schema), res.Job.ID)
			require.NoError(t, err)
			require.EqualValues(t, 1, tag.RowsAffected())
			_, err = tx.Exec(e.ctx, tc.notify, riverbridge.InsertTopic(e.schema), tc.arg)
			require.NoError(t, err)
			require.NoError(t, tx.Commit(e.ctx))
			woke := time.Now()

			at := receive(t, started, 5*time.Second,
				"River's producer ignored the library's insert notification (InsertTopic, InsertPayload): "+
					"the woken job was not worked before the next poll")
			t.Logf("worked %s after the notification", at.Sub(woke))
			require.Less(t, at.Sub(woke), 500*time.Millisecond,
				"River's producer reacted slowly to the library's insert notification (InsertTopic, InsertPayload)")
			e.waitJobState(res.Job.ID, "completed", "River did not complete the woken job")
		})
	}
}

// 6. Migration bookkeeping.

func migrationColumns(t *testing.T, e *env) []string {
	t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT column_name::text FROM information_schema.columns
		WHERE table_schema = $1 AND table_name = 'river_migration' ORDER BY column_name`, e.schema)
	require.NoError(t, err)
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return cols
}

func TestMigrationBookkeeping(t *testing.T) {
	t.Parallel()
	e := newBareEnv(t, "rb_"+randHex(12))
	var want []int
	for _, m := range e.migrator().AllVersions() {
		want = append(want, m.Version)
	}
	require.Contains(t, want, riverbridge.MigrationLineVersion)

	e.migrate(riverbridge.MigrationLineVersion - 1)
	cols := migrationColumns(t, e)
	require.Contains(t, cols, "version")
	require.NotContains(t, cols, "line",
		"River's river_migration has a line column before version %d (MigrationLineVersion)", riverbridge.MigrationLineVersion)
	rows, err := e.pool.Query(e.ctx, "SELECT version::int FROM "+e.table("river_migration")+" ORDER BY version")
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.Equal(t, want[:riverbridge.MigrationLineVersion-1], got,
		"River no longer records its versions before MigrationLineVersion by version alone")
	// The library's record of an old version (RecordMigrationSQL).
	_, err = e.pool.Exec(e.ctx, riverbridge.RecordMigrationSQL(e.schema, 1))
	require.NoError(t, err, "the library's record of a River version before MigrationLineVersion fails")

	e.migrate(riverbridge.MigrationLineVersion)
	require.Contains(t, migrationColumns(t, e), "line",
		"River's river_migration has no line column at version %d (MigrationLineVersion)", riverbridge.MigrationLineVersion)

	e.migrate(0)
	cols = migrationColumns(t, e)
	require.Subset(t, cols, []string{"line", "version"},
		"River's river_migration no longer has the columns (line, version) the library writes")
	type rec struct {
		Line    string
		Version int
	}
	rows, err = e.pool.Query(e.ctx, "SELECT line, version::int FROM "+e.table("river_migration")+" ORDER BY version")
	require.NoError(t, err)
	recs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rec])
	require.NoError(t, err)
	var wantRecs []rec
	for _, v := range want {
		wantRecs = append(wantRecs, rec{riverbridge.MigrationLine, v})
	}
	require.Equal(t, wantRecs, recs, "River no longer records its migrations as (line %q, version) (MigrationLine)", riverbridge.MigrationLine)

	// The library's record of a version River recorded already: a no-op.
	tag, err := e.pool.Exec(e.ctx, riverbridge.RecordMigrationSQL(e.schema, want[len(want)-1]))
	require.NoError(t, err, "the library's record of River's version conflicts with River's own (RecordMigrationSQL)")
	require.Zero(t, tag.RowsAffected(), "the library's record of River's version duplicates River's own (RecordMigrationSQL)")
}

// describeSchema lists a schema's columns, indexes, constraints, enum
// labels and River migration records, with the schema's name replaced.
func describeSchema(t *testing.T, e *env) []string {
	t.Helper()
	rows, err := e.pool.Query(e.ctx, `
		SELECT 'column ' || table_name || '.' || column_name || ' ' || udt_name || ' ' || is_nullable || ' ' || coalesce(column_default, '')
		FROM information_schema.columns WHERE table_schema = $1
		UNION ALL
		SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = $1
		UNION ALL
		SELECT 'constraint ' || c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
		FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1
		UNION ALL
		SELECT 'enum ' || t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
		FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n ON n.oid = t.typnamespace
		WHERE n.nspname = $1 GROUP BY t.typname
		UNION ALL
		SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
		ORDER BY 1`, e.schema)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	rows, err = e.pool.Query(e.ctx, "SELECT 'migration ' || line || ' ' || version FROM "+e.table("river_migration")+" ORDER BY version")
	require.NoError(t, err)
	recs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	out := append(lines, recs...)
	for i := range out {
		out[i] = strings.ReplaceAll(out[i], e.schema, "SCHEMA")
	}
	return out
}

// River's migration SQL applied as the library's migrate.Migrations does
// (rendered with RenderMigration, recorded with RecordMigrationSQL) builds
// the schema River's migrator builds.
func TestMigrationRendering(t *testing.T) {
	t.Parallel()
	viaRiver := newEnv(t)
	own := newBareEnv(t, "rb_"+randHex(12))
	for _, m := range own.migrator().AllVersions() {
		for dir, sql := range map[string]string{"up": m.SQLUp, "down": m.SQLDown} {
			require.NotContains(t, riverbridge.RenderMigration(sql, own.schema), "TEMPLATE",
				"River's migration %d (%s) has a template marker other than SchemaTemplate", m.Version, dir)
		}
		err := pgx.BeginFunc(own.ctx, own.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(own.ctx, riverbridge.RenderMigration(m.SQLUp, own.schema)); err != nil {
				return fmt.Errorf("River's migration %d rendered with RenderMigration fails: %w", m.Version, err)
			}
			if _, err := tx.Exec(own.ctx, riverbridge.RecordMigrationSQL(own.schema, m.Version)); err != nil {
				return fmt.Errorf("recording River's migration %d with RecordMigrationSQL fails: %w", m.Version, err)
			}
			return nil
		})
		require.NoError(t, err)
	}
	require.Equal(t, describeSchema(t, viaRiver), describeSchema(t, own),
		"River's migrations rendered and recorded as the library does (RenderMigration, RecordMigrationSQL) "+
			"no longer build what River's migrator builds")
	// River's migrator finds the schema up to date.
	res, err := own.migrator().Migrate(own.ctx, rivermigrate.DirectionUp, nil)
	require.NoError(t, err)
	require.Empty(t, res.Versions, "River's migrator does not see the versions the library records (RecordMigrationSQL)")
}

// 7. river_job columns.

func TestJobColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	type col struct {
		udt        string
		nullable   bool
		hasDefault bool
	}
	rows, err := e.pool.Query(e.ctx, `SELECT column_name::text, udt_name::text, is_nullable = 'YES', column_default IS NOT NULL
		FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'river_job'`, e.schema)
	require.NoError(t, err)
	cols := map[string]col{}
	var name string
	var c col
	_, err = pgx.ForEachRow(rows, []any{&name, &c.udt, &c.nullable, &c.hasDefault}, func() error {
		cols[name] = c
		return nil
	})
	require.NoError(t, err)

	for name, typ := range riverbridge.JobColumns() {
		got, ok := cols[name]
		if assert.True(t, ok, "River dropped or renamed river_job.%s, which the library's SQL uses", name) {
			assert.Equal(t, typ, got.udt, "River changed the type of river_job.%s, which the library's SQL uses", name)
		}
	}
	// The raw insert sets these; every other column must have a default.
	rawCols := []string{"args", "kind", "max_attempts", "queue", "state", "scheduled_at"}
	for name, c := range cols {
		if !slices.Contains(rawCols, name) {
			assert.True(t, c.nullable || c.hasDefault,
				"River's river_job.%s is NOT NULL without a default: the library's raw insert (InsertJobSQL) must now set it", name)
		}
	}

	rows, err = e.pool.Query(e.ctx, `SELECT e.enumlabel::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
		JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 AND t.typname = 'river_job_state'`, e.schema)
	require.NoError(t, err)
	labels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	assert.Subset(t, labels, []string{"available", "scheduled", "running", "completed", "retryable"},
		"River changed the labels of river_job_state that the library's SQL names")

	// Priorities: MinPriority to MaxPriority, nothing else.
	insert := func(p int) error {
		_, err := e.pool.Exec(e.ctx, "INSERT INTO "+e.table("river_job")+
			" (args, kind, max_attempts, queue, priority) VALUES ('{}', $1, 1, $2, $3)", testKind, "rb_priority", p)
		return err
	}
	for p := riverbridge.MinPriority; p <= riverbridge.MaxPriority; p++ {
		assert.NoError(t, insert(p), "River's river_job refuses priority %d", p)
	}
	for _, p := range []int{riverbridge.MinPriority - 1, riverbridge.MaxPriority + 1} {
		var pg *pgconn.PgError
		if assert.ErrorAs(t, insert(p), &pg,
			"River's river_job accepts priority %d: the library's Wake query reads priorities %d to %d only",
			p, riverbridge.MinPriority, riverbridge.MaxPriority) {
			assert.Equal(t, "23514", pg.Code) // check_violation
		}
	}

	// The Wake query reads River's fetching index one range per priority.
	rows, err = e.pool.Query(e.ctx, "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'river_job'", e.schema)
	require.NoError(t, err)
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	assert.True(t, slices.ContainsFunc(defs, func(d string) bool {
		return strings.Contains(d, "(state, queue, priority, scheduled_at")
	}), "River dropped its fetching index on river_job (state, queue, priority, scheduled_at, ...), which the library's Wake query reads: %v", defs)
}
