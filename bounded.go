package durable

import (
	"sync/atomic"
	"time"
)

// expireBatch is how many expired runs the timeouts sweep reads per query.
const expireBatch = 100

// cancelBatch is how many candidate runs CancelMany reads per query
// (atomic: tests lower it).
var cancelBatch atomic.Int64

func init() { cancelBatch.Store(500) }

// testHookCancelBatch holds, for tests only, a function called with the
// size of each batch of candidates CancelMany reads.
var testHookCancelBatch atomic.Pointer[func(n int)]

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
