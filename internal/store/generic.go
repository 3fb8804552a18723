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
// round trip (a Batcher's batch of one, sent at once).
type Generic struct{ DB Pool }

// QueryRow returns the statement's row; Scan sends it.
func (g Generic) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return genericRow{ctx: ctx, db: g.DB, sql: sql, args: args}
}

type genericRow struct {
	ctx  context.Context
	db   Pool
	sql  string
	args []any
}

func (r genericRow) Scan(dest ...any) error {
	errs, err := sendBatch(r.ctx, r.db, []*batchReq{{sql: r.sql, args: r.args, dest: dest}})
	if err != nil {
		return err
	}
	return errs[0]
}
