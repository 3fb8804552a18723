package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
)

// barOf returns the bar drawn on the line of step id.
func barOf(t *testing.T, out, id string) string {
	t.Helper()
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, id+" ") {
			i := strings.Index(line, "|")
			j := strings.LastIndex(line, "|")
			require.Greater(t, j, i, line)
			return line[i+1 : j]
		}
	}
	t.Fatalf("no line for step %q in:\n%s", id, out)
	return ""
}

// TestTimelineProportional draws a finished run on a 20-column chart
// spanning 10s: each column is half a second.
func TestTimelineProportional(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ended := at(10)
	run := &durable.Run{ID: "r1", FunctionID: "f", Status: durable.RunCompleted, CreatedAt: t0, StartedAt: &t0, EndedAt: &ended,
		Steps: []durable.RunStep{
			// Ran from the start to 2s.
			{ID: "fetch", Kind: "step", Status: "completed", Attempts: 1, FirstRecorded: at(2), LastRecorded: at(2)},
			// Failed at 3s, retried, completed at 4s: it ran from 2s (the previous step's end).
			{ID: "charge", Kind: "step", Status: "completed", Attempts: 2, FirstRecorded: at(3), LastRecorded: at(4),
				Failures: []durable.StepFailure{{Attempt: 1, Error: "card declined\nretry later", At: at(3)}}},
			// Slept from 5s to 9s.
			{ID: "nap", Kind: "sleep", Status: "completed", Attempts: 1, FirstRecorded: at(5), LastRecorded: at(9)},
			{ID: "done", Kind: "step", Status: "completed", Attempts: 1, FirstRecorded: at(10), LastRecorded: at(10)},
		}}
	var b strings.Builder
	drawTimeline(&b, run, ended, 20)
	out := b.String()
	require.Equal(t, "████                ", barOf(t, out, "fetch"))
	require.Equal(t, "    ██✗█            ", barOf(t, out, "charge"))
	require.Equal(t, "          ░░░░░░░░  ", barOf(t, out, "nap"))
	require.Equal(t, "                  ██", barOf(t, out, "done"))
	require.Contains(t, out, "✗ attempt 1 failed at +3.0s: card declined\n")
	// A multi-line error stays under its attempt, indented.
	require.Contains(t, out, "\n"+strings.Repeat(" ", 33)+"retry later\n")
	require.Contains(t, out, "|0 -------------- 10s|")
	// Columns line up: every bar starts at the same column.
	var cols []int
	for line := range strings.Lines(out) {
		if i := strings.Index(line, "|"); i >= 0 {
			cols = append(cols, len([]rune(line[:i])))
		}
	}
	require.Len(t, cols, 5)
	for _, c := range cols {
		require.Equal(t, cols[0], c)
	}
}

// TestTimelinePending draws a run asleep with its deadline beyond the
// chart, and a retrying step's backoff.
func TestTimelinePending(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	now := at(10)
	wake := at(3600)
	run := &durable.Run{ID: "r1", FunctionID: "f", Status: durable.RunRunning, CreatedAt: t0, StartedAt: &t0,
		Steps: []durable.RunStep{
			{ID: "fetch", Kind: "step", Status: "completed", Attempts: 1, FirstRecorded: at(2), LastRecorded: at(2)},
			{ID: "nap", Kind: "sleep", Status: "sleeping", Attempts: 1, FirstRecorded: at(2), LastRecorded: at(2), WakeAt: &wake},
		}}
	var b strings.Builder
	drawTimeline(&b, run, now, 10)
	out := b.String()
	require.Equal(t, "██        ", barOf(t, out, "fetch"))
	require.Equal(t, "  ░░░░░░░▸", barOf(t, out, "nap"))
	require.Contains(t, out, "wakes "+fmtTime(wake)+" (in 59m50s)")

	retry := at(12)
	run = &durable.Run{ID: "r2", FunctionID: "f", Status: durable.RunRunning, CreatedAt: t0, StartedAt: &t0,
		Steps: []durable.RunStep{
			{ID: "flaky", Kind: "step", Status: "retrying", Attempts: 1, FirstRecorded: at(5), LastRecorded: at(5), WakeAt: &retry,
				Failures: []durable.StepFailure{{Attempt: 1, Error: "boom", At: at(5)}}},
		}}
	b.Reset()
	drawTimeline(&b, run, now, 10)
	out = b.String()
	// Ran until its failure at 5s, backing off since, next attempt beyond the chart.
	require.Equal(t, "█████✗░░░▸", barOf(t, out, "flaky"))
	require.Contains(t, out, "next attempt "+fmtTime(retry)+" (in 2.0s)")
	require.Contains(t, out, "✗ attempt 1 failed at +5.0s: boom")
}

// TestTimelineRerun: the steps a rerun copied were recorded before it
// began; the step after them runs from the rerun's start.
func TestTimelineRerun(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ended := at(4)
	run := &durable.Run{ID: "r2", FunctionID: "f", Status: durable.RunCompleted, CreatedAt: t0, StartedAt: &t0, EndedAt: &ended, RerunOf: "r1",
		Steps: []durable.RunStep{
			{ID: "a", Kind: "step", Status: "completed", Attempts: 1, FirstRecorded: at(-60), LastRecorded: at(-60)},
			{ID: "b", Kind: "step", Status: "completed", Attempts: 1, FirstRecorded: at(2), LastRecorded: at(2)},
		}}
	var b strings.Builder
	drawTimeline(&b, run, ended, 8)
	out := b.String()
	require.Equal(t, "·       ", barOf(t, out, "a"))
	require.Contains(t, lineOf(t, out, "a "), "copied from run r1")
	require.Equal(t, "████    ", barOf(t, out, "b"))
	require.Regexp(t, `^b +step +completed +1 +\+0s +2\.0s `, lineOf(t, out, "b "))
}

func TestFmtDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0:                                 "0s",
		500 * time.Microsecond:            "500µs",
		12 * time.Millisecond:             "12ms",
		1500 * time.Millisecond:           "1.5s",
		42 * time.Second:                  "42s",
		3*time.Minute + 12*time.Second:    "3m12s",
		5*time.Hour + 3*time.Minute:       "5h03m",
		50 * time.Hour:                    "2d02h",
		-(3*time.Minute + 12*time.Second): "-3m12s",
	} {
		require.Equal(t, want, fmtDuration(d), d.String())
	}
}

func TestParseSince(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"30m":                  now.Add(-30 * time.Minute),
		"7d":                   now.Add(-7 * 24 * time.Hour),
		"1d12h":                now.Add(-36 * time.Hour),
		"2026-01-09T00:00:00Z": now.Add(-24 * time.Hour),
	} {
		got, err := parseSince(in, now)
		require.NoError(t, err, in)
		require.True(t, want.Equal(got), "%s: %s", in, got)
	}
	for _, in := range []string{"", "3x", "-5m", "0s", "d", "7dd"} {
		_, err := parseSince(in, now)
		require.Error(t, err, in)
	}
}
