package durable

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/store"
)

// The public constants are spelled out (so that go doc shows them) and must
// equal the engine's.
func TestPublicConstantsMatchTheEngine(t *testing.T) {
	require.Equal(t, store.EventFunctionFinished, EventFunctionFinished)
	require.Equal(t, store.EventFunctionFailed, EventFunctionFailed)
	require.Equal(t, store.EventFunctionCancelled, EventFunctionCancelled)
	require.Equal(t, store.EventFunctionInvoked, EventFunctionInvoked)
	require.Equal(t, store.EventScheduledTimer, EventScheduledTimer)
	require.Equal(t, failure.ReservedPrefix, ReservedPrefix)
	require.Equal(t, store.RunQueued, string(RunQueued))
	require.Equal(t, store.RunRunning, string(RunRunning))
	require.Equal(t, store.RunCompleted, string(RunCompleted))
	require.Equal(t, store.RunFailed, string(RunFailed))
	require.Equal(t, store.RunCancelled, string(RunCancelled))
}
