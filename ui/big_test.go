package ui_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
	"github.com/pgdurable/durable/ui"
)

// pageBudget is the most a page may take to render on big tables.
const pageBudget = 200 * time.Millisecond

// TestPagesOnBigTables times every page over DURABLE_UI_BIG_RUNS runs
// (e.g. 1000000) and as many events, as cmd/durable-bench's section 7
// builds them (five functions, mixed statuses, 30 days), and fails when a
// page's median exceeds 200ms. Skipped unless the variable is set:
// filling the tables takes a minute or more.
func TestPagesOnBigTables(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DURABLE_UI_BIG_RUNS"))
	if n <= 0 {
		t.Skip("set DURABLE_UI_BIG_RUNS=1000000 to time the pages over a million runs")
	}
	ctx := context.Background()
	url, err := testdb.URL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	schema := "ui_big"
	if os.Getenv("DURABLE_UI_BIG_KEEP") == "" {
		_, _ = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })
	}
	t.Cleanup(pool.Close)
	var exists bool
	_ = pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists)
	if !exists {
		fill(t, ctx, pool, schema, n)
	}
	// The five functions, registered (no process has them).
	if _, err := pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{schema, "durable_function"}.Sanitize()+` (id, name, retries)
		SELECT f, f, 3 FROM unnest(ARRAY['orders', 'emails', 'billing', 'reports', 'audit']) f ON CONFLICT DO NOTHING`); err != nil {
		t.Fatal(err)
	}
	client, err := durable.NewClient(pool, &durable.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	h, err := ui.NewHandler(client, &ui.Options{Prefix: "/durable"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	var runID, failedID string
	_ = pool.QueryRow(ctx, "SELECT id FROM "+schema+".durable_run ORDER BY created_at DESC, id DESC OFFSET 500 LIMIT 1").Scan(&runID)
	_ = pool.QueryRow(ctx, "SELECT id FROM "+schema+".durable_run WHERE status = 'failed' ORDER BY created_at DESC LIMIT 1").Scan(&failedID)
	t0 := time.Now()
	counts, err := client.CountRuns(ctx, durable.CountFilter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CountRuns (all): %s, total %d, estimated %v: %v", time.Since(t0), counts.Total, counts.Estimated, counts.ByStatus)
	t0 = time.Now()
	counts, err = client.CountRuns(ctx, durable.CountFilter{FunctionID: "audit"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CountRuns (audit): %s, total %d, estimated %v", time.Since(t0), counts.Total, counts.Estimated)

	pages := []string{
		"/", "/?function=orders", "/?status=failed", "/?status=running", "/?function=audit&status=queued",
		"/?since=24h", `/?q=event.data.plan+%3D%3D+%22pro%22+%26%26+output.total+%3E+800`,
		"/runs/" + runID, "/runs/" + failedID, "/events", "/events?name=bench%2Flist", "/events?noruns=1",
		"/functions", "/cancel-many?function=audit", "/healthz",
	}
	for _, p := range pages {
		// The first view of a page (the counts' first refresh).
		t0 := time.Now()
		get(t, srv.URL+"/durable"+p)
		t.Logf("%-60s first view %7s", p, time.Since(t0).Round(100*time.Microsecond))
	}
	time.Sleep(time.Second) // let the counts' background refreshes finish: timed pages read the cache
	for _, p := range pages {
		var times []time.Duration
		for range 9 {
			t0 := time.Now()
			resp, err := http.Get(srv.URL + "/durable" + p)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			times = append(times, time.Since(t0))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %d", p, resp.StatusCode)
			}
		}
		slices.Sort(times)
		t.Logf("%-60s median %7s  max %7s", p, times[len(times)/2].Round(100*time.Microsecond), times[len(times)-1].Round(100*time.Microsecond))
		if times[len(times)/2] > pageBudget {
			t.Errorf("%s: median %s over %s", p, times[len(times)/2], pageBudget)
		}
	}
}

// fill builds the schema with n runs (as cmd/durable-bench's section 7
// does) and their trigger events, plus n/100 events that started nothing.
func fill(t *testing.T, ctx context.Context, pool *pgxpool.Pool, schema string, n int) {
	t.Helper()
	if err := migrate.Up(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	runs := pgx.Identifier{schema, "durable_run"}.Sanitize()
	events := pgx.Identifier{schema, "durable_event"}.Sanitize()
	for _, sql := range []string{
		`INSERT INTO ` + runs + ` (id, function_id, status, event_id, event_ids, events, output, error,
			created_at, started_at, ended_at)
		SELECT lpad(to_hex(i), 26, '0'), f.fn, st.status, 'ev-' || i, ARRAY['ev-' || i],
			jsonb_build_array(jsonb_build_object('id', 'ev-' || i, 'name', 'bench/list', 'ts', h.t,
				'data', jsonb_build_object('n', i, 'plan', CASE WHEN h.h3 < 10 THEN 'pro' ELSE 'free' END))),
			CASE WHEN st.status = 'completed' THEN jsonb_build_object('total', h.h1) END,
			CASE WHEN st.status IN ('failed', 'cancelled') THEN 'bench: ' || st.status END,
			h.t, CASE WHEN st.status <> 'queued' THEN h.t END,
			CASE WHEN st.status IN ('completed', 'failed', 'cancelled') THEN h.t END
		FROM generate_series(1, $1::int) AS i,
		LATERAL (SELECT abs(hashint4extended(i, 1)) % 1000 AS h1, abs(hashint4extended(i, 2)) % 100 AS h2,
			abs(hashint4extended(i, 3)) % 100 AS h3, now() - make_interval(secs => 30 * 86400.0 * ($1 - i) / $1) AS t) h,
		LATERAL (SELECT CASE WHEN h.h2 < 50 THEN 'orders' WHEN h.h2 < 75 THEN 'emails' WHEN h.h2 < 90 THEN 'billing'
			WHEN h.h2 < 99 THEN 'reports' ELSE 'audit' END AS fn) f,
		LATERAL (SELECT CASE WHEN h.h1 < 900 THEN 'completed' WHEN h.h1 < 950 THEN 'failed' WHEN h.h1 < 970 THEN 'cancelled'
			WHEN h.h1 < 998 THEN 'queued' ELSE 'running' END AS status) st`,
		`INSERT INTO ` + events + ` (id, name, data, ts, received_at)
		SELECT 'ev-' || i, 'bench/list', jsonb_build_object('n', i), h.t, h.t
		FROM generate_series(1, $1::int) AS i,
		LATERAL (SELECT now() - make_interval(secs => 30 * 86400.0 * ($1 - i) / $1) AS t) h`,
		`INSERT INTO ` + events + ` (id, name, data, ts, received_at)
		SELECT 'lost-' || i, 'bench/lost', '{}', h.t, h.t
		FROM generate_series(1, $1::int / 100) AS i,
		LATERAL (SELECT now() - make_interval(secs => 30 * 86400.0 * ($1 / 100 - i) / ($1 / 100)) - interval '1 second' AS t) h`,
	} {
		if _, err := pool.Exec(ctx, sql, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, table := range []string{runs, events} {
		if _, err := pool.Exec(ctx, "VACUUM ANALYZE "+table); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("filled %s with %d runs and %d events in %s", schema, n, n+n/100, time.Since(t0).Round(time.Second))
}
