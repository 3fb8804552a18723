package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// listTarget is section 7's target for one ListRuns page.
const listTarget = 50 * time.Millisecond

// listCase is one filter section 7 times.
type listCase struct {
	name   string
	filter durable.RunFilter
	// upper is the keyset position the first query starts after (for
	// EXPLAIN): the deep page's.
	upper *durable.Run
}

// listRuns measures section 7: Client.ListRuns pages on a fresh schema
// holding ListRuns runs (one INSERT ... SELECT from generate_series, then
// VACUUM ANALYZE, as autovacuum leaves a table): five functions (50, 25,
// 15, 9 and 1% of the runs), statuses mixed (completed 90%, failed 5%,
// cancelled 2%, queued 2.8%, running 0.2%), created over 30 days, each with a
// trigger event (data.n, data.plan "pro" for 10%) and, when completed, an
// output (total 0 to 899). No engine runs there: a client with no
// functions, never started, lists. Each filter is timed over 50 calls
// (after 3 warm-up calls) of its first page of 50 runs, and its first
// query is shown with EXPLAIN ANALYZE (the index it reads, the rows it
// examines, its execution time).
func (e *env) listRuns(ctx context.Context, base baseline) (err error) {
	n := e.o.ListRuns
	e.section(fmt.Sprintf("7. ListRuns: pages of 50 among %d runs", n))
	schema := e.schema + "_list"
	admin, err := e.pool(ctx, "list-admin", 2, nil, nil)
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := migrate.Up(ctx, admin, schema); err != nil {
		return fmt.Errorf("migrate.Up(%s): %w", schema, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := admin.Exec(dctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); derr != nil {
			err = errors.Join(err, fmt.Errorf("dropping schema %s: %w", schema, derr))
		}
	}()
	runs := pgx.Identifier{schema, "durable_run"}.Sanitize()
	t0 := time.Now()
	if _, err := admin.Exec(ctx, `INSERT INTO `+runs+` (id, function_id, status, event_id, event_ids, events, output, error,
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
			WHEN h.h1 < 998 THEN 'queued' ELSE 'running' END AS status) st`, n); err != nil {
		return fmt.Errorf("filling %s: %w", runs, err)
	}
	inserted := time.Since(t0)
	if _, err := admin.Exec(ctx, "VACUUM ANALYZE "+runs); err != nil {
		return fmt.Errorf("VACUUM ANALYZE: %w", err)
	}
	var tableSize, indexSize string
	_ = admin.QueryRow(ctx, "SELECT pg_size_pretty(pg_table_size($1::regclass)), pg_size_pretty(pg_indexes_size($1::regclass))", runs).
		Scan(&tableSize, &indexSize)
	e.printf("  schema %s: %d runs inserted in %s (one INSERT ... SELECT), VACUUM ANALYZE %s; table %s, indexes %s\n",
		schema, n, inserted.Round(time.Millisecond), (time.Since(t0) - inserted).Round(time.Millisecond), tableSize, indexSize)

	pool, err := e.pool(ctx, "list", 4, nil, nil)
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Logger: e.logger.With("phase", "list")})
	if err != nil {
		return fmt.Errorf("durable.NewClient: %w", err)
	}

	// A page deep in: the cursor after the first half of the runs, reached
	// a page of 1,000 at a time.
	var walk []time.Duration
	var deep durable.RunFilter
	var deepAt *durable.Run
	for seen := 0; seen < n/2; {
		s0 := time.Now()
		page, err := client.ListRuns(ctx, durable.RunFilter{Limit: durable.MaxListLimit, Cursor: deep.Cursor})
		if err != nil {
			return fmt.Errorf("ListRuns (walking to the middle): %w", err)
		}
		walk = append(walk, time.Since(s0))
		if len(page.Runs) != durable.MaxListLimit && page.Next != "" {
			return fmt.Errorf("an unfiltered page of %d holds %d runs", durable.MaxListLimit, len(page.Runs))
		}
		if page.Next == "" {
			break
		}
		seen += len(page.Runs)
		deep.Cursor, deepAt = page.Next, page.Runs[len(page.Runs)-1]
	}
	ws := sortedCopy(walk)
	e.printf("  reaching the middle: %d pages of %d, p50 %s, p99 %s per page\n", len(walk), durable.MaxListLimit,
		ms(percentile(ws, 0.5)), ms(percentile(ws, 0.99)))

	day := 24 * time.Hour
	mid := time.Now().Add(-15 * day)
	cases := []listCase{
		{name: "no filter", filter: durable.RunFilter{}},
		{name: "function (25% of runs)", filter: durable.RunFilter{FunctionID: "emails"}},
		{name: "function (1%)", filter: durable.RunFilter{FunctionID: "audit"}},
		{name: "status failed (5%)", filter: durable.RunFilter{Status: []durable.RunStatus{durable.RunFailed}}},
		{name: "status running (0.2%: scan bound)", filter: durable.RunFilter{Status: []durable.RunStatus{durable.RunRunning}}},
		{name: "function 25% + status failed", filter: durable.RunFilter{FunctionID: "emails", Status: []durable.RunStatus{durable.RunFailed}}},
		{name: "function 1% + status failed (0.05%)", filter: durable.RunFilter{FunctionID: "audit", Status: []durable.RunStatus{durable.RunFailed}}},
		{name: "time range (1 day, 15 days ago)", filter: durable.RunFilter{CreatedAfter: mid.Add(-day), CreatedBefore: mid}},
		{name: "function + status + time range", filter: durable.RunFilter{FunctionID: "billing", Status: []durable.RunStatus{durable.RunFailed, durable.RunCancelled},
			CreatedAfter: mid.Add(-day), CreatedBefore: mid}},
		{name: fmt.Sprintf("page deep in (cursor after %d runs)", n/2), filter: deep, upper: deepAt},
		{name: "If over event (10%)", filter: durable.RunFilter{If: `event.data.plan == "pro"`}},
		{name: "If over output + status (~5%)", filter: durable.RunFilter{Status: []durable.RunStatus{durable.RunCompleted}, If: "output.total >= 850"}},
		{name: "If matching 1 run (eval bound)", filter: durable.RunFilter{If: "event.data.n == 7"}},
	}
	e.printf("  machine limit: one-row commit p50 %s. Each filter: 50 calls of its first page (Limit 50) after 3 warm-up calls;\n"+
		"  one call examines at most %d runs (durable.ListScanLimit) matching the function and time range, and evaluates If\n"+
		"  on at most %d (durable.ListEvalLimit)\n", ms(base.CommitP50), durable.ListScanLimit, durable.ListEvalLimit)
	var worst time.Duration
	var worstName string
	for _, c := range cases {
		const warmup, samples = 3, 50
		var lat []time.Duration
		var got, nexts int
		for i := range warmup + samples {
			s0 := time.Now()
			page, err := client.ListRuns(ctx, c.filter)
			d := time.Since(s0)
			if err != nil {
				return fmt.Errorf("ListRuns (%s): %w", c.name, err)
			}
			if i >= warmup {
				lat = append(lat, d)
				got += len(page.Runs)
				if page.Next != "" {
					nexts++
				}
			}
		}
		s := sortedCopy(lat)
		p50, p99 := percentile(s, 0.5), percentile(s, 0.99)
		if p99 > worst {
			worst, worstName = p99, c.name
		}
		e.printf("  %-38s p50 %9s (%5.1fx a commit), p99 %9s; %2d runs a page, Next %s -> %s\n", c.name+":", ms(p50),
			float64(p50)/float64(base.CommitP50), ms(p99), got/samples, map[bool]string{true: "set", false: "empty"}[nexts > 0],
			verdict(p99 <= listTarget))
		if c.filter.If == "" {
			plan, err := e.explainList(ctx, admin, schema, c)
			if err != nil {
				return fmt.Errorf("EXPLAIN (%s): %w", c.name, err)
			}
			e.printf("      EXPLAIN ANALYZE of its query: %s\n", plan)
		}
		e.summarize("ListRuns page, "+c.name+" (p50 / p99)", ms(p50)+" / "+ms(p99), "p99 <= 50 ms", verdict(p99 <= listTarget))
	}
	e.printf("  target: every filter's p99 <= %s -> %s (slowest: %s, p99 %s)\n", ms(listTarget), verdict(worst <= listTarget), worstName, ms(worst))
	return e.uiPages(ctx, client, schema, n)
}

