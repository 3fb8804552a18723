package durable_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

func TestFunctionRegistryShowsProcessesAndUnregisters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "listed", Idempotency: "event.data.k",
		Triggers: []durable.Trigger{{Event: "listed/go", If: "event.data.n > 1"}}, Timeouts: durable.Timeouts{Finish: time.Minute}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	ghost := durable.NewFunction(durable.FunctionOpts{ID: "ghost", Triggers: []durable.Trigger{{Event: "ghost/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })

	worker := b.client(durable.Config{Functions: []durable.Function{fn}})
	api, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: []durable.Function{ghost}})
	require.NoError(t, err)
	require.NoError(t, api.Register(b.ctx)) // known, but no process executes it

	fns, err := worker.Functions(b.ctx)
	require.NoError(t, err)
	require.Len(t, fns, 2)
	byID := map[string]durable.FunctionInfo{}
	for _, f := range fns {
		byID[f.ID] = f
	}
	listed := byID["listed"]
	require.Equal(t, []durable.Trigger{{Event: "listed/go", If: "event.data.n > 1"}}, listed.Triggers)
	require.Equal(t, "event.data.k", listed.Idempotency)
	require.Equal(t, time.Minute, listed.Timeouts.Finish)
	require.True(t, listed.Live)
	require.Len(t, listed.Workers, 1)
	require.True(t, listed.Workers[0].Live)
	require.NotZero(t, listed.Workers[0].PID)
	require.False(t, byID["ghost"].Live, "no live process has it")
	require.Empty(t, byID["ghost"].Workers)

	// Unregistered, its triggers start nothing.
	require.NoError(t, worker.Unregister(b.ctx, "ghost"))
	require.ErrorIs(t, worker.Unregister(b.ctx, "ghost"), durable.ErrFunctionNotFound)
	ids, err := worker.Send(b.ctx, durable.Event{Name: "ghost/go"})
	require.NoError(t, err)
	runs, err := worker.RunsForEvent(b.ctx, ids[0])
	require.NoError(t, err)
	require.Empty(t, runs)

	// A stopped process is no longer live.
	stop, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, worker.Stop(stop))
	fns, err = api.Functions(b.ctx)
	require.NoError(t, err)
	require.Len(t, fns, 1)
	require.False(t, fns[0].Live)
}

// Processes starting together register the same functions at once (in
// whatever order each has them): no deadlock, and the registry ends whole.
func TestConcurrentRegistrationsNeverDeadlock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fns []durable.Function
	for i := 0; i < 8; i++ {
		id := fmt.Sprintf("reg-%d", i)
		fns = append(fns, durable.NewFunction(durable.FunctionOpts{ID: id,
			Triggers: []durable.Trigger{{Event: id + "/a"}, {Event: "reg/shared"}}},
			func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil }))
	}
	var clients []*durable.Client
	for c := 0; c < 4; c++ {
		mine := append([]durable.Function(nil), fns...)
		if c%2 == 1 {
			slices.Reverse(mine)
		}
		client, err := durable.NewClient(b.pool, &durable.Config{Schema: b.schema, Functions: mine})
		require.NoError(t, err)
		clients = append(clients, client)
	}
	errs := make(chan error, 4*10)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				errs <- c.Register(b.ctx)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	listed, err := clients[0].Functions(b.ctx)
	require.NoError(t, err)
	require.Len(t, listed, 8)
	for _, f := range listed {
		require.Len(t, f.Triggers, 2, f.ID)
	}
}
