// Command durable-migrate writes the SQL migrations that pgdurable needs
// (River's job tables, then the library's own tables) as files for an
// external migration tool, for teams that manage their schema with
// golang-migrate, goose or atlas instead of calling migrate.Up at start-up.
//
// Usage:
//
//	go run github.com/pgdurable/durable/cmd/durable-migrate -schema durable -out db/migrations
//	go run github.com/pgdurable/durable/cmd/durable-migrate -format goose -out db/migrations
//
// Flags:
//
//	-schema NAME   Postgres schema the tables go in (default "durable"); it must
//	               match Config.Schema of the client.
//	-out DIR       directory to write to (required; created when missing).
//	-format FMT    "golang-migrate" (default) or "goose".
//
// With -format golang-migrate it writes one NNNN_line_name.up.sql and one
// NNNN_line_name.down.sql file per migration, numbered consecutively from
// 0000_create_schema (CREATE SCHEMA IF NOT EXISTS / DROP SCHEMA), then
// River's migrations (line "river"), then the library's (line "durable"),
// e.g. 0001_river_create_river_migration.up.sql, ..., 0009_durable_schema.up.sql.
//
// With -format goose it writes one NNNNN_line_name.sql file per migration with
// "-- +goose Up" and "-- +goose Down" sections, numbered from
// 00001_create_schema (goose reserves version 0). Each section is a single
// StatementBegin/StatementEnd block, because River's SQL defines PL/pgSQL
// functions whose bodies contain semicolons.
//
// The files carry the SQL only. They do not record versions in River's
// river_migration or the library's durable_migration tables, so a schema
// built from them must keep being managed by the external tool: do not also
// call migrate.Up (or River's own migrator) on it.
//
// When upgrading pgdurable, re-run the command into a fresh directory and
// compare: the numbers are positions in the combined list, so files stay the
// same as long as migrations are only added at the end (the library's), but a
// new River migration shifts the numbers of the library's migrations after
// it, and those must then be renumbered by hand past the ones already applied.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/migrate"
)

// The output formats that -format accepts.
const (
	formatGolangMigrate = "golang-migrate"
	formatGoose         = "goose"
)

func main() {
	schema := flag.String("schema", pgident.DefaultSchema, "Postgres schema for River's and pgdurable's tables")
	out := flag.String("out", "", "directory to write the migration files to (required)")
	format := flag.String("format", formatGolangMigrate, `output format: "golang-migrate" or "goose"`)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(),
			"Usage: durable-migrate -out DIR [-schema NAME] [-format golang-migrate|goose]\n\n"+
				"Writes pgdurable's (and River's) SQL migrations as files for golang-migrate or goose.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := write(*out, *schema, *format); err != nil {
		fmt.Fprintln(os.Stderr, "durable-migrate:", err)
		os.Exit(1)
	}
}

// file is one migration file to write.
type file struct {
	name    string
	content string
}

// write renders every migration for schema in the given format and writes
// the files into dir, creating dir when needed.
func write(dir, schema, format string) error {
	if dir == "" {
		return errors.New("no output directory")
	}
	schema, err := pgident.Schema(schema)
	if err != nil {
		return err
	}
	migrations, err := migrate.Migrations(schema)
	if err != nil {
		return err
	}
	all := append([]migrate.Migration{{
		Line: "",
		Name: "create schema",
		Up:   "CREATE SCHEMA IF NOT EXISTS " + pgident.Quote(schema) + ";\n",
		Down: "DROP SCHEMA IF EXISTS " + pgident.Quote(schema) + ";\n",
	}}, migrations...)

	var files []file
	switch format {
	case formatGolangMigrate:
		files = golangMigrateFiles(all, schema)
	case formatGoose:
		files = gooseFiles(all, schema)
	default:
		return fmt.Errorf("unknown format %q: use %q or %q", format, formatGolangMigrate, formatGoose)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// golangMigrateFiles numbers the migrations from 0 and renders an up and a
// down file for each.
func golangMigrateFiles(all []migrate.Migration, schema string) []file {
	var files []file
	for i, m := range all {
		base := fmt.Sprintf("%04d_%s", i, fileLabel(m))
		files = append(files,
			file{base + ".up.sql", header(m, schema) + ensureNewline(m.Up)},
			file{base + ".down.sql", header(m, schema) + ensureNewline(m.Down)},
		)
	}
	return files
}

// gooseFiles numbers the migrations from 1 (goose reserves version 0) and
// renders one file with Up and Down sections for each.
func gooseFiles(all []migrate.Migration, schema string) []file {
	var files []file
	for i, m := range all {
		var b strings.Builder
		b.WriteString(header(m, schema))
		b.WriteString("-- +goose Up\n-- +goose StatementBegin\n")
		b.WriteString(ensureNewline(m.Up))
		b.WriteString("-- +goose StatementEnd\n\n-- +goose Down\n-- +goose StatementBegin\n")
		b.WriteString(ensureNewline(m.Down))
		b.WriteString("-- +goose StatementEnd\n")
		files = append(files, file{fmt.Sprintf("%05d_%s.sql", i+1, fileLabel(m)), b.String()})
	}
	return files
}

// fileLabel is the part of a file name after the number: the line and the
// migration's name, in lower case with anything but letters and digits
// turned into underscores.
func fileLabel(m migrate.Migration) string {
	label := m.Name
	if m.Line != "" {
		label = m.Line + "_" + m.Name
	}
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(label) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	return strings.Trim(b.String(), "_")
}

// header is the comment at the top of every file, saying where it came from.
func header(m migrate.Migration, schema string) string {
	what := "creates the schema"
	if m.Line != "" {
		what = fmt.Sprintf("%s migration %03d (%s)", m.Line, m.Version, m.Name)
	}
	return fmt.Sprintf("-- Generated by durable-migrate for schema %q: %s.\n-- Do not edit; re-run durable-migrate instead.\n\n", schema, what)
}

func ensureNewline(s string) string {
	if !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}
