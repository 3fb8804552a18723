package durable

import (
	"sync/atomic"
)

// cancelBatch is how many candidate runs CancelMany reads per query
// (atomic: tests lower it).
var cancelBatch atomic.Int64

func init() { cancelBatch.Store(500) }

// testHookCancelBatch holds, for tests only, a function called with the
// size of each batch of candidates CancelMany reads.
var testHookCancelBatch atomic.Pointer[func(n int)]
