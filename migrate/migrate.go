// Package migrate creates and upgrades the tables pgdurable needs: River's
// job tables and the library's own (functions, events, runs, steps,
// workers), all in one Postgres schema.
//
// Call [Up] at start-up from as many processes as you like: migrations run
// in one transaction under an advisory lock, so concurrent callers wait for
// each other and the second finds nothing left to do.
//
// Teams that manage their schema with golang-migrate, goose or atlas can take
// the SQL from [Migrations] instead (or run `go run
// github.com/pgdurable/durable/cmd/durable-migrate -schema durable -out DIR`)
// and never call Up.
//
// [Check] tells whether a schema is at the current version, and fails
// with an error wrapping [ErrNotMigrated] when it is not.
//
// Every error of this package starts with "durable: " and names the schema
// (and the migration file, for a migration that fails).
package migrate

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/internal/riverbridge"
)

// quietLogger drops River's migrator's info logs ("no migrations to
// apply" on every start).
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

//go:embed sql/*.sql
var sqlFS embed.FS

// Migration is one numbered migration with its up and down SQL, rendered for
// a schema.
type Migration struct {
	// Line is "river" for River's own migrations and "durable" for the
	// library's.
	Line    string
	Version int
	Name    string
	Up      string
	Down    string

	// upFile and downFile name the embedded files of the library's
	// migrations, for error messages.
	upFile, downFile string
}

// errorf returns an error of this package about schema: "durable: migrate:
// schema "X": " followed by the formatted message.
func errorf(schema, format string, args ...any) error {
	return fmt.Errorf("durable: migrate: schema %q: "+format, append([]any{schema}, args...)...)
}

// checkSchema validates a schema name ("" means the default schema).
func checkSchema(schema string) (string, error) {
	s, err := pgident.Schema(schema)
	if err != nil {
		return "", fmt.Errorf("durable: migrate: %w", err)
	}
	return s, nil
}

