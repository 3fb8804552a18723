package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/ui"
)

// uiTarget is the run browser's budget for one page.
const uiTarget = 200 * time.Millisecond

// uiPages measures section 7's run browser part, on the schema section 7
// filled with n runs: it adds each run's trigger event (and n/100 events
// that started nothing), registers the five functions, and renders each
// page of ui.NewHandler (in process, no network: the handler's time)
// 20 times after 2 warm-up views, after the counts by status were first
// computed (their refresh runs in the background, every 10 s at most);
// p50 and p99 against a target of p99 <= 200 ms. The first view of each
// page (the counts' first refresh, cold pages) is printed too.
func (e *env) uiPages(ctx context.Context, client *durable.Client, schema string, n int) error {
	e.printf("\n  run browser (package ui) over the same %d runs:\n", n)
	admin, err := e.pool(ctx, "ui-admin", 2, nil, nil)
	if err != nil {
		return err
	}
	defer admin.Close()
	events := pgx.Identifier{schema, "durable_event"}.Sanitize()
	t0 := time.Now()
	for _, sql := range []string{
		`INSERT INTO ` + events + ` (id, name, data, ts, received_at)
		SELECT r.event_id, 'bench/list', r.events -> 0 -> 'data', r.created_at, r.created_at
		FROM ` + pgx.Identifier{schema, "durable_run"}.Sanitize() + ` r`,
		`INSERT INTO ` + events + ` (id, name, data, ts, received_at)
		SELECT 'lost-' || i, 'bench/lost', '{}', h.t, h.t
		FROM generate_series(1, $1::int / 100) AS i,
		LATERAL (SELECT now() - make_interval(secs => 30 * 86400.0 * i / ($1::int / 100)) - interval '1 second' AS t) h`,
		`INSERT INTO ` + pgx.Identifier{schema, "durable_function"}.Sanitize() + ` (id, name, retries)
		SELECT f, f, 3 FROM unnest(ARRAY['orders', 'emails', 'billing', 'reports', 'audit']) f`,
		`VACUUM ANALYZE ` + events,
	} {
		args := []any{}
		if strings.Contains(sql, "$1") {
			args = append(args, n)
		}
		if _, err := admin.Exec(ctx, sql, args...); err != nil {
			return fmt.Errorf("filling events: %w", err)
		}
	}
	e.printf("  %d events added in %s\n", n+n/100, time.Since(t0).Round(time.Millisecond))

	h, err := ui.NewHandler(client, &ui.Options{Prefix: "/durable"})
	if err != nil {
		return err
	}
	var runID, failedID string
	if err := admin.QueryRow(ctx, `SELECT id FROM `+pgx.Identifier{schema, "durable_run"}.Sanitize()+
		` ORDER BY created_at DESC, id DESC OFFSET 500 LIMIT 1`).Scan(&runID); err != nil {
		return err
	}
	if err := admin.QueryRow(ctx, `SELECT id FROM `+pgx.Identifier{schema, "durable_run"}.Sanitize()+
		` WHERE status = 'failed' ORDER BY created_at DESC, id DESC LIMIT 1`).Scan(&failedID); err != nil {
		return err
	}
	for _, f := range []durable.CountFilter{{}, {FunctionID: "audit"}} {
		c0 := time.Now()
		c, err := client.CountRuns(ctx, f)
		if err != nil {
			return fmt.Errorf("CountRuns: %w", err)
		}
		e.printf("  CountRuns (function %q): %s, total %d, estimated %v\n", f.FunctionID, ms(time.Since(c0)), c.Total, c.Estimated)
	}
	pages := []string{
		"/", "/?function=orders", "/?status=failed", "/?status=running", "/?function=audit&status=queued", "/?since=24h",
		"/?q=event.data.plan+%3D%3D+%22pro%22+%26%26+output.total+%3E+800",
		"/runs/" + runID, "/runs/" + failedID, "/events", "/events?name=bench%2Flist", "/events?noruns=1",
		"/functions", "/cancel-many?function=audit", "/healthz",
	}
	view := func(p string) (time.Duration, error) {
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/durable"+p, nil)
		rec := httptest.NewRecorder()
		s0 := time.Now()
		h.ServeHTTP(rec, req)
		d := time.Since(s0)
		if rec.Code != http.StatusOK {
			return d, fmt.Errorf("GET %s: %d", p, rec.Code)
		}
		return d, nil
	}
	for _, p := range pages {
		d, err := view(p)
		if err != nil {
			return err
		}
		e.printf("  first view %-62s %9s\n", p, ms(d))
	}
	time.Sleep(time.Second) // the counts' first background refreshes end
	var worst time.Duration
	var worstPage string
	for _, p := range pages {
		const warmup, samples = 2, 20
		var lat []time.Duration
		for i := range warmup + samples {
			d, err := view(p)
			if err != nil {
				return err
			}
			if i >= warmup {
				lat = append(lat, d)
			}
		}
		s := sortedCopy(lat)
		p50, p99 := percentile(s, 0.5), percentile(s, 0.99)
		if p99 > worst {
			worst, worstPage = p99, p
		}
		e.printf("  %-73s p50 %9s, p99 %9s -> %s\n", p, ms(p50), ms(p99), verdict(p99 <= uiTarget))
	}
	e.printf("  target: every page's p99 <= %s -> %s (slowest: %s, p99 %s)\n", ms(uiTarget), verdict(worst <= uiTarget), worstPage, ms(worst))
	e.summarize(fmt.Sprintf("run browser page over %d runs, slowest (p99)", n), ms(worst), "p99 <= 200 ms", verdict(worst <= uiTarget))
	return nil
}
