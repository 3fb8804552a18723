package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// SetGenericPlans makes the rest of the transaction it runs in use generic
// plans for prepared statements (and the statements of the plpgsql
// functions they call). The hot path's statements are planned once per
// connection: Postgres's default keeps re-planning them (a custom plan costs
// more to make than to run for these one-row statements: ClaimLoad,
// the Commit CTE and the trigger match spent 0.1–0.3 ms planning for
// 0.04–0.15 ms executing; durable_end_run's event insert 0.3 ms). SET LOCAL
// ends with the transaction, so a connection goes back to the pool as it
// came: the user's own statements are never affected. Only used in
// transactions the library owns, never in a user's (StepTx, SendTx).
const SetGenericPlans = "SET LOCAL plan_cache_mode = force_generic_plan"

// BeginGeneric is the BEGIN of a transaction the library owns whose
// statements are the hot path's (see SetGenericPlans): one round trip.
var BeginGeneric = pgx.TxOptions{BeginQuery: "BEGIN; " + SetGenericPlans}

// Pool is what Generic wraps: a pool or a connection.
type Pool interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Generic runs each statement given to QueryRow as a one-statement implicit
// transaction (as QueryRow on the pool would) planned generically (see
// SetGenericPlans): the SET LOCAL and the statement travel in one batch, one
// round trip.
type Generic struct{ DB Pool }

// QueryRow sends sql with SetGenericPlans before it; the row is read by
// Scan, which also ends the batch.
func (g Generic) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	b := &pgx.Batch{}
	b.Queue(SetGenericPlans)
	b.Queue(sql, args...)
	return &batchRow{br: g.DB.SendBatch(ctx, b)}
}

type batchRow struct{ br pgx.BatchResults }

func (r *batchRow) Scan(dest ...any) error {
	if _, err := r.br.Exec(); err != nil {
		_ = r.br.Close()
		return err
	}
	err := r.br.QueryRow().Scan(dest...)
	if cerr := r.br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}