// explainList runs EXPLAIN ANALYZE on the first query ListRuns makes for
// c (with no If: its arguments are then the filter's own), and returns
// the index scan, the rows it kept and the execution time.
func (e *env) explainList(ctx context.Context, admin interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, schema string, c listCase) (string, error) {
	name := "ListRuns"
	if c.filter.FunctionID != "" {
		name = "ListFunctionRuns"
	}
	sql := durableSQL(schema)[name]
	if sql == "" {
		return "", fmt.Errorf("%s not found in internal/store", name)
	}
	statuses := []string{}
	for _, s := range c.filter.Status {
		statuses = append(statuses, string(s))
	}
	args := pgx.NamedArgs{"function_id": c.filter.FunctionID, "statuses": statuses, "after": nil,
		"upper_ts": nil, "upper_id": "", "scan": durable.ListScanLimit, "rows": 51, "with_event": false}
	if !c.filter.CreatedAfter.IsZero() {
		args["after"] = c.filter.CreatedAfter
	}
	if !c.filter.CreatedBefore.IsZero() {
		args["upper_ts"] = c.filter.CreatedBefore
	}
	if c.upper != nil {
		args["upper_ts"], args["upper_id"] = c.upper.CreatedAt, c.upper.ID
	}
	rows, err := admin.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+sql, pgx.QueryExecModeCacheDescribe, args)
	if err != nil {
		return "", err
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	var keep []string
	inScan := false // the lines after the scan node are its details
	for _, l := range lines {
		t := strings.TrimPrefix(strings.TrimSpace(l), "->  ")
		switch {
		case strings.HasPrefix(t, "Index Scan"), strings.HasPrefix(t, "Seq Scan"), strings.HasPrefix(t, "Bitmap"):
			inScan = true
			// "Index Scan using X on durable_run  (cost=...) (actual time=... rows=N loops=1)"
			idx, rest, _ := strings.Cut(t, "  (")
			if _, act, ok := strings.Cut(rest, "(actual "); ok {
				if _, r, ok := strings.Cut(act, "rows="); ok {
					r, _, _ = strings.Cut(r, " ")
					idx += ", " + r + " rows"
				}
			}
			keep = append(keep, idx)
		case inScan && (strings.HasPrefix(t, "Rows Removed by Filter") || strings.HasPrefix(t, "Buffers:")),
			strings.HasPrefix(t, "Execution Time"):
			keep = append(keep, t)
		case strings.HasPrefix(t, "Planning"):
			inScan = false
		}
	}
	return strings.Join(keep, "; "), nil
}
