package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestExample runs the example end to end: it must finish without error.
// It works in a schema of its own, dropped afterwards, so that it runs
// beside other packages' tests and a `go run` of the example.
func TestExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := os.Getenv("TEST_DATABASE_URL") // the test suite's server first
	if url == "" {
		url = databaseURL()
	}
	schema := fmt.Sprintf("%s_test_%08x", exampleSchema, rand.Uint32())
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Logf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	if err := run(ctx, url, schema); err != nil {
		t.Fatal(err)
	}
}
