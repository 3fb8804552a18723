package ui

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

// runsFilter is the runs page's filter as the form holds it.
type runsFilter struct {
	Function string
	Status   []string
	Q        string // CEL over event and output
	Since    string // "", "15m", "1h", "24h", "7d", "30d"
	After    string
	Before   string
}

// Has reports whether status is selected (for the checkboxes).
func (f runsFilter) Has(status durable.RunStatus) bool {
	return slices.Contains(f.Status, string(status))
}

// query is the filter as URL parameters (and extra key, value pairs).
func (f runsFilter) query(extra ...string) url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("function", f.Function)
	for _, s := range f.Status {
		q.Add("status", s)
	}
	set("q", f.Q)
	set("since", f.Since)
	set("after", f.After)
	set("before", f.Before)
	for i := 0; i+1 < len(extra); i += 2 {
		set(extra[i], extra[i+1])
	}
	return q
}

var sinceChoices = []struct{ Value, Label string }{
	{"", "any time"}, {"15m", "last 15 minutes"}, {"1h", "last hour"}, {"24h", "last 24 hours"}, {"7d", "last 7 days"}, {"30d", "last 30 days"},
}

func parseSince(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		t, err := time.ParseDuration(d + "h")
		return 24 * t, err
	}
	return time.ParseDuration(s)
}

// parseTime reads a time from a form: datetime-local (taken as UTC),
// RFC 3339 or a date.
func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, strings.TrimSpace(s), time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("want a time such as 2026-01-02T15:04 (UTC) or RFC 3339")
}

// runFilter turns the form into a RunFilter; problems are reported, the
// rest of the filter still applies.
func (s *server) runFilter(f runsFilter) (durable.RunFilter, []string) {
	rf := durable.RunFilter{FunctionID: f.Function, If: f.Q}
	var errs []string
	for _, st := range f.Status {
		rf.Status = append(rf.Status, durable.RunStatus(st))
	}
	if f.Since != "" {
		d, err := parseSince(f.Since)
		if err != nil || d <= 0 {
			errs = append(errs, "since "+f.Since+": want a duration such as 1h or 7d")
		} else {
			rf.CreatedAfter = s.now().Add(-d)
		}
	}
	if f.After != "" {
		t, err := parseTime(f.After)
		if err != nil {
			errs = append(errs, "after "+f.After+": "+err.Error())
		} else {
			rf.CreatedAfter = t
		}
	}
	if f.Before != "" {
		t, err := parseTime(f.Before)
		if err != nil {
			errs = append(errs, "before "+f.Before+": "+err.Error())
		} else {
			rf.CreatedBefore = t
		}
	}
	return rf, errs
}

type runsData struct {
	Filter     runsFilter
	Functions  []string
	Statuses   []durable.RunStatus
	Since      any
	Runs       []*durable.Run
	NextURL    string
	FirstURL   string
	Counts     []statusCount
	CountTotal int64
	Estimated  bool
	Counting   bool
	CountErr   string
	CountedAt  time.Time
	CancelURL  string
	Now        time.Time
}

func (s *server) runsPage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.Query()
	f := runsFilter{Function: strings.TrimSpace(q.Get("function")), Status: q["status"], Q: strings.TrimSpace(q.Get("q")),
		Since: q.Get("since"), After: q.Get("after"), Before: q.Get("before")}
	p := s.newPage(r, "Runs", "runs")
	p.Refresh = 5
	d := &runsData{Filter: f, Since: sinceChoices, Now: s.now()}
	p.Data = d
	ctx := r.Context()

	rf, errs := s.runFilter(f)
	rf.Cursor = q.Get("cursor")
	status := http.StatusOK
	page, err := s.client.ListRuns(ctx, rf)
	if err != nil {
		if ctx.Err() != nil {
			s.failErr(w, r, err)
			return
		}
		// A filter that does not compile, a bad cursor: the page says so.
		errs = append(errs, strings.TrimPrefix(err.Error(), "durable: "))
		status = http.StatusBadRequest
	} else {
		d.Runs = page.Runs
		if page.Next != "" {
			d.NextURL = s.path("/") + "?" + f.query("cursor", page.Next, "payloads", q.Get("payloads")).Encode()
		}
	}
	if rf.Cursor != "" {
		d.FirstURL = s.path("/") + "?" + f.query("payloads", q.Get("payloads")).Encode()
	}
	if len(errs) > 0 {
		p.Error = strings.Join(errs, "\n")
		if status == http.StatusOK {
			status = http.StatusBadRequest
		}
	}

	d.Statuses = slices.Clone(statusOrder[:5])
	if fns, err := s.client.Functions(ctx); err == nil {
		for _, fn := range fns {
			d.Functions = append(d.Functions, fn.ID)
		}
	}
	if f.Function != "" && !slices.Contains(d.Functions, f.Function) {
		d.Functions = append(d.Functions, f.Function)
	}
	counts, at, cerr := s.counts.get(ctx, f.Function, countWait)
	switch {
	case counts != nil:
		d.Counts, d.CountTotal, d.Estimated = countList(counts), counts.Total, counts.Estimated
		d.CountedAt = at
		for _, c := range d.Counts {
			if !slices.Contains(d.Statuses, c.Status) {
				d.Statuses = append(d.Statuses, c.Status)
			}
		}
	case cerr != nil:
		d.CountErr = cerr.Error()
	default:
		d.Counting = true
	}
	if !s.opts.ReadOnly && f.Function != "" {
		d.CancelURL = s.path("/cancel-many") + "?" + f.query().Encode()
	}
	p.Elapsed = time.Since(start)
	s.render(w, r, status, "runs", p)
}