// Up brings River's tables and the library's tables to the current version.
// It is idempotent and safe to call from several processes at once.
func Up(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	schema, err := checkSchema(schema)
	if err != nil {
		return err
	}
	if pool == nil {
		return errorf(schema, "nil pool")
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return err
	}
	// Serialise concurrent callers (per schema) with a session advisory
	// lock held on one connection, and do all the work on that connection
	// (a pool of one connection works). River's migrations commit one by
	// one (some add enum values, which must commit before use), so the lock
	// cannot be a transaction's.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return errorf(schema, "acquire a connection: %w", err)
	}
	unlocked := false
	defer func() {
		if !unlocked {
			// The lock could not be released: never return a connection
			// that holds it to the pool.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, pgident.Render(`SELECT pg_advisory_lock(hashtext('{{schema}}'), hashtext('durable/migrate'))`, schema)); err != nil {
		return errorf(schema, "lock: %w", err)
	}
	defer func() {
		_, err := conn.Exec(context.WithoutCancel(ctx), pgident.Render(`SELECT pg_advisory_unlock(hashtext('{{schema}}'), hashtext('durable/migrate'))`, schema))
		unlocked = err == nil
	}()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgident.Quote(schema)); err != nil {
		return errorf(schema, "create schema: %w", err)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
	if err != nil {
		return errorf(schema, "River migrator: %w", err)
	}
	for {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return errorf(schema, "begin: %w", err)
		}
		res, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{MaxSteps: 1})
		if err != nil {
			_ = tx.Rollback(ctx)
			return errorf(schema, "River migrations: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return errorf(schema, "River migrations: commit: %w", err)
		}
		if len(res.Versions) == 0 {
			break
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return errorf(schema, "begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, pgident.Render(`CREATE TABLE IF NOT EXISTS {{schema}}.durable_migration (
		version integer PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`, schema)); err != nil {
		return errorf(schema, "create durable_migration: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, pgident.Render(`SELECT version FROM {{schema}}.durable_migration`, schema))
	if err != nil {
		return errorf(schema, "read durable_migration: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return errorf(schema, "read durable_migration: %w", err)
	}
	for _, v := range versions {
		applied[v] = true
	}
	for _, m := range ours {
		if applied[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, m.Up); err != nil {
			return errorf(schema, "%s: %w", m.upFile, err)
		}
		if _, err := tx.Exec(ctx, pgident.Render(`INSERT INTO {{schema}}.durable_migration (version, name) VALUES ($1, $2)`, schema), m.Version, m.Name); err != nil {
			return errorf(schema, "%s: record version: %w", m.upFile, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return errorf(schema, "commit: %w", err)
	}
	return nil
}

// Down removes the library's tables (and River's, when withRiver is true)
// from schema. Data is lost. It is meant for tests and uninstalls.
func Down(ctx context.Context, pool *pgxpool.Pool, schema string, withRiver bool) error {
	schema, err := checkSchema(schema)
	if err != nil {
		return err
	}
	if pool == nil {
		return errorf(schema, "nil pool")
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return errorf(schema, "begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, pgident.Render(`SELECT pg_advisory_xact_lock(hashtext('{{schema}}'), hashtext('durable/migrate'))`, schema)); err != nil {
		return errorf(schema, "lock: %w", err)
	}
	for i := len(ours) - 1; i >= 0; i-- {
		if _, err := tx.Exec(ctx, ours[i].Down); err != nil {
			return errorf(schema, "%s: %w", ours[i].downFile, err)
		}
	}
	if _, err := tx.Exec(ctx, pgident.Render(`DROP TABLE IF EXISTS {{schema}}.durable_migration`, schema)); err != nil {
		return errorf(schema, "drop durable_migration: %w", err)
	}
	if withRiver {
		migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
		if err != nil {
			return errorf(schema, "River migrator: %w", err)
		}
		if _, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{TargetVersion: -1}); err != nil {
			return errorf(schema, "River migrations down: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return errorf(schema, "commit: %w", err)
	}
	return nil
}

// Migrations returns every migration, River's first and then the
// library's, with SQL rendered for schema, in the order they must be
// applied. Use it to feed golang-migrate, goose or atlas. The schema itself
// must exist (CREATE SCHEMA) before the first one runs.
func Migrations(schema string) ([]Migration, error) {
	schema, err := checkSchema(schema)
	if err != nil {
		return nil, err
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(nil), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
	if err != nil {
		return nil, errorf(schema, "River migrator: %w", err)
	}
	var out []Migration
	prefix := pgident.Quote(schema) + "."
	for _, m := range migrator.AllVersions() {
		// Record versions as migrate.Up and River do, so that Up later
		// finds a schema built from these files up to date.
		record := "\n" + riverbridge.RecordMigrationSQL(schema, m.Version) + ";\n"
		forget := fmt.Sprintf("\nDELETE FROM %sriver_migration WHERE line = '%s' AND version = %d;\n", prefix, riverbridge.MigrationLine, m.Version)
		if m.Version < riverbridge.MigrationLineVersion { // the line column arrives with it
			forget = fmt.Sprintf("\nDELETE FROM %sriver_migration WHERE version = %d;\n", prefix, m.Version)
		}
		down := riverbridge.RenderMigration(m.SQLDown, schema)
		if m.Version > 1 { // version 1's down drops the table itself
			down = forget + down
		}
		out = append(out, Migration{
			Line:    "river",
			Version: m.Version,
			Name:    m.Name,
			Up:      riverbridge.RenderMigration(m.SQLUp, schema) + record,
			Down:    down,
		})
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return nil, err
	}
	for i := range ours {
		m := &ours[i]
		m.Up += pgident.Render(fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS {{schema}}.durable_migration (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO {{schema}}.durable_migration (version, name) VALUES (%d, '%s') ON CONFLICT DO NOTHING;
`, m.Version, m.Name), schema)
		m.Down = pgident.Render(fmt.Sprintf("DELETE FROM {{schema}}.durable_migration WHERE version = %d;\n", m.Version), schema) + m.Down
		if i == 0 {
			m.Down += pgident.Render("\nDROP TABLE IF EXISTS {{schema}}.durable_migration;\n", schema)
		}
	}
	return append(out, ours...), nil
}

