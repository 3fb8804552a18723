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
}

// Up brings River's tables and the library's tables to the current version.
// It is idempotent and safe to call from several processes at once.
func Up(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	schema, err := pgident.Schema(schema)
	if err != nil {
		return err
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
		return fmt.Errorf("migrate: acquire: %w", err)
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
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('pgdurable.migrate.' || $1::text))`, schema); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		_, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('pgdurable.migrate.' || $1::text))`, schema)
		unlocked = err == nil
	}()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgident.Quote(schema)); err != nil {
		return fmt.Errorf("migrate: create schema %s: %w", schema, err)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
	if err != nil {
		return fmt.Errorf("migrate: river migrator: %w", err)
	}
	for {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("migrate: begin: %w", err)
		}
		res, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{MaxSteps: 1})
		if err != nil {
			_ = tx.Rollback(ctx)
			return fmt.Errorf("migrate: river migrations: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("migrate: river migrations: %w", err)
		}
		if len(res.Versions) == 0 {
			break
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, pgident.Render(`CREATE TABLE IF NOT EXISTS {{schema}}.durable_migration (
		version integer PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`, schema)); err != nil {
		return fmt.Errorf("migrate: migration table: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, pgident.Render(`SELECT version FROM {{schema}}.durable_migration`, schema))
	if err != nil {
		return fmt.Errorf("migrate: read versions: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return fmt.Errorf("migrate: read versions: %w", err)
	}
	for _, v := range versions {
		applied[v] = true
	}
	for _, m := range ours {
		if applied[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, m.Up); err != nil {
			return fmt.Errorf("migrate: durable %03d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, pgident.Render(`INSERT INTO {{schema}}.durable_migration (version, name) VALUES ($1, $2)`, schema), m.Version, m.Name); err != nil {
			return fmt.Errorf("migrate: record %03d: %w", m.Version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// Down removes the library's tables (and River's, when withRiver is true)
// from schema. Data is lost. It is meant for tests and uninstalls.
func Down(ctx context.Context, pool *pgxpool.Pool, schema string, withRiver bool) error {
	schema, err := pgident.Schema(schema)
	if err != nil {
		return err
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('pgdurable.migrate.' || $1::text))`, schema); err != nil {
		return err
	}
	for i := len(ours) - 1; i >= 0; i-- {
		if _, err := tx.Exec(ctx, ours[i].Down); err != nil {
			return fmt.Errorf("migrate: down %03d_%s: %w", ours[i].Version, ours[i].Name, err)
		}
	}
	if _, err := tx.Exec(ctx, pgident.Render(`DROP TABLE IF EXISTS {{schema}}.durable_migration`, schema)); err != nil {
		return err
	}
	if withRiver {
		migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
		if err != nil {
			return err
		}
		if _, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{TargetVersion: -1}); err != nil {
			return fmt.Errorf("migrate: river down: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// Migrations returns every migration, River's first and then the
// library's, with SQL rendered for schema, in the order they must be
// applied. Use it to feed golang-migrate, goose or atlas. The schema itself
// must exist (CREATE SCHEMA) before the first one runs.
func Migrations(schema string) ([]Migration, error) {
	schema, err := pgident.Schema(schema)
	if err != nil {
		return nil, err
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(nil), &rivermigrate.Config{Schema: schema, Logger: quietLogger})
	if err != nil {
		return nil, err
	}
	var out []Migration
	prefix := pgident.Quote(schema) + "."
	for _, m := range migrator.AllVersions() {
		// Record versions as migrate.Up and River do, so that Up later
		// finds a schema built from these files up to date.
		record := fmt.Sprintf("\nINSERT INTO %sriver_migration (line, version) VALUES ('main', %d) ON CONFLICT DO NOTHING;\n", prefix, m.Version)
		forget := fmt.Sprintf("\nDELETE FROM %sriver_migration WHERE line = 'main' AND version = %d;\n", prefix, m.Version)
		if m.Version < 5 { // the line column arrives with version 5
			record = fmt.Sprintf("\nINSERT INTO %sriver_migration (version) VALUES (%d) ON CONFLICT DO NOTHING;\n", prefix, m.Version)
			forget = fmt.Sprintf("\nDELETE FROM %sriver_migration WHERE version = %d;\n", prefix, m.Version)
		}
		down := strings.ReplaceAll(m.SQLDown, "/* TEMPLATE: schema */", prefix)
		if m.Version > 1 { // version 1's down drops the table itself
			down = forget + down
		}
		out = append(out, Migration{
			Line:    "river",
			Version: m.Version,
			Name:    m.Name,
			Up:      strings.ReplaceAll(m.SQLUp, "/* TEMPLATE: schema */", prefix) + record,
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

func durableMigrations(schema string) ([]Migration, error) {
	entries, err := fs.ReadDir(sqlFS, "sql")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		name := e.Name()
		base, dir, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), ".")
		if !ok || (dir != "up" && dir != "down") {
			return nil, fmt.Errorf("migrate: bad migration file name %q", name)
		}
		num, label, ok := strings.Cut(base, "_")
		if !ok {
			return nil, fmt.Errorf("migrate: bad migration file name %q", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migrate: bad migration number in %q", name)
		}
		body, err := sqlFS.ReadFile(path.Join("sql", name))
		if err != nil {
			return nil, err
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Line: "durable", Version: v, Name: label}
			byVersion[v] = m
		}
		if dir == "up" {
			m.Up = pgident.Render(string(body), schema)
		} else {
			m.Down = pgident.Render(string(body), schema)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.Up == "" || m.Down == "" {
			return nil, errors.New("migrate: migration " + strconv.Itoa(m.Version) + " lacks an up or a down file")
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}
