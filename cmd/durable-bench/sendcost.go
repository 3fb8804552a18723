package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/migrate"
)

// placeholderRun is the run the synthetic waits of section 6 belong to.
const placeholderRun = "bench-placeholder-run"

// sendCost measures section 6: what open waits on an event name cost a
// Send of that name that matches none of them.
//
// Two fresh schemas (migrate.Up), each with a started client executing
// the waiting function of section 5: one with no open wait, one with
// OpenWaits. Of those, one is a real run waiting on data.k == "real"; the
// rest are rows inserted directly into durable_wait, in the shape the
// engine gives a wait (kind 'wait', event_name, match_path 'data.k',
// match_value 's:<key>', the condition, the run's event, an expiry), all
// belonging to one placeholder run: an event that matches none of them
// never reads their run. (Creating them as real runs would take a minute
// or more on a small machine.) Both tables are ANALYZEd.
//
// Then SendCostSamples non-matching events (data.k absent from every
// wait) are sent to each schema, one at a time, alternating between the
// two schemas (and which goes first) so that load changes on a shared
// machine hit both alike. Finally one event matching the real run is sent:
// it must consume exactly one wait and resume exactly that run.
func (e *env) sendCost(ctx context.Context) (err error) {
	o := e.o
	n := o.OpenWaits
	e.section(fmt.Sprintf("6. Send cost with 0 vs %d open waits on the same event name", n))
	schemas := [2]string{e.schema + "_w0", fmt.Sprintf("%s_w%d", e.schema, n)}

	admin, err := e.pool(ctx, "sendcost-admin", 2, nil, nil)
	if err != nil {
		return err
	}
	defer admin.Close()
	for _, s := range schemas {
		if err := migrate.Up(ctx, admin, s); err != nil {
			return fmt.Errorf("migrate.Up(%s): %w", s, err)
		}
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		for _, s := range schemas {
			if _, derr := admin.Exec(dctx, "DROP SCHEMA "+pgx.Identifier{s}.Sanitize()+" CASCADE"); derr != nil {
				err = errors.Join(err, fmt.Errorf("dropping schema %s: %w", s, derr))
			}
		}
	}()

	var mu sync.Mutex
	bodies := map[string]int{} // run ID -> executions of the step after the wait
	fn := waitFunction(func(runID string, _ time.Time) {
		mu.Lock()
		bodies[runID]++
		mu.Unlock()
	})
	var gs [2]*engine
	for i, s := range schemas {
		g, err := e.startEngineIn(ctx, s, fmt.Sprintf("sendcost-%d", i), fn)
		if err != nil {
			return err
		}
		defer func() { _ = g.close(ctx) }()
		gs[i] = g
	}
	waits := pgx.Identifier{schemas[1], "durable_wait"}.Sanitize()
	countWaits := func() (int, error) {
		var c int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM "+waits).Scan(&c)
		return c, err
	}

	// The real waiting run, then the synthetic waits.
	realRun, err := e.startWaitingRun(ctx, gs[1], "real")
	if err != nil {
		return err
	}
	var path, value, ifExpr, realKind, realName string
	if err := admin.QueryRow(ctx, "SELECT kind, event_name, coalesce(match_path, ''), coalesce(match_value, ''), if_expr FROM "+waits+
		" WHERE run_id = $1", realRun).Scan(&realKind, &realName, &path, &value, &ifExpr); err != nil {
		return fmt.Errorf("reading the real run's wait: %w", err)
	}
	if realKind != "wait" || realName != resumeEvent || path != "data.k" || value != "s:real" || ifExpr != waitIf {
		return fmt.Errorf("the real run's wait has the shape (%s, %s, %s, %s, %s), not the one the synthetic rows copy (wait, %s, data.k, s:real, %s)",
			realKind, realName, path, value, ifExpr, resumeEvent, waitIf)
	}
	setup := time.Now()
	if _, err := admin.Exec(ctx, "INSERT INTO "+pgx.Identifier{schemas[1], "durable_run"}.Sanitize()+
		` (id, function_id, status, event_id, event_ids, events) VALUES ($1, $1, 'running', $1, ARRAY[$1], '[]')`, placeholderRun); err != nil {
		return fmt.Errorf("inserting the placeholder run: %w", err)
	}
	if _, err := admin.Exec(ctx, "INSERT INTO "+waits+
		` (run_id, kind, step_key, event_name, match_path, match_value, if_expr, run_event, expires_at)
		SELECT $1, 'wait', 'w:' || i, $2, 'data.k', 's:' || k, $3,
			jsonb_build_object('id', $1 || '-' || i, 'name', $4::text, 'data', jsonb_build_object('k', k), 'ts', now()),
			now() + interval '1 hour'
		FROM generate_series(1, $5::int) AS i, LATERAL (SELECT 'waiting-' || i AS k) AS x`,
		placeholderRun, resumeEvent, waitIf, waitStartEvent, n-1); err != nil {
		return fmt.Errorf("inserting %d synthetic waits: %w", n-1, err)
	}
	for _, s := range schemas {
		if _, err := admin.Exec(ctx, "ANALYZE "+pgx.Identifier{s, "durable_wait"}.Sanitize()); err != nil {
			return fmt.Errorf("ANALYZE: %w", err)
		}
	}
	open, err := countWaits()
	if err != nil {
		return err
	}
	if open != n {
		return fmt.Errorf("%s holds %d waits, want %d", schemas[1], open, n)
	}
	e.printf("  schemas: %s (no wait) and %s (%d open waits on %q: 1 real waiting run + %d rows inserted with SQL in the engine's shape\n"+
		"    on one placeholder run, inserted in %s; the real run's row was checked to have that shape); both durable_wait tables ANALYZEd\n",
		schemas[0], schemas[1], n, resumeEvent, n-1, time.Since(setup).Round(time.Millisecond))
	e.printf("  each schema has its own started client (the function of section 5, MaxWorkers %d, pgxpool MaxConns %d)\n", o.MaxWorkers, o.PoolConns)

	// Non-matching sends, alternating.
	const warmup = 10
	var lat [2][]time.Duration
	var t0 [2]traceSnap
	for i := range warmup + o.SendCostSamples {
		if i == warmup {
			for k := range gs {
				t0[k] = gs[k].tr.snap()
			}
		}
		for j := range 2 {
			k := (i + j) % 2
			s0 := time.Now()
			if _, err := gs[k].client.Send(ctx, durable.Event{Name: resumeEvent, Data: map[string]string{"k": fmt.Sprintf("absent-%d", i)}}); err != nil {
				return fmt.Errorf("Send to %s: %w", schemas[k], err)
			}
			if i >= warmup {
				lat[k] = append(lat[k], time.Since(s0))
			}
		}
	}
	var traced [2]traceDelta
	for k := range gs {
		traced[k] = diffTrace(t0[k], gs[k].tr.snap())
	}
	if open, err = countWaits(); err != nil {
		return err
	}
	if open != n {
		return fmt.Errorf("after %d non-matching sends, %s holds %d waits, want %d (a non-matching event consumed waits)", o.SendCostSamples, schemas[1], open, n)
	}

	var p50, avg, p99 [2]time.Duration
	for k := range lat {
		s := sortedCopy(lat[k])
		p50[k], avg[k], p99[k] = percentile(s, 0.5), mean(lat[k]), percentile(s, 0.99)
	}
	ratio, meanRatio := float64(p50[1])/float64(p50[0]), float64(avg[1])/float64(avg[0])
	e.printf("  non-matching Send (%q, data.k absent from every wait), %d per schema after %d warm-up, alternating:\n", resumeEvent, o.SendCostSamples, warmup)
	for k, s := range schemas {
		label := "0 open waits"
		if k == 1 {
			label = fmt.Sprintf("%d open waits", n)
		}
		e.printf("    %-17s p50 %s, mean %s, p99 %s   (%s)\n", label+":", ms(p50[k]), ms(avg[k]), ms(p99[k]), s)
	}
	e.printf("  ratio %d vs 0 waits: p50 %.2fx, mean %.2fx; target <= 1.2x (p50) -> %s\n", n, ratio, meanRatio, verdict(ratio <= 1.2))
	for k := range gs {
		e.printf("    %d waits, %s\n", []int{0, n}[k], traced[k].describe(o.SendCostSamples, "Send"))
	}
	if o.Statements {
		e.printf("%s", indent(traced[1].table(o.SendCostSamples, "Send", 8), "      "))
	}
	if err := e.explainMatchWaits(ctx, schemas); err != nil {
		e.printf("  (EXPLAIN of MatchWaits failed: %v)\n", err)
	}

	// One matching send: exactly one wait consumed, exactly one run resumed.
	before := open
	s0 := time.Now()
	if _, err := gs[1].client.Send(ctx, durable.Event{Name: resumeEvent, Data: map[string]string{"k": "real"}}); err != nil {
		return fmt.Errorf("matching Send: %w", err)
	}
	matchSend := time.Since(s0)
	if open, err = countWaits(); err != nil {
		return err
	}
	var synthetic int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+waits+" WHERE run_id = $1", placeholderRun).Scan(&synthetic); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	run, err := gs[1].client.WaitRun(wctx, realRun)
	cancel()
	if err != nil {
		return fmt.Errorf("the real run after the matching event: %w", err)
	}
	var resumed int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schemas[1], "durable_step"}.Sanitize()+
		" WHERE key = 'w' AND status = 'completed'").Scan(&resumed); err != nil {
		return err
	}
	mu.Lock()
	realBodies, allBodies := bodies[realRun], len(bodies)
	mu.Unlock()
	consumed := before - open
	ok := consumed == 1 && synthetic == n-1 && run.Status == durable.RunCompleted && resumed == 1 && realBodies == 1 && allBodies == 1
	e.printf("  matching Send (data.k = \"real\"; one sample, its statements' first use on the connection), %s: waits %d -> %d (%d consumed; the %d synthetic ones untouched: %d left);\n"+
		"    runs resumed: %d (steps \"w\" completed in the schema), the real run ended %s, its step \"after\" ran %d time%s (in %d run%s in all) -> %s\n",
		ms(matchSend), before, open, consumed, n-1, synthetic, resumed, run.Status, realBodies, plural(realBodies), allBodies, plural(allBodies), verdict(ok))
	if !ok {
		e.printf("    %s\n", strings.ReplaceAll(e.diagnoseSchema(ctx, admin, schemas[1]), "\n", "\n    "))
	}

	for k := range gs {
		if err := gs[k].close(ctx); err != nil {
			return err
		}
	}
	e.summarize(fmt.Sprintf("non-matching Send, %d vs 0 open waits (p50)", n),
		fmt.Sprintf("%s vs %s = %.2fx (mean %.2fx)", ms(p50[1]), ms(p50[0]), ratio, meanRatio), "<= 1.2x", verdict(ratio <= 1.2))
	e.summarize(fmt.Sprintf("matching Send, %d open waits: consumed / resumed", n), fmt.Sprintf("%d wait / %d run", consumed, resumed),
		"exactly 1 / 1", verdict(ok))
	return nil
}

