package durable

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/pgdurable/durable/internal/maintenance"
	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/internal/store"
)

// QueryForTest returns the query name of internal/store rendered for
// schema.
func QueryForTest(schema, name string) (string, error) {
	s, err := pgident.Schema(schema)
	if err != nil {
		return "", err
	}
	q, err := store.Load(s)
	if err != nil {
		return "", err
	}
	v := reflect.ValueOf(q).Elem().FieldByName(name)
	if !v.IsValid() {
		return "", fmt.Errorf("no query %s", name)
	}
	return v.String(), nil
}

// SetCancelBatchForTest sets how many candidate runs CancelMany reads per
// query, and returns a function that restores the previous size.
func SetCancelBatchForTest(n int) (restore func()) {
	old := cancelBatch.Swap(int64(n))
	return func() { cancelBatch.Store(old) }
}

// SetTestHookCancelBatch installs a function called with the number of
// candidate runs of each batch CancelMany reads (nil removes it).
func SetTestHookCancelBatch(h func(n int)) {
	testHookCancelBatch.Store(&h)
}

// ExpireRunsForTest runs one sweep of the timeouts loop.
func ExpireRunsForTest(ctx context.Context, c *Client) error {
	return c.maint.ExpireRuns(ctx)
}

// CronBackoffForTest is the delay before retrying a cron tick that failed
// fails times in a row.
func CronBackoffForTest(fails int) time.Duration {
	return maintenance.CronBackoff(fails)
}