type runData struct {
	Run      *durable.Run
	Events   []*durable.EventInfo
	Timeline *timeline
	Duration string
	Children []string
	Live     bool
	Notice   string
	// RerunFrom is the step the rerun-from form offers first: the first
	// that did not complete.
	RerunFrom string
	// Phase is what a live run is doing: "sleeping", "waiting" or
	// "retrying" (one of its steps is), else "".
	Phase string
}

func (s *server) runPage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := r.PathValue("id")
	ctx := r.Context()
	run, err := s.client.GetRun(ctx, id)
	if err != nil {
		if errors.Is(err, durable.ErrRunNotFound) {
			s.fail(w, r, http.StatusNotFound, "Run "+id+" not found: no run has this ID (or it was pruned).")
			return
		}
		s.failErr(w, r, err)
		return
	}
	events, err := s.client.RunEvents(ctx, id)
	if err != nil && !errors.Is(err, durable.ErrRunNotFound) {
		s.failErr(w, r, err)
		return
	}
	p := s.newPage(r, "Run "+run.ID, "runs")
	now := s.now()
	d := &runData{Run: run, Events: events, Timeline: buildTimeline(run, now), Live: !run.Status.Done()}
	switch r.URL.Query().Get("done") {
	case "cancelled":
		d.Notice = "Cancellation requested."
	case "rerun":
		d.Notice = "This run is a rerun of " + run.RerunOf + "."
	}
	if run.EndedAt != nil {
		d.Duration = formatDuration(run.EndedAt.Sub(run.CreatedAt))
	} else {
		d.Duration = formatDuration(now.Sub(run.CreatedAt)) + " so far"
	}
	for _, st := range run.Steps {
		if d.RerunFrom == "" && st.Status != "completed" {
			d.RerunFrom = st.ID
		}
		if d.Live && liveStep(st.Status) {
			d.Phase = st.Status
		}
		if st.ChildRunID != "" {
			d.Children = append(d.Children, st.ChildRunID)
		}
	}
	if d.Live {
		p.Refresh = 2
	}
	p.Data = d
	p.Elapsed = time.Since(start)
	s.render(w, r, http.StatusOK, "run", p)
}

type eventsData struct {
	Name     string
	NoRuns   bool
	Events   []*durable.EventInfo
	NextURL  string
	FirstURL string
}

func (s *server) eventsPage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.Query()
	p := s.newPage(r, "Events", "events")
	p.Refresh = 5
	d := &eventsData{Name: strings.TrimSpace(q.Get("name")), NoRuns: q.Get("noruns") == "1"}
	p.Data = d
	ef := durable.EventFilter{Name: d.Name, NoRuns: d.NoRuns, Cursor: q.Get("cursor")}
	noruns := ""
	if d.NoRuns {
		noruns = "1"
	}
	status := http.StatusOK
	page, err := s.client.ListEvents(r.Context(), ef)
	if err != nil {
		if r.Context().Err() != nil {
			s.failErr(w, r, err)
			return
		}
		p.Error = strings.TrimPrefix(err.Error(), "durable: ")
		status = http.StatusBadRequest
	} else {
		d.Events = page.Events
		if page.Next != "" {
			d.NextURL = s.pathq("/events", "name", d.Name, "noruns", noruns, "cursor", page.Next, "payloads", q.Get("payloads"))
		}
	}
	if ef.Cursor != "" {
		d.FirstURL = s.pathq("/events", "name", d.Name, "noruns", noruns, "payloads", q.Get("payloads"))
	}
	p.Elapsed = time.Since(start)
	s.render(w, r, status, "events", p)
}

type functionRow struct {
	durable.FunctionInfo
	Counts    []statusCount
	Estimated bool
	Counting  bool
}

func (s *server) functionsPage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p := s.newPage(r, "Functions", "functions")
	p.Refresh = 10
	fns, err := s.client.Functions(r.Context())
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	rows := make([]functionRow, len(fns))
	// Counts come from the cache: the page waits for them once, at most
	// countWait in all.
	deadline := time.Now().Add(countWait)
	for i, fn := range fns {
		rows[i].FunctionInfo = fn
		c, _, _ := s.counts.get(r.Context(), fn.ID, time.Until(deadline))
		if c == nil {
			rows[i].Counting = true
			continue
		}
		rows[i].Counts, rows[i].Estimated = countList(c), c.Estimated
	}
	p.Data = rows
	p.Elapsed = time.Since(start)
	s.render(w, r, http.StatusOK, "functions", p)
}

// detached is ctx's values without its cancellation, bounded by d: an
// action once started is finished even if the browser goes away.
func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}
