package durable_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

// bundle is what a test works with: a pool and a freshly migrated schema
// of its own.
type bundle struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	schema string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	url, err := testdb.URL(ctx)
	require.NoError(t, err)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	require.NoError(t, migrate.Up(ctx, pool, schema))
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		pool.Close()
	})
	return &bundle{t: t, ctx: ctx, pool: pool, schema: schema}
}

// fastBackoff keeps retry tests quick.
func fastBackoff(int) time.Duration { return 20 * time.Millisecond }

// client builds and starts a client on the bundle's schema, stopped when
// the test ends.
func (b *bundle) client(cfg durable.Config) *durable.Client {
	b.t.Helper()
	cfg.Schema = b.schema
	if cfg.RetryBackoff == nil {
		cfg.RetryBackoff = fastBackoff
	}
	if cfg.RecoverAfter == 0 {
		cfg.RecoverAfter = 2 * time.Second
	}
	c, err := durable.NewClient(b.pool, &cfg)
	require.NoError(b.t, err)
	require.NoError(b.t, c.Start(b.ctx))
	b.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.Stop(ctx)
	})
	return c
}

// waitRun waits for a run to end, failing the test after d.
func (b *bundle) waitRun(c *durable.Client, runID string, d time.Duration) *durable.Run {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	run, err := c.WaitRun(ctx, runID)
	require.NoError(b.t, err, "run %s did not end in %s (last: %+v)", runID, d, run)
	return run
}

// runsFor returns the runs an event started, waiting for at least n of
// them to be created.
func (b *bundle) runsFor(c *durable.Client, eventID string, n int) []*durable.Run {
	b.t.Helper()
	var runs []*durable.Run
	// The condition runs on another goroutine: it reports to ct (a database
	// error is then what the test fails with), never to b.t.
	require.EventuallyWithT(b.t, func(ct *assert.CollectT) {
		got, err := c.RunsForEvent(b.ctx, eventID)
		require.NoError(ct, err)
		require.GreaterOrEqual(ct, len(got), n, "runs of event %s", eventID)
		runs = got
	}, 10*time.Second, 10*time.Millisecond)
	return runs
}

// never checks cond every tick for d and fails the test if it ever holds
// (what says what must not happen). cond runs on another goroutine, so it
// returns its error instead of failing the test: an error counts as "not
// holding" for the check, and the first one fails the test once d is over.
func never(t *testing.T, d, tick time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	var mu sync.Mutex
	var firstErr error
	require.Never(t, func() bool {
		ok, err := cond()
		if err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
			return false
		}
		return ok
	}, d, tick, what)
	mu.Lock()
	defer mu.Unlock()
	require.NoError(t, firstErr, "checking for: %s", what)
}
