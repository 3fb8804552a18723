package durable_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// Sends made at the same time share transactions; each call still gets
// its own events' IDs, and a call Postgres refuses (a \u0000 in its data,
// which jsonb rejects) fails alone: the others' events are stored and start
// their runs.
func TestConcurrentSendsShareTransactionsAndKeepTheirOwnResults(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fn := durable.NewFunction(durable.FunctionOpts{ID: "combo", Triggers: []durable.Trigger{{Event: "combo/go"}}},
		func(ctx context.Context, in durable.Input[M]) (int, error) { return 1, nil })
	c := b.client(durable.Config{Functions: []durable.Function{fn}})

	const calls = 64
	const bad = 17
	start := make(chan struct{})
	got := make([][]string, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := 0; i < calls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var evs []durable.Event
			for j := 0; j <= i%3; j++ {
				data := M{"call": i, "j": j}
				if i == bad {
					data["text"] = "nul \u0000 here"
				}
				evs = append(evs, durable.Event{ID: fmt.Sprintf("combo-%d-%d", i, j), Name: "combo/go", Data: data})
			}
			if i%5 == 0 {
				evs = append(evs, evs[0]) // a duplicate within the call: its ID twice
			}
			<-start
			got[i], errs[i] = c.Send(b.ctx, evs...)
		}()
	}
	close(start)
	wg.Wait()

	var want []string
	for i := 0; i < calls; i++ {
		if i == bad {
			require.Error(t, errs[i], "call %d", i)
			require.ErrorContains(t, errs[i], "Unicode", "call %d: Postgres's own reason", i)
			continue
		}
		require.NoError(t, errs[i], "call %d", i)
		var ids []string
		for j := 0; j <= i%3; j++ {
			ids = append(ids, fmt.Sprintf("combo-%d-%d", i, j))
		}
		if i%5 == 0 {
			ids = append(ids, ids[0])
		}
		require.Equal(t, ids, got[i], "call %d got another call's IDs", i)
		want = append(want, ids[:1+i%3]...)
	}

	var stored, txns, refused int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*), count(DISTINCT xmin::text) FROM "+b.schema+".durable_event WHERE id = ANY($1)",
		want).Scan(&stored, &txns))
	require.Equal(t, len(want), stored)
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_event WHERE id LIKE $1",
		fmt.Sprintf("combo-%d-%%", bad)).Scan(&refused))
	require.Zero(t, refused, "the refused call stored nothing")
	require.Less(t, txns, calls/2, "the calls did not share transactions")

	var runs int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+b.schema+".durable_run WHERE event_id = ANY($1)", want).Scan(&runs))
	require.Equal(t, len(want), runs, "one run per stored event")
}
