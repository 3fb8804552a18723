package migrate_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

// durableTables are the tables the library's migrations create.
var durableTables = []string{
	"durable_event",
	"durable_function",
	"durable_function_trigger",
	"durable_run",
	"durable_step",
	"durable_worker",
}

// dbURL returns the test database URL, failing the test when there is none.
func dbURL(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, err := testdb.URL(ctx)
	require.NoError(t, err)
	return url
}

// newPool opens a pool closed when the test ends.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dbURL(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// newSchema returns a fresh, random schema name (not yet created) that is
// dropped, with everything in it, when the test ends. Register it after
// the pools it is used with, so that it is dropped before they close.
func newSchema(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	b := make([]byte, 8)
	_, err := rand.Read(b)
	require.NoError(t, err)
	schema := "m_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// tables lists the tables of schema, sorted.
func tables(t *testing.T, pool *pgxpool.Pool, schema string) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(),
		`SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname`, schema)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// requireInstalled checks that schema holds River's job table and every
// table of the library, once each.
func requireInstalled(t *testing.T, pool *pgxpool.Pool, schema string) {
	t.Helper()
	got := tables(t, pool, schema)
	for _, want := range append([]string{"river_job", "river_migration"}, durableTables...) {
		require.Equal(t, 1, countOf(got, want), "table %s.%s in %v", schema, want, got)
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// versions returns the versions of one line of migrate.Migrations.
func versions(t *testing.T, schema, line string) []int {
	t.Helper()
	all, err := migrate.Migrations(schema)
	require.NoError(t, err)
	var out []int
	for _, m := range all {
		if m.Line == line {
			out = append(out, m.Version)
		}
	}
	require.NotEmpty(t, out, "no %s migrations", line)
	return out
}

// requireRecorded checks that every migration is recorded exactly once, in
// durable_migration for the library's and river_migration for River's.
func requireRecorded(t *testing.T, pool *pgxpool.Pool, schema string) {
	t.Helper()
	q := func(sql string) []int {
		rows, err := pool.Query(t.Context(), sql)
		require.NoError(t, err)
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		return vs
	}
	require.Equal(t, versions(t, schema, "durable"),
		q(`SELECT version FROM "`+schema+`".durable_migration ORDER BY version`))
	require.Equal(t, versions(t, schema, "river"),
		q(`SELECT version FROM "`+schema+`".river_migration WHERE line = 'main' ORDER BY version`))
}

func TestUpCreatesTablesAndIsIdempotent(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	schema := newSchema(t, pool)
	ctx := t.Context()

	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)
	requireRecorded(t, pool, schema)
	before := tables(t, pool, schema)

	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)
	requireRecorded(t, pool, schema)
	require.Equal(t, before, tables(t, pool, schema))
}

func TestUpConcurrent(t *testing.T) {
	t.Parallel()
	const callers = 8
	pools := make([]*pgxpool.Pool, callers)
	for i := range pools {
		pools[i] = newPool(t)
	}
	schema := newSchema(t, pools[0])
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var wg sync.WaitGroup
	errs := make([]error, callers)
	start := make(chan struct{})
	for i, pool := range pools {
		wg.Go(func() {
			<-start
			errs[i] = migrate.Up(ctx, pool, schema)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "caller %d", i)
	}
	requireInstalled(t, pools[0], schema)
	requireRecorded(t, pools[0], schema)
}

func TestDownRemovesEverything(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	schema := newSchema(t, pool)
	ctx := t.Context()

	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)

	require.NoError(t, migrate.Down(ctx, pool, schema, true))
	require.Empty(t, tables(t, pool, schema))
	var leftovers int
	require.NoError(t, pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)
		     + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1)
		     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1)`,
		schema).Scan(&leftovers))
	require.Zero(t, leftovers, "objects left in schema %s after Down", schema)

	// Down twice is harmless, and Up starts over.
	require.NoError(t, migrate.Down(ctx, pool, schema, true))
	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)
	requireRecorded(t, pool, schema)
}

func TestDownKeepsRiver(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	schema := newSchema(t, pool)
	ctx := t.Context()

	require.NoError(t, migrate.Up(ctx, pool, schema))
	require.NoError(t, migrate.Down(ctx, pool, schema, false))
	got := tables(t, pool, schema)
	require.Contains(t, got, "river_job")
	for _, name := range append([]string{"durable_migration"}, durableTables...) {
		require.NotContains(t, got, name)
	}

	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)
	requireRecorded(t, pool, schema)
}

func TestInvalidSchemaRejected(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	for _, name := range []string{"Bad-Name", "x;drop", "1abc", strings.Repeat("a", 64)} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			err := migrate.Up(ctx, pool, name)
			require.ErrorContains(t, err, name)
			err = migrate.Down(ctx, pool, name, true)
			require.ErrorContains(t, err, name)
			_, err = migrate.Migrations(name)
			require.ErrorContains(t, err, name)
		})
	}
	// Once the subtests are done: nothing was created under those names.
	t.Cleanup(func() {
		var n int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_namespace WHERE nspname IN ('Bad-Name', 'x;drop')`).Scan(&n)
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