// durableMigrations returns the library's migrations, rendered for schema,
// in version order.
func durableMigrations(schema string) ([]Migration, error) {
	entries, err := fs.ReadDir(sqlFS, "sql")
	if err != nil {
		return nil, fmt.Errorf("durable: migrate: reading the embedded migrations: %w", err)
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		name := e.Name()
		base, dir, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), ".")
		if !ok || (dir != "up" && dir != "down") {
			return nil, fmt.Errorf("durable: migrate: bad migration file name %q", name)
		}
		num, label, ok := strings.Cut(base, "_")
		if !ok {
			return nil, fmt.Errorf("durable: migrate: bad migration file name %q", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("durable: migrate: bad migration number in %q", name)
		}
		body, err := sqlFS.ReadFile(path.Join("sql", name))
		if err != nil {
			return nil, fmt.Errorf("durable: migrate: reading %s: %w", name, err)
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Line: "durable", Version: v, Name: label}
			byVersion[v] = m
		}
		if dir == "up" {
			m.Up, m.upFile = pgident.Render(string(body), schema), name
		} else {
			m.Down, m.downFile = pgident.Render(string(body), schema), name
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.Up == "" || m.Down == "" {
			return nil, fmt.Errorf("durable: migrate: migration %03d_%s lacks an up or a down file", m.Version, m.Name)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// ErrNotMigrated is wrapped by the errors of [Check] that mean the schema
// lacks the tables or some migrations: run [Up] (or apply [Migrations]
// with your migration tool) first. Test for it with errors.Is.
var ErrNotMigrated = errors.New("durable: schema not migrated")

// notMigratedError is Check's error for a schema that is not at the
// current version. It wraps ErrNotMigrated and, when the tables are
// missing, the database error that said so.
type notMigratedError struct {
	msg   string
	cause error
}

func (e *notMigratedError) Error() string { return e.msg }

func (e *notMigratedError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrNotMigrated}
	}
	return []error{ErrNotMigrated, e.cause}
}

// Querier runs a query returning one row: a *pgxpool.Pool, *pgx.Conn or
// pgx.Tx. It is what [Check] needs.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// riverLatest returns the newest version of River's migrations.
var riverLatest = sync.OnceValues(func() (int, error) {
	migrator, err := rivermigrate.New(riverpgxv5.New(nil), &rivermigrate.Config{Logger: quietLogger})
	if err != nil {
		return 0, err
	}
	latest := 0
	for _, m := range migrator.AllVersions() {
		latest = max(latest, m.Version)
	}
	return latest, nil
})

// Check reports whether schema ("" for the default schema) holds River's
// and the library's tables at the current version: every one of the
// library's embedded migrations recorded in durable_migration, and River's
// newest migration recorded in river_migration. It returns nil when they
// are, and otherwise an error wrapping [ErrNotMigrated] that names the
// schema and says to run Up, e.g.
//
//	durable: schema "app" is not migrated (relation "app.durable_migration" does not exist): run migrate.Up(ctx, pool, "app") first
//	durable: schema "app" is not at the current version (durable version 2 of 3, River version 6 of 6): run migrate.Up(ctx, pool, "app") first
//
// A schema at a newer version than this library knows passes. Other
// failures (the database cannot be reached, an invalid schema name) are
// returned as errors that do not wrap ErrNotMigrated.
//
// Check runs one query. On a schema without the tables that query fails,
// which aborts the transaction when db is a pgx.Tx; pass a pool or a
// connection unless that is what you want.
func Check(ctx context.Context, db Querier, schema string) error {
	schema, err := checkSchema(schema)
	if err != nil {
		return err
	}
	if db == nil {
		return errorf(schema, "check: nil database handle")
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return err
	}
	riverWant, err := riverLatest()
	if err != nil {
		return errorf(schema, "River migrator: %w", err)
	}
	// River's table has a line column from its version 5 on; to_jsonb
	// reads it without naming it, so that older tables work too.
	var durableHave []int32
	var riverHave int
	err = db.QueryRow(ctx, pgident.Render(`SELECT
		(SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM {{schema}}.durable_migration),
		(SELECT coalesce(max(version), 0) FROM {{schema}}.river_migration r
		  WHERE coalesce(to_jsonb(r)->>'line', 'main') = 'main')`, schema)).Scan(&durableHave, &riverHave)
	if err != nil {
		var pg *pgconn.PgError
		if errors.As(err, &pg) && (pg.Code == "42P01" || pg.Code == "3F000") { // undefined table, schema
			return &notMigratedError{
				msg: fmt.Sprintf("durable: schema %q is not migrated (%s): run migrate.Up(ctx, pool, %q) first",
					schema, pg.Message, schema),
				cause: err,
			}
		}
		return errorf(schema, "check: %w", err)
	}
	applied := make(map[int]bool, len(durableHave))
	for _, v := range durableHave {
		applied[int(v)] = true
	}
	// The schema is at durable version N when migrations up to N are all
	// applied.
	durableAt, durableWant, complete := 0, 0, true
	for _, m := range ours {
		durableWant = m.Version
		if !applied[m.Version] {
			complete = false
		}
		if complete {
			durableAt = m.Version
		}
	}
	if complete && riverHave >= riverWant {
		return nil
	}
	return &notMigratedError{
		msg: fmt.Sprintf("durable: schema %q is not at the current version (durable version %d of %d, River version %d of %d): run migrate.Up(ctx, pool, %q) first",
			schema, durableAt, durableWant, min(riverHave, riverWant), riverWant, schema),
	}
}
