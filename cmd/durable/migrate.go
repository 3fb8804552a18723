package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/migrate"
)

var migrateCmds = []*cmd{
	{path: "migrate up", summary: "create or upgrade River's and pgdurable's tables in the schema", run: migrateUp},
	{path: "migrate down", synopsis: "[--river]", summary: "drop pgdurable's tables (and River's with --river): data is lost", run: migrateDown},
	{path: "migrate sql", synopsis: "[--down]", summary: "print the migrations' SQL, in the order to apply them (needs no database)", run: migrateSQL},
}

func migrateUp(ctx context.Context, c *call) error {
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	pool, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrate.Up(ctx, pool, c.schema); err != nil {
		return err
	}
	return c.migrated("up", fmt.Sprintf("Schema %q is at the current version.", c.schema))
}

func migrateDown(ctx context.Context, c *call) error {
	river := c.fs.Bool("river", false, "also drop River's tables (leave them when River works other jobs in this schema)")
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	pool, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrate.Down(ctx, pool, c.schema, *river); err != nil {
		return err
	}
	what := "pgdurable's tables"
	if *river {
		what = "pgdurable's and River's tables"
	}
	return c.migrated("down", fmt.Sprintf("Dropped %s from schema %q.", what, c.schema))
}

// migrated reports a migration done.
func (c *call) migrated(direction, text string) error {
	if c.json {
		return writeJSON(c.stdout, struct {
			Schema    string `json:"schema"`
			Direction string `json:"direction"`
		}{c.schema, direction})
	}
	fmt.Fprintln(c.stdout, text)
	return nil
}

// migrationJSON is a migration as --json prints it.
type migrationJSON struct {
	Line    string `json:"line"`
	Version int    `json:"version"`
	Name    string `json:"name"`
	Up      string `json:"up"`
	Down    string `json:"down"`
}

func migrateSQL(_ context.Context, c *call) error {
	down := c.fs.Bool("down", false, "print the down migrations instead, newest first")
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	ms, err := migrate.Migrations(c.schema)
	if err != nil {
		return err
	}
	if c.json {
		out := struct {
			Schema     string          `json:"schema"`
			Migrations []migrationJSON `json:"migrations"`
		}{Schema: c.schema, Migrations: []migrationJSON{}}
		for _, m := range ms {
			out.Migrations = append(out.Migrations, migrationJSON{m.Line, m.Version, m.Name, m.Up, m.Down})
		}
		return writeJSON(c.stdout, out)
	}
	var b strings.Builder
	quoted := pgident.Quote(c.schema)
	if *down {
		fmt.Fprintf(&b, "-- pgdurable's down migrations for schema %q, newest first.\n\n", c.schema)
		for _, m := range slices.Backward(ms) {
			fmt.Fprintf(&b, "-- %s %03d: %s (down)\n%s\n", m.Line, m.Version, m.Name, withNewline(m.Down))
		}
		fmt.Fprintf(&b, "DROP SCHEMA IF EXISTS %s;\n", quoted)
	} else {
		fmt.Fprintf(&b, "-- pgdurable's migrations for schema %q: River's, then the library's, in order.\n"+
			"-- They do not record versions for migrate up: manage this schema with one or the other.\n\n", c.schema)
		fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n\n", quoted)
		for _, m := range ms {
			fmt.Fprintf(&b, "-- %s %03d: %s\n%s\n", m.Line, m.Version, m.Name, withNewline(m.Up))
		}
	}
	_, err = fmt.Fprint(c.stdout, b.String())
	return err
}

func withNewline(s string) string {
	if !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}