func TestMigrationsRendered(t *testing.T) {
	t.Parallel()
	all, err := migrate.Migrations("myschema")
	require.NoError(t, err)
	require.NotEmpty(t, all)

	// River's first, then the library's; versions ascending within a line.
	var lines []string
	for i, m := range all {
		if len(lines) == 0 || lines[len(lines)-1] != m.Line {
			lines = append(lines, m.Line)
		}
		if i > 0 && all[i-1].Line == m.Line {
			require.Greater(t, m.Version, all[i-1].Version, "%s versions out of order", m.Line)
		}
		require.NotEmpty(t, m.Name, "%s %d", m.Line, m.Version)
		for dir, sql := range map[string]string{"up": m.Up, "down": m.Down} {
			what := m.Line + " " + m.Name + " " + dir
			require.NotEmpty(t, strings.TrimSpace(sql), what)
			if !noOp(sql) {
				require.Contains(t, sql, `"myschema".`, what)
			}
			require.NotContains(t, sql, "{{schema}}", what)
			require.NotContains(t, sql, "TEMPLATE", what)
		}
	}
	require.Equal(t, []string{"river", "durable"}, lines)
	require.Equal(t, 1, all[0].Version)

	// The empty schema means the default one.
	def, err := migrate.Migrations("")
	require.NoError(t, err)
	require.Len(t, def, len(all))
	require.Contains(t, def[0].Up, `"durable".`)
}

// noOp reports whether sql changes nothing (River has a placeholder
// migration that is only "SELECT 1;"), so need not name the schema.
func noOp(sql string) bool {
	var stmts []string
	for line := range strings.Lines(sql) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "--") {
			stmts = append(stmts, line)
		}
	}
	return strings.Join(stmts, " ") == "SELECT 1;"
}

