package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
)

// engine is a started durable client on a traced pool of its own, for
// one phase. Closing it stops the client and closes the pool, which
// flushes its connections' server statistics.
type engine struct {
	pool   *pgxpool.Pool
	client *durable.Client
	tr     *tracer
	closed bool
}

// startEngine builds and starts a client executing fns, with the phase
// settings: MaxWorkers and pool size from the options, RecoverAfter and
// every other setting at its default.
func (e *env) startEngine(ctx context.Context, role string, fns ...durable.Function) (*engine, error) {
	return e.startEngineIn(ctx, e.schema, role, fns...)
}

// startEngineIn is startEngine on another schema (one migrated with
// migrate.Up).
func (e *env) startEngineIn(ctx context.Context, schema, role string, fns ...durable.Function) (*engine, error) {
	return e.startEngineWith(ctx, schema, role, nil, fns...)
}

// startEngineWith is startEngineIn with the client's Config changed by
// adjust (when not nil) before the client is built.
func (e *env) startEngineWith(ctx context.Context, schema, role string, adjust func(*durable.Config), fns ...durable.Function) (*engine, error) {
	tr := newTracer(schema)
	pool, err := e.pool(ctx, role, int32(e.o.PoolConns), tr, e.o.EngineParams)
	if err != nil {
		return nil, err
	}
	cfg := &durable.Config{
		Functions:  fns,
		Logger:     e.logger.With("phase", role),
		MaxWorkers: e.o.MaxWorkers,
		Schema:     schema,
	}
	if adjust != nil {
		adjust(cfg)
	}
	client, err := durable.NewClient(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("durable.NewClient: %w", err)
	}
	if err := client.Start(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("durable.Client.Start: %w", err)
	}
	return &engine{pool: pool, client: client, tr: tr}, nil
}

// close stops the client (allowing it 15 seconds) and closes the pool.
func (g *engine) close(ctx context.Context) error {
	if g.closed {
		return nil
	}
	g.closed = true
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	t0 := time.Now()
	err := g.client.Stop(sctx)
	g.pool.Close()
	if err != nil {
		return fmt.Errorf("durable.Client.Stop (after %s): %w", time.Since(t0).Round(time.Millisecond), err)
	}
	return nil
}

// diagnose describes the state of the bench schema's runs and jobs, for
// error messages when runs do not complete.
func (e *env) diagnose(ctx context.Context, functionID string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	conn, err := e.conn(ctx, "diagnose")
	if err != nil {
		return "diagnosis failed: " + err.Error()
	}
	defer conn.Close(ctx)
	var b strings.Builder
	query := func(title, sql string, args ...any) {
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", title, err)
			return
		}
		defer rows.Close()
		fmt.Fprintf(&b, "%s:\n", title)
		n := 0
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				fmt.Fprintf(&b, "  %v\n", err)
				return
			}
			parts := make([]string, len(vals))
			for i, v := range vals {
				parts[i] = fmt.Sprint(v)
			}
			fmt.Fprintf(&b, "  %s\n", strings.Join(parts, " | "))
			n++
		}
		if err := rows.Err(); err != nil {
			fmt.Fprintf(&b, "  %v\n", err)
		}
		if n == 0 {
			b.WriteString("  (none)\n")
		}
	}
	query("runs by status (status | owner set | wake_at set | count)",
		"SELECT status, owner IS NOT NULL, wake_at IS NOT NULL, count(*) FROM "+e.table("durable_run")+
			" WHERE function_id = $1 GROUP BY 1, 2, 3 ORDER BY 1", functionID)
	query("river jobs by state (state | attempt | count)",
		"SELECT state, attempt, count(*) FROM "+e.table("river_job")+" GROUP BY 1, 2 ORDER BY 1, 2")
	query("errors of up to 5 failed or erroring runs (id | status | error)",
		"SELECT id, status, error FROM "+e.table("durable_run")+
			" WHERE function_id = $1 AND error IS NOT NULL ORDER BY updated_at DESC LIMIT 5", functionID)
	query("errors of up to 5 river jobs (id | state | errors)",
		"SELECT id, state, errors FROM "+e.table("river_job")+" WHERE errors IS NOT NULL AND errors <> '{}' ORDER BY id LIMIT 5")
	return b.String()
}

// errStall is returned when runs stop making progress.
var errStall = errors.New("runs stopped making progress")