// explainMatchWaits prints the plans and execution times of the engine's
// MatchWaits statement for a non-matching event, in both schemas: the
// custom plan (built for the parameters' values) and the generic one,
// which a statement the engine's pool has prepared may switch to after
// five executions.
func (e *env) explainMatchWaits(ctx context.Context, schemas [2]string) error {
	ev := map[string]any{"id": "01EXPLAINEXPLAINEXPLAIN000", "name": resumeEvent, "data": map[string]any{"k": "absent"},
		"ts": time.Now().UTC().Format(time.RFC3339Nano)}
	var paths, values []string
	for p, v := range expr.Leaves(ev, 200) {
		paths, values = append(paths, p), append(values, v)
	}
	lit := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = "'" + strings.ReplaceAll(s, "'", "''") + "'"
		}
		return "ARRAY[" + strings.Join(q, ", ") + "]::text[]"
	}
	args := fmt.Sprintf("'%s', %s, %s", resumeEvent, lit(paths), lit(values))
	for _, s := range schemas {
		sql := durableSQL(s)["MatchWaits"]
		if sql == "" {
			return errors.New("MatchWaits not found in internal/store")
		}
		conn, err := e.conn(ctx, "explain")
		if err != nil {
			return err
		}
		err = func() error {
			defer conn.Close(context.WithoutCancel(ctx))
			if _, err := conn.Exec(ctx, "PREPARE bench_match_waits(text, text[], text[]) AS "+strings.TrimSuffix(sql, ";"),
				pgx.QueryExecModeSimpleProtocol); err != nil {
				return err
			}
			// What the plan cache settles on (auto mode) after ten executions,
			// as on the engine's connections, which prepare their statements.
			for range 10 {
				if _, err := conn.Exec(ctx, "EXECUTE bench_match_waits("+args+")", pgx.QueryExecModeSimpleProtocol); err != nil {
					return err
				}
			}
			var generic, custom int64
			if err := conn.QueryRow(ctx, "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'bench_match_waits'").
				Scan(&generic, &custom); err != nil {
				return err
			}
			e.printf("  MatchWaits in %s, prepared, 10 executions with plan_cache_mode auto: %d custom plans, %d generic\n", s, custom, generic)
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode, pgx.QueryExecModeSimpleProtocol); err != nil {
					return err
				}
				rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE bench_match_waits("+args+")", pgx.QueryExecModeSimpleProtocol)
				if err != nil {
					return err
				}
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					return err
				}
				var keep []string
				for _, l := range lines {
					t := strings.TrimSpace(l)
					if strings.Contains(t, "Scan") || strings.HasPrefix(t, "Planning Time") || strings.HasPrefix(t, "Execution Time") {
						keep = append(keep, strings.TrimPrefix(strings.TrimLeft(l, " "), "->  "))
					}
				}
				e.printf("    EXPLAIN ANALYZE, %s plan (%d leaves of the event looked up): %s\n",
					strings.TrimSuffix(strings.TrimPrefix(mode, "force_"), "_plan"), len(paths), strings.Join(keep, "; "))
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// diagnoseSchema lists the waits and runs of a schema of section 6.
func (e *env) diagnoseSchema(ctx context.Context, admin *pgxpool.Pool, schema string) string {
	var b strings.Builder
	var id, status, msg string
	rows, err := admin.Query(ctx, "SELECT id, status, coalesce(error, '') FROM "+pgx.Identifier{schema, "durable_run"}.Sanitize()+" ORDER BY created_at LIMIT 5")
	if err != nil {
		return err.Error()
	}
	_, err = pgx.ForEachRow(rows, []any{&id, &status, &msg}, func() error {
		fmt.Fprintf(&b, "run %s: %s %s\n", id, status, msg)
		return nil
	})
	if err != nil {
		fmt.Fprintf(&b, "%v\n", err)
	}
	return b.String()
}
