// Package testdb finds the Postgres server that tests, examples and
// benchmarks use, the same way everywhere:
//
//  1. TEST_DATABASE_URL, then DATABASE_URL, when set;
//  2. else the local server at 127.0.0.1:5432 (trust auth), when it answers;
//  3. else a throwaway Postgres container through testcontainers-go, when
//     Docker is available;
//  4. else a clear error saying what to set.
package testdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// localCandidates are tried, in order, when no URL is set.
var localCandidates = []string{
	"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
	"postgres://127.0.0.1:5432/postgres?sslmode=disable",
}

var (
	once     sync.Once
	foundURL string
	foundErr error
)

// URL returns a connection string for a reachable Postgres server.
func URL(ctx context.Context) (string, error) {
	once.Do(func() { foundURL, foundErr = find(ctx) })
	return foundURL, foundErr
}

func find(ctx context.Context) (string, error) {
	for _, env := range []string{"TEST_DATABASE_URL", "DATABASE_URL"} {
		if u := strings.TrimSpace(os.Getenv(env)); u != "" {
			if err := ping(ctx, u); err != nil {
				return "", fmt.Errorf("%s is set but Postgres does not answer there: %w", env, err)
			}
			return u, nil
		}
	}
	var errs []error
	for _, u := range localCandidates {
		err := ping(ctx, u)
		if err == nil {
			return u, nil
		}
		errs = append(errs, err)
	}
	u, err := container(ctx)
	if err == nil {
		return u, nil
	}
	errs = append(errs, err)
	return "", fmt.Errorf("no Postgres found: set TEST_DATABASE_URL (or DATABASE_URL) to a Postgres 14+ URL, "+
		"run one on 127.0.0.1:5432 with trust auth, or make Docker available; tried: %w", errors.Join(errs...))
}

func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// container starts a Postgres container when Docker is available. It is
// replaced by a testcontainers-go implementation in container.go.
var container = func(ctx context.Context) (string, error) {
	return "", errors.New("testcontainers: no Docker available")
}
