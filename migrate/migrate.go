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
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/pgdurable/durable/internal/pgident"
)

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
	// lock held on one connection. River's migrations run one transaction
	// each (some add enum values, which must commit before use), so the
	// lock cannot be a transaction's.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: acquire: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('pgdurable.migrate.' || $1::text))`, schema); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('pgdurable.migrate.' || $1::text))`, schema)
	}()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgident.Quote(schema)); err != nil {
		return fmt.Errorf("migrate: create schema %s: %w", schema, err)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema})
	if err != nil {
		return fmt.Errorf("migrate: river migrator: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: river migrations: %w", err)
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
		migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema})
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
	migrator, err := rivermigrate.New(riverpgxv5.New(nil), &rivermigrate.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	var out []Migration
	prefix := pgident.Quote(schema) + "."
	for _, m := range migrator.AllVersions() {
		out = append(out, Migration{
			Line:    "river",
			Version: m.Version,
			Name:    m.Name,
			Up:      strings.ReplaceAll(m.SQLUp, "/* TEMPLATE: schema */", prefix),
			Down:    strings.ReplaceAll(m.SQLDown, "/* TEMPLATE: schema */", prefix),
		})
	}
	ours, err := durableMigrations(schema)
	if err != nil {
		return nil, err
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