func TestMigrationsAppliedByHand(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	schema := newSchema(t, pool)
	ctx := t.Context()

	all, err := migrate.Migrations(schema)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE SCHEMA "`+schema+`"`)
	require.NoError(t, err)
	for _, m := range all {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, m.Up)
			return err
		})
		require.NoError(t, err, "up %s %03d_%s", m.Line, m.Version, m.Name)
	}
	got := tables(t, pool, schema)
	require.Contains(t, got, "river_job")
	for _, name := range durableTables {
		require.Contains(t, got, name)
	}
	// The files record their versions, so Check passes and Up finds
	// nothing left to do.
	require.NoError(t, migrate.Check(ctx, pool, schema))
	require.NoError(t, migrate.Up(ctx, pool, schema))

	// And the downs, in reverse order, take it all away again.
	for _, m := range slices.Backward(all) {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, m.Down)
			return err
		})
		require.NoError(t, err, "down %s %03d_%s", m.Line, m.Version, m.Name)
	}
	require.Empty(t, tables(t, pool, schema))
}

func TestUpWithAPoolOfOneConnection(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig(dbURL(t))
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	schema := newSchema(t, pool)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, migrate.Up(ctx, pool, schema))
	requireInstalled(t, pool, schema)
}

// requirePrefixed checks that err is one of this package's errors: it
// starts with "durable: " and contains every one of want.
func requirePrefixed(t *testing.T, err error, want ...string) {
	t.Helper()
	require.Error(t, err)
	require.True(t, strings.HasPrefix(err.Error(), "durable: "), "error without the durable: prefix: %v", err)
	for _, w := range want {
		require.Contains(t, err.Error(), w)
	}
}

func TestErrorsArePrefixed(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ctx := t.Context()

	t.Run("invalid schema name", func(t *testing.T) {
		const name = "Bad-Name"
		requirePrefixed(t, migrate.Up(ctx, pool, name), "durable: migrate: ", name)
		requirePrefixed(t, migrate.Down(ctx, pool, name, true), "durable: migrate: ", name)
		_, err := migrate.Migrations(name)
		requirePrefixed(t, err, "durable: migrate: ", name)
		err = migrate.Check(ctx, pool, name)
		requirePrefixed(t, err, "durable: migrate: ", name)
		require.NotErrorIs(t, err, migrate.ErrNotMigrated)
	})

	t.Run("closed pool", func(t *testing.T) {
		closed, err := pgxpool.New(ctx, dbURL(t))
		require.NoError(t, err)
		closed.Close()
		requirePrefixed(t, migrate.Up(ctx, closed, "m_closed"), `durable: migrate: schema "m_closed": `)
		requirePrefixed(t, migrate.Down(ctx, closed, "m_closed", true), `durable: migrate: schema "m_closed": `)
		err = migrate.Check(ctx, closed, "m_closed")
		requirePrefixed(t, err, `durable: migrate: schema "m_closed": `)
		require.NotErrorIs(t, err, migrate.ErrNotMigrated)
	})

	t.Run("nil pool", func(t *testing.T) {
		requirePrefixed(t, migrate.Up(ctx, nil, "m_nil"), `durable: migrate: schema "m_nil": `)
		requirePrefixed(t, migrate.Down(ctx, nil, "m_nil", false), `durable: migrate: schema "m_nil": `)
		requirePrefixed(t, migrate.Check(ctx, nil, "m_nil"), `durable: migrate: schema "m_nil": `)
	})

	t.Run("failing migration names its file", func(t *testing.T) {
		schema := newSchema(t, pool)
		// A table in the way of the first migration.
		_, err := pool.Exec(ctx, `CREATE SCHEMA "`+schema+`"; CREATE TABLE "`+schema+`".durable_function (x int)`)
		require.NoError(t, err)
		requirePrefixed(t, migrate.Up(ctx, pool, schema),
			fmt.Sprintf(`durable: migrate: schema %q: 001_schema.up.sql: `, schema), "already exists")
	})
}

func TestCheck(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	schema := newSchema(t, pool)
	ctx := t.Context()
	upHint := fmt.Sprintf("run migrate.Up(ctx, pool, %q) first", schema)

	requireNotMigrated := func(t *testing.T, want ...string) {
		t.Helper()
		err := migrate.Check(ctx, pool, schema)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		requirePrefixed(t, err, append([]string{fmt.Sprintf("durable: schema %q ", schema), upHint}, want...)...)
	}

	// No schema at all, then an empty schema.
	requireNotMigrated(t, "is not migrated")
	_, err := pool.Exec(ctx, `CREATE SCHEMA "`+schema+`"`)
	require.NoError(t, err)
	requireNotMigrated(t, "is not migrated")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, migrate.Check(ctx, pool, schema), &pgErr)

	// Migrated: nil, also through a connection and a transaction.
	require.NoError(t, migrate.Up(ctx, pool, schema))
	require.NoError(t, migrate.Check(ctx, pool, schema))
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	require.NoError(t, migrate.Check(ctx, conn.Conn(), schema))
	conn.Release()
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return migrate.Check(ctx, tx, schema)
	}))

	// The library's newest migration missing: "current" is the newest
	// embedded one, whatever its number.
	durable := versions(t, schema, "durable")
	latest := durable[len(durable)-1]
	river := versions(t, schema, "river")
	riverLatest := river[len(river)-1]
	// (Forgetting a version only in the records, as a schema that missed
	// it would look; the records are restored afterwards.)
	_, err = pool.Exec(ctx, `DELETE FROM "`+schema+`".durable_migration WHERE version = $1`, latest)
	require.NoError(t, err)
	previous := 0 // the version before the newest: none while there is one migration
	if len(durable) > 1 {
		previous = durable[len(durable)-2]
	}
	requireNotMigrated(t, "is not at the current version",
		fmt.Sprintf("durable version %d of %d", previous, latest),
		fmt.Sprintf("River version %d of %d", riverLatest, riverLatest))
	_, err = pool.Exec(ctx, `INSERT INTO "`+schema+`".durable_migration (version, name) VALUES ($1, 'x')`, latest)
	require.NoError(t, err)
	require.NoError(t, migrate.Check(ctx, pool, schema))

	// River's newest migration missing.
	_, err = pool.Exec(ctx, `DELETE FROM "`+schema+`".river_migration WHERE line = 'main' AND version = $1`, riverLatest)
	require.NoError(t, err)
	requireNotMigrated(t, fmt.Sprintf("durable version %d of %d", latest, latest),
		fmt.Sprintf("River version %d of %d", river[len(river)-2], riverLatest))
	_, err = pool.Exec(ctx, `INSERT INTO "`+schema+`".river_migration (line, version) VALUES ('main', $1)`, riverLatest)
	require.NoError(t, err)
	require.NoError(t, migrate.Check(ctx, pool, schema))

	// The library's tables gone, River's kept.
	require.NoError(t, migrate.Down(ctx, pool, schema, false))
	requireNotMigrated(t, "is not migrated", "durable_migration")
	require.NoError(t, migrate.Up(ctx, pool, schema))
	require.NoError(t, migrate.Check(ctx, pool, schema))
}
