package main

import (
	"context"
	"testing"
	"time"
)

// TestExample runs the example end to end: it must finish without error.
func TestExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx); err != nil {
		t.Fatal(err)
	}
}
