package ui

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
)

// fakeCounts counts calls and answers estimates, slowly when told.
type fakeCounts struct {
	calls atomic.Int64
	delay time.Duration
}

func (f *fakeCounts) count(ctx context.Context, fn string) (*durable.RunCounts, error) {
	f.calls.Add(1)
	time.Sleep(f.delay) // the count's own duration, as the test sets it
	return &durable.RunCounts{ByStatus: map[durable.RunStatus]int64{"completed": 1234567, "failed": 89}, Total: 1234656, Estimated: true}, nil
}

func TestCountsAreCachedAndEstimatesMarked(t *testing.T) {
	env := durabletest.New(t)
	s, err := newServer(env.Client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeCounts{}
	var mu sync.Mutex
	now := time.Now()
	s.counts.count = fake.count
	s.counts.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }

	body := func() string {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	b := body()
	for _, want := range []string{"completed <b>≈1,234,567</b>", "failed <b>≈89</b>", "total ≈1,234,656 (estimated)"} {
		if !strings.Contains(b, want) {
			t.Fatalf("runs page lacks %q", want)
		}
	}
	// Within the TTL: no new count.
	for range 5 {
		body()
	}
	if n := fake.calls.Load(); n != 1 {
		t.Fatalf("%d counts for 6 views within the TTL, want 1", n)
	}
	// Past it: the page shows the old counts and refreshes them behind.
	mu.Lock()
	now = now.Add(countTTL + time.Second)
	mu.Unlock()
	fake.delay = time.Second
	t0 := time.Now()
	if b := body(); !strings.Contains(b, "≈1,234,567") {
		t.Fatal("stale counts not shown while refreshing")
	}
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("a page with stale counts waited %s for the refresh", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for fake.calls.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d counts, want a background refresh", fake.calls.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling a counter, bounded by the deadline
	}
	// A first count slower than countWait: the page does not wait for it.
	t0 = time.Now()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/?function=other", nil))
	if d := time.Since(t0); d > countWait+500*time.Millisecond {
		t.Fatalf("page waited %s for a slow first count", d)
	}
	if !strings.Contains(rec.Body.String(), "counting runs…") {
		t.Fatal("page without counts yet does not say they are being counted")
	}
}
