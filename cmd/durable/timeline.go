package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

// defaultBarWidth is the width of the timeline's bars, in columns.
const defaultBarWidth = 40

// The marks a bar is drawn with.
const (
	markIdle    = ' ' // the step was not under way
	markRun     = '█' // the step's body ran (its attempts, and the backoffs between them)
	markWait    = '░' // sleeping, waiting for an event or a child run, or for the next attempt
	markFail    = '✗' // an attempt failed then
	markBeyond  = '▸' // the deadline (WakeAt) lies beyond the chart's end
	markMissing = '·' // the step was recorded before the chart's origin (a rerun's copied step)
)

// legend explains the marks under the timeline.
const legend = "█ ran  ░ slept, waited or backed off  ✗ failed attempt  ▸ deadline beyond the chart"

// chart maps times to the columns of a bar.
type chart struct {
	origin, end time.Time
	width       int
}

// col is the column of t: 0 at origin, width at end, clamped.
func (c chart) col(t time.Time) int {
	span := c.end.Sub(c.origin)
	if span <= 0 {
		return 0
	}
	n := int(float64(t.Sub(c.origin)) / float64(span) * float64(c.width))
	return max(0, min(n, c.width))
}

// paint marks the columns of [from, to] with m: at least one column, the
// one where from falls.
func (c chart) paint(bar []rune, from, to time.Time, m rune) {
	a, b := c.col(from), c.col(to)
	a = min(a, c.width-1)
	b = max(b, a+1)
	for i := a; i < b && i < len(bar); i++ {
		bar[i] = m
	}
}

// point marks the column of t with m.
func (c chart) point(bar []rune, t time.Time, m rune) {
	bar[min(c.col(t), c.width-1)] = m
}

// segment is the part of a run's time a step's bar covers.
type segment struct {
	from, to time.Time
	mark     rune // markRun or markWait
	// backoff is the wait after to for the next attempt of a retrying
	// step, until the chart's end.
	backoff bool
}

// waits reports whether a step of this kind spends its time waiting
// (sleep, wait, invoke) rather than running code.
func waits(kind string) bool {
	return kind == "sleep" || kind == "wait" || kind == "invoke"
}

// pending reports whether a step is still under way.
func pending(s durable.RunStep) bool {
	return s.Status == "sleeping" || s.Status == "waiting" || s.Status == "retrying" || s.Status == "running"
}

// segments computes every step's bar: a Step (or send) from the end of
// the step before it (the run's start, origin, for the first) to its last
// record; a sleep, wait or invoke from its first record to its last (or to
// the chart's end while it waits). A step recorded before origin (one a
// rerun copied from its original) ends at origin as far as the next step
// is concerned.
func segments(run *durable.Run, origin, end time.Time) []segment {
	prevEnd := origin
	out := make([]segment, len(run.Steps))
	for i, s := range run.Steps {
		var seg segment
		switch {
		case waits(s.Kind):
			seg = segment{from: s.FirstRecorded, to: s.LastRecorded, mark: markWait}
			if pending(s) {
				seg.to = end
			}
		default:
			from := prevEnd
			if from.After(s.FirstRecorded) {
				from = s.FirstRecorded
			}
			seg = segment{from: from, to: s.LastRecorded, mark: markRun, backoff: s.Status == "retrying"}
		}
		out[i] = seg
		prevEnd = s.LastRecorded
		if prevEnd.Before(origin) {
			prevEnd = origin
		}
	}
	return out
}

// drawTimeline prints one line per step (ID, kind, status, attempts, when
// it began relative to the run's start, how long it took, a bar
// proportional to time, and its deadline or child run), each failed
// attempt under its step with its error, then a legend.
func drawTimeline(w io.Writer, run *durable.Run, now time.Time, width int) {
	origin := run.CreatedAt
	if run.StartedAt != nil {
		origin = *run.StartedAt
	}
	end := now
	if run.EndedAt != nil {
		end = *run.EndedAt
	}
	for _, s := range run.Steps {
		if s.LastRecorded.After(end) {
			end = s.LastRecorded
		}
		for _, f := range s.Failures {
			if f.At.After(end) {
				end = f.At
			}
		}
	}
	segs := segments(run, origin, end)
	c := chart{origin: origin, end: end, width: width}

	t := newTable()
	t.row("STEP", "KIND", "STATUS", "TRIES", "AT", "TOOK", "|"+scaleHeader(end.Sub(origin), width)+"|", "")
	for i, s := range run.Steps {
		seg := segs[i]
		bar := []rune(strings.Repeat(string(markIdle), width))
		if seg.to.Before(origin) {
			// Recorded before this run began: a step a rerun copied.
			bar[0] = markMissing
		} else {
			c.paint(bar, seg.from, seg.to, seg.mark)
			if seg.backoff && end.After(seg.to) {
				c.paint(bar, seg.to, end, markWait)
			}
			for _, f := range s.Failures {
				if !f.At.Before(origin) {
					c.point(bar, f.At, markFail)
				}
			}
			if s.WakeAt != nil && pending(s) && s.WakeAt.After(end) {
				bar[width-1] = markBeyond
			}
		}
		at := "-"
		if !seg.from.Before(origin) {
			at = "+" + fmtDuration(seg.from.Sub(origin))
		}
		dur := fmtDuration(seg.to.Sub(seg.from))
		if pending(s) {
			dur += "…"
		}
		if seg.to.Before(origin) {
			dur = "-"
		}
		note := stepNote(s, now)
		if seg.to.Before(origin) && run.RerunOf != "" {
			note = "copied from run " + run.RerunOf
		}
		t.row(s.ID, s.Kind, s.Status, strconv.Itoa(s.Attempts), at, dur, "|"+string(bar)+"|", note)
		for _, f := range s.Failures {
			when := fmtTime(f.At)
			if !f.At.Before(origin) {
				when = "+" + fmtDuration(f.At.Sub(origin))
			}
			prefix := fmt.Sprintf("    %c attempt %d failed at %s: ", markFail, f.Attempt, when)
			t.line(prefix + indentLines(f.Error, strings.Repeat(" ", len([]rune(prefix)))))
		}
		if len(s.Failures) == 0 && s.Error != "" {
			t.line("    error: " + indentLines(s.Error, "           "))
		}
	}
	t.write(w)
	fmt.Fprintf(w, "\n%s\n", legend)
}

// scaleHeader is the bar column's header: the chart's span, e.g.
// "0 ………… 1.5s", padded to width.
func scaleHeader(span time.Duration, width int) string {
	right := fmtDuration(span)
	left := "0"
	fill := width - len(left) - len([]rune(right)) - 2
	if fill < 1 {
		return fmt.Sprintf("%-*s", width, right)
	}
	return left + " " + strings.Repeat("-", fill) + " " + right
}

// stepNote says what a step waits for and until when, or which run it
// invoked.
func stepNote(s durable.RunStep, now time.Time) string {
	var parts []string
	if s.WakeAt != nil && pending(s) {
		what := "until"
		switch {
		case s.Status == "retrying":
			what = "next attempt"
		case s.Kind == "wait" || s.Kind == "invoke":
			what = "times out"
		case s.Kind == "sleep":
			what = "wakes"
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", what, fmtTime(*s.WakeAt), fmtAge(*s.WakeAt, now)))
	} else if pending(s) && (s.Kind == "wait" || s.Kind == "invoke") {
		parts = append(parts, "no timeout")
	}
	if s.ChildRunID != "" {
		parts = append(parts, "child run "+s.ChildRunID)
	}
	return strings.Join(parts, "; ")
}
