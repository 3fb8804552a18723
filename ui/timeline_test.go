package ui

import (
	"testing"
	"time"

	"github.com/pgdurable/durable"
)

func TestTimelineLaysOutStepsAttemptsAndDeadlines(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ptr := func(t time.Time) *time.Time { return &t }
	wake := at(10 * 365 * 86400) // a sleep of ten years
	run := &durable.Run{
		ID: "r", Status: durable.RunRunning, CreatedAt: at(0), StartedAt: ptr(at(10)),
		Steps: []durable.RunStep{
			// A Step's first attempt ended at 30: it began when the run started.
			{ID: "fetch", Kind: "step", Status: "completed", Attempts: 3, FirstRecorded: at(30), LastRecorded: at(50),
				Failures: []durable.StepFailure{{Attempt: 1, Error: "e1", At: at(30)}, {Attempt: 2, Error: "e2", At: at(40)}}},
			{ID: "nap", Kind: "sleep", Status: "sleeping", FirstRecorded: at(50), LastRecorded: at(50), WakeAt: &wake},
		},
	}
	tl := buildTimeline(run, at(100))
	// The axis: 0 to 100s, doubled for the deadline ahead (capped).
	if !tl.Start.Equal(at(0)) || !tl.End.Equal(at(200)) {
		t.Fatalf("axis %s to %s, want 0s to 200s", tl.Start, tl.End)
	}
	fetch, nap := tl.Rows[0], tl.Rows[1]
	if !fetch.Began.Equal(at(10)) || fetch.Left != 5 || fetch.Width != 20 {
		t.Fatalf("fetch began %s at %.1f%% for %.1f%%, want 10s at 5%% for 20%%", fetch.Began, fetch.Left, fetch.Width)
	}
	if len(fetch.Marks) != 2 || fetch.Marks[0].Left != 15 || fetch.Marks[1].Left != 20 || fetch.Marks[1].Failure.Error != "e2" {
		t.Fatalf("fetch's failed attempts: %+v", fetch.Marks)
	}
	if fetch.Pending || fetch.Live {
		t.Fatal("a completed step has nothing pending")
	}
	// The sleep: from 50s to now (100s), then pending up to its deadline,
	// off the chart.
	if nap.Left != 25 || nap.Width != 25 || !nap.Pending || nap.PendLeft != 50 || nap.PendWidth != 50 || !nap.Clipped {
		t.Fatalf("sleep row: %+v", nap)
	}
	if nap.DeadlineWord != "wakes" || !nap.Deadline.Equal(wake) {
		t.Fatalf("sleep deadline: %s %v", nap.DeadlineWord, nap.Deadline)
	}
	if !tl.HasNow || tl.Now != 50 {
		t.Fatalf("now at %.1f%% (%v), want 50%%", tl.Now, tl.HasNow)
	}
	if tl.QueuedWidth != 5 || tl.RunLeft != 5 || tl.RunWidth != 45 {
		t.Fatalf("run row: queued %.1f%%, started at %.1f%% for %.1f%%", tl.QueuedWidth, tl.RunLeft, tl.RunWidth)
	}
}

func TestFormatCount(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%d) = %q, want %q", n, got, want)
		}
	}
}
