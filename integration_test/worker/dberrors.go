package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// txConflictTracer prints every query that failed with a transaction
// rollback error (SQLSTATE class 40: deadlock, serialization failure) on
// stderr, as "worker <name>: SQLSTATE 40P01 ...". The engine may handle
// such an error silently (a timeout claim that loses a deadlock only ends
// the attempt), and the tests look for these lines in the worker's output.
type txConflictTracer struct{ worker string }

type sqlKey struct{}

func (t txConflictTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (t txConflictTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	sql, _ := ctx.Value(sqlKey{}).(string)
	t.report(sql, d.Err)
}

func (t txConflictTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (t txConflictTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	t.report(d.SQL, d.Err)
}

func (t txConflictTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (t txConflictTracer) report(sql string, err error) {
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "40") {
		return
	}
	fmt.Fprintf(os.Stderr, "worker %s: SQLSTATE %s (%s) in query: %s\n", t.worker, pgErr.Code, pgErr.Message, strings.Join(strings.Fields(sql), " "))
}
