package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/pgident"
	"github.com/pgdurable/durable/migrate"
)

// defaultDatabaseURL is the server tried when neither --database-url nor
// DATABASE_URL is set: the local one with trust auth, as the examples
// use.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// connectTimeout bounds the first connection.
const connectTimeout = 10 * time.Second

// connect opens a pool on the database and checks that it answers.
func (a *app) connect(ctx context.Context) (*pgxpool.Pool, error) {
	url := a.databaseURL
	if url == "" {
		url = defaultDatabaseURL
		fmt.Fprintf(a.stderr, "durable: neither --database-url nor DATABASE_URL is set; trying %s\n", defaultDatabaseURL)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("%s: %v", a.urlName(), err)}
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.urlName(), err)
	}
	pctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
		if a.urlSource == "" {
			return nil, fmt.Errorf("cannot connect to Postgres at %s (the default: set --database-url or DATABASE_URL): %w", where, err)
		}
		return nil, fmt.Errorf("cannot connect to Postgres at %s (from %s): %w", where, a.urlSource, err)
	}
	return pool, nil
}

// urlName names where the database URL came from.
func (a *app) urlName() string {
	if a.urlSource == "" {
		return "default database URL"
	}
	return a.urlSource
}

// client connects and builds a client without functions: it sends events
// and reads, cancels and reruns runs, and needs no Start. close releases
// both.
func (a *app) client(ctx context.Context) (client *durable.Client, close func(), err error) {
	pool, err := a.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	client, err = durable.NewClient(pool, &durable.Config{Schema: a.schema, Logger: logger})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return client, pool.Close, nil
}

// migrateUpHint matches the library's advice for an unmigrated schema,
// which speaks to Go programs.
var migrateUpHint = regexp.MustCompile(`run migrate\.Up\(ctx, pool, "[^"]*"\) first`)

// message is the text printed for a command's runtime error: the
// library's message without its "durable: " prefix (the command's own
// prefix names the program), with advice for the terminal.
func (a *app) message(err error) string {
	msg := err.Error()
	if errors.Is(err, migrate.ErrNotMigrated) {
		cmd := "durable migrate up"
		if a.schema != pgident.DefaultSchema {
			cmd = "durable --schema " + a.schema + " migrate up"
		}
		hint := "run '" + cmd + "' first"
		if loc := migrateUpHint.FindStringIndex(msg); loc != nil {
			// What follows the advice is the wrapped errors again.
			msg = msg[:loc[0]] + hint
		} else {
			msg += "\n" + hint
		}
	}
	for strings.HasPrefix(msg, "durable: ") {
		msg = strings.TrimPrefix(msg, "durable: ")
	}
	return msg
}

// notFound rewrites an error wrapping durable.ErrRunNotFound as
// `run "ID" not found`; other errors pass unchanged.
func notFound(err error, runID string) error {
	if errors.Is(err, durable.ErrRunNotFound) {
		return fmt.Errorf("run %q not found", runID)
	}
	return err
}
