package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// table aligns rows of cells in columns, like text/tabwriter, and also
// holds free lines (a step's failed attempts under it) that take no part
// in the alignment, which tabwriter cannot do: a line with fewer cells
// ends its column blocks, and the rows around it stop lining up.
type table struct {
	lines []tableLine
}

type tableLine struct {
	cells []string // a row
	text  string   // a free line, when cells is nil
}

func newTable() *table { return &table{} }

// row adds a row of cells.
func (t *table) row(cells ...string) {
	if cells == nil {
		cells = []string{}
	}
	t.lines = append(t.lines, tableLine{cells: cells})
}

// line adds a free line, printed as it is.
func (t *table) line(text string) {
	t.lines = append(t.lines, tableLine{text: text})
}

// write prints the table: columns separated by two spaces, the last cell
// of a row unpadded. Widths count runes (the timeline's bars are
// multi-byte).
func (t *table) write(w io.Writer) {
	var widths []int
	for _, l := range t.lines {
		for i, c := range l.cells {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, l := range t.lines {
		if l.cells == nil {
			b.WriteString(l.text)
			b.WriteByte('\n')
			continue
		}
		var row strings.Builder
		for i, c := range l.cells {
			row.WriteString(c)
			if i < len(l.cells)-1 {
				row.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		b.WriteString(strings.TrimRight(row.String(), " "))
		b.WriteByte('\n')
	}
	_, _ = io.WriteString(w, b.String())
}

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// timeLayout is how times are shown to people.
const timeLayout = "2006-01-02 15:04:05 MST"

// fmtTime shows t in the local time zone, to the second.
func fmtTime(t time.Time) string { return t.Local().Format(timeLayout) }

// fmtDuration shows d compactly: 850µs, 12ms, 1.5s, 3m12s, 5h3m, 2d4h.
func fmtDuration(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	var s string
	switch {
	case d == 0:
		s = "0s"
	case d < time.Millisecond:
		s = fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		s = fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		s = fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		s = fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		s = fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
	return neg + s
}

// fmtAge shows how long ago t was: "3m12s ago", or "in 5s" for a time to
// come.
func fmtAge(t, now time.Time) string {
	if t.After(now) {
		return "in " + fmtDuration(t.Sub(now))
	}
	return fmtDuration(now.Sub(t)) + " ago"
}

// oneLine keeps the first line of s, at most n runes of it, marking what
// was cut with "…".
func oneLine(s string, n int) string {
	s = strings.TrimSpace(s)
	cut := false
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s, cut = strings.TrimSpace(s[:i]), true
	}
	if utf8.RuneCountInString(s) > n {
		s, cut = string([]rune(s)[:n-1]), true
	}
	if cut {
		s += "…"
	}
	return s
}

// orDash shows "" as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
