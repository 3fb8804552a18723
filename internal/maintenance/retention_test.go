package maintenance

import (
	"testing"
	"time"
)

func TestBatchSizeHalvesAndGrowsBackGradually(t *testing.T) {
	b := newBatchSize(2000)
	var got []int
	for range 12 {
		b.timedOut()
		got = append(got, b.n)
	}
	want := []int{1000, 500, 250, 125, 62, 31, 15, 7, 3, 1, 1, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("after timeouts: got %v, want %v", got, want)
		}
	}
	// Back from one row: by at least one, then a quarter more per batch,
	// never past the maximum.
	steps := 0
	prev := b.n
	for b.n < 2000 {
		b.succeeded()
		steps++
		if b.n <= prev || b.n > max(prev+prev/4, prev+1) {
			t.Fatalf("step %d: %d -> %d is not gradual growth", steps, prev, b.n)
		}
		prev = b.n
	}
	if steps < 10 || steps > 60 {
		t.Fatalf("grew back to the maximum in %d batches", steps)
	}
	b.succeeded()
	if b.n != 2000 {
		t.Fatalf("grew past the maximum: %d", b.n)
	}
}

func TestCategoryFrontier(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := category{keep: time.Hour}
	if _, full := c.start(now); !full {
		t.Fatal("a first sweep reads from the start")
	}
	c.finished(now.Add(-time.Hour), now, true)
	later := now.Add(time.Minute)
	from, full := c.start(later)
	if full || !from.at.Equal(now.Add(-time.Hour-frontierMargin)) {
		t.Fatalf("next sweep: from %v full %v", from.at, full)
	}
	c.finished(later.Add(-time.Hour), later, false)
	if _, full := c.start(now.Add(fullSweepEvery)); !full {
		t.Fatal("a full sweep every fullSweepEvery")
	}
}
