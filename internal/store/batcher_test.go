package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable/internal/testdb"
)

// batcherTable makes a table of its own for a batcher test, with a check
// constraint that refuses negative values.
func batcherTable(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	url, err := testdb.URL(ctx)
	require.NoError(t, err)
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	table := fmt.Sprintf("batcher_%d", time.Now().UnixNano())
	_, err = pool.Exec(ctx, "CREATE TABLE "+table+" (v int PRIMARY KEY CHECK (v >= 0), txid bigint NOT NULL DEFAULT txid_current())")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE "+table) })
	return pool, table
}

// Statements queued while a batch is in flight share the next batch's
// transaction; each gets its own result, a missing row only its own.
func TestBatcherSharesOneTransactionAndKeepsResultsApart(t *testing.T) {
	pool, table := batcherTable(t)
	ctx := context.Background()
	b := NewBatcher(pool, 1, 64)
	const n = 40
	var wg sync.WaitGroup
	got := make([]int, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%10 == 9 {
				// No row: pgx.ErrNoRows for this caller only.
				errs[i] = b.QueryRow(ctx, "SELECT v FROM "+table+" WHERE v = -1").Scan(&got[i])
				return
			}
			errs[i] = b.QueryRow(ctx, "INSERT INTO "+table+" (v) VALUES ($1) RETURNING v * 2", i).Scan(&got[i])
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if i%10 == 9 {
			require.ErrorIs(t, errs[i], pgx.ErrNoRows, "statement %d", i)
			continue
		}
		require.NoError(t, errs[i], "statement %d", i)
		require.Equal(t, 2*i, got[i], "statement %d read another's row", i)
	}
	var rows, txns int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT txid) FROM "+table).Scan(&rows, &txns))
	require.Equal(t, n-n/10, rows)
	// One flusher: the first statement goes alone, the rest queue behind
	// it and share transactions.
	require.Less(t, txns, rows/2, "statements were not batched")
}

// A statement Postgres refuses rolls its batch back; the others are run
// again on their own and commit, and only the refused one sees the error.
func TestBatcherIsolatesARefusedStatement(t *testing.T) {
	pool, table := batcherTable(t)
	ctx := context.Background()
	b := NewBatcher(pool, 1, 64)
	// Hold the only flusher so that the next statements form one batch.
	hold := make(chan struct{})
	go func() {
		_ = b.QueryRow(ctx, "SELECT pg_sleep(0.3)::text").Scan(new(string))
		close(hold)
	}()
	require.Eventually(t, func() bool { b.group.mu.Lock(); defer b.group.mu.Unlock(); return b.group.running == 1 }, 5*time.Second, time.Millisecond)
	vals := []int{1, 2, -3, 4}
	errs := make([]error, len(vals))
	var wg sync.WaitGroup
	for i, v := range vals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out int
			errs[i] = b.QueryRow(ctx, "INSERT INTO "+table+" (v) VALUES ($1) RETURNING v", v).Scan(&out)
		}()
	}
	require.Eventually(t, func() bool { b.group.mu.Lock(); defer b.group.mu.Unlock(); return len(b.group.queue) == len(vals) }, 5*time.Second, time.Millisecond)
	<-hold
	wg.Wait()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, errs[2], &pgErr)
	require.Equal(t, "23514", pgErr.Code, "the check constraint's refusal")
	for _, i := range []int{0, 1, 3} {
		require.NoError(t, errs[i], "statement %d", i)
	}
	var got []int
	rows, err := pool.Query(ctx, "SELECT v FROM "+table+" ORDER BY v")
	require.NoError(t, err)
	got, err = pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 4}, got)
}

// A cancelled context is refused before the statement is queued.
func TestBatcherRefusesACancelledContext(t *testing.T) {
	pool, table := batcherTable(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := NewBatcher(pool, 1, 64).QueryRow(ctx, "INSERT INTO "+table+" (v) VALUES (1) RETURNING v").Scan(new(int))
	require.ErrorIs(t, err, context.Canceled)
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n))
	require.Zero(t, n)
}
