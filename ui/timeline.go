package ui

import (
	"time"

	"github.com/pgdurable/durable"
)

// timeline is a run's steps laid out on one time axis: a bar per step
// (from when it began to when it ended, or to now), the part of a sleep,
// wait or retry still to come up to its deadline, and a mark per failed
// attempt. Positions are percentages of the axis.
type timeline struct {
	Start, End time.Time
	Rows       []tlRow
	// Now is the position of the present, when it is on the axis.
	Now    float64
	HasNow bool
	// Ticks label the axis.
	Ticks []tlTick
	// The run's own row: queued from its creation to its start (or now),
	// then started until it ended (or now).
	QueuedWidth, RunLeft, RunWidth float64
	Started                        bool
}

type tlRow struct {
	Step        durable.RunStep
	Index       int
	Began       time.Time
	Left, Width float64
	// Pending is the part up to the deadline (WakeAt), still to come.
	Pending             bool
	PendLeft, PendWidth float64
	Clipped             bool // the deadline is past the axis's end
	Marks               []tlMark
	Took                time.Duration
	Live                bool
	DeadlineWord        string // "wakes", "times out", "retries"
	Deadline            *time.Time
}

type tlMark struct {
	Left    float64
	Failure durable.StepFailure
}

type tlTick struct {
	Left  float64
	Label string
}

// live step statuses: the step has a deadline ahead of it.
func liveStep(status string) bool {
	return status == "sleeping" || status == "waiting" || status == "retrying"
}

func buildTimeline(run *durable.Run, now time.Time) *timeline {
	t := &timeline{Start: run.CreatedAt, End: now}
	if run.EndedAt != nil {
		t.End = *run.EndedAt
	}
	for _, s := range run.Steps {
		if s.LastRecorded.After(t.End) {
			t.End = s.LastRecorded
		}
	}
	// Deadlines ahead stretch the axis, at most doubling it: a ten-year
	// wait must not squash the rest into a line.
	span := max(t.End.Sub(t.Start), time.Second)
	limit := t.End.Add(span)
	for _, s := range run.Steps {
		if liveStep(s.Status) && s.WakeAt != nil && s.WakeAt.After(t.End) {
			t.End = minTime(*s.WakeAt, limit)
		}
	}
	if !t.End.After(t.Start) {
		t.End = t.Start.Add(time.Millisecond)
	}
	pos := func(at time.Time) float64 {
		f := float64(at.Sub(t.Start)) / float64(t.End.Sub(t.Start)) * 100
		return min(max(f, 0), 100)
	}
	prevEnd := run.CreatedAt
	if run.StartedAt != nil {
		prevEnd = *run.StartedAt
	}
	for i, s := range run.Steps {
		row := tlRow{Step: s, Index: i, Live: liveStep(s.Status)}
		began := s.FirstRecorded
		if s.Kind == "step" || s.Kind == "send" {
			// FirstRecorded is when its first attempt ended: it ran since
			// the step before it ended (or the run started).
			if prevEnd.Before(began) {
				began = prevEnd
			}
		}
		end := s.LastRecorded
		if row.Live {
			end = maxTime(now, s.FirstRecorded)
		}
		row.Began, row.Took = began, end.Sub(began)
		row.Left = pos(began)
		row.Width = max(pos(end)-row.Left, 0.4)
		if row.Left+row.Width > 100 {
			row.Left = 100 - row.Width
		}
		if row.Live && s.WakeAt != nil {
			row.Pending, row.Deadline = true, s.WakeAt
			row.PendLeft = pos(end)
			row.PendWidth = max(pos(*s.WakeAt)-row.PendLeft, 0)
			row.Clipped = s.WakeAt.After(t.End)
			switch s.Status {
			case "sleeping":
				row.DeadlineWord = "wakes"
			case "waiting":
				row.DeadlineWord = "times out"
			default:
				row.DeadlineWord = "next attempt"
			}
		} else if s.WakeAt != nil && s.Kind != "step" {
			row.Deadline = s.WakeAt
			row.DeadlineWord = "deadline"
		}
		for _, f := range s.Failures {
			row.Marks = append(row.Marks, tlMark{Left: pos(f.At), Failure: f})
		}
		if !row.Live && s.LastRecorded.After(prevEnd) {
			prevEnd = s.LastRecorded
		}
		t.Rows = append(t.Rows, row)
	}
	runEnd := now
	if run.EndedAt != nil {
		runEnd = *run.EndedAt
	}
	if run.StartedAt != nil {
		t.Started = true
		t.QueuedWidth = pos(*run.StartedAt)
		t.RunLeft = t.QueuedWidth
		t.RunWidth = max(pos(runEnd)-t.RunLeft, 0.4)
	} else {
		t.QueuedWidth = max(pos(runEnd), 0.4)
	}
	if now.After(t.Start) && now.Before(t.End) {
		t.HasNow, t.Now = true, pos(now)
	}
	for _, f := range []float64{0, 25, 50, 75, 100} {
		at := t.Start.Add(time.Duration(float64(t.End.Sub(t.Start)) * f / 100))
		label := "+" + formatDuration(at.Sub(t.Start))
		if f == 0 {
			label = at.UTC().Format("15:04:05")
		}
		t.Ticks = append(t.Ticks, tlTick{Left: f, Label: label})
	}
	return t
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
