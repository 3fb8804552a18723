package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/expr"
)

var runsCmds = []*cmd{
	{path: "runs list", synopsis: "[--function F] [--status S] [--since DURATION] [--if CEL] [--limit N] [--cursor C]",
		summary: "list runs, newest first", run: runsList},
	{path: "runs show", synopsis: "ID", summary: "show a run and its step timeline", run: runsShow},
	{path: "runs cancel", synopsis: "ID", summary: "cancel a run", run: runsCancel},
	{path: "runs rerun", synopsis: "ID [--from-step STEP]", summary: "rerun a run, from the top or from a step", run: runsRerun},
}

// runStatuses are the statuses --status accepts.
var runStatuses = []durable.RunStatus{durable.RunQueued, durable.RunRunning, durable.RunCompleted, durable.RunFailed, durable.RunCancelled, durable.RunSkipped}

// statusList is --status: comma-separated, repeatable.
type statusList []durable.RunStatus

func (s *statusList) String() string {
	var parts []string
	for _, st := range *s {
		parts = append(parts, string(st))
	}
	return strings.Join(parts, ",")
}

func (s *statusList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		st := durable.RunStatus(strings.ToLower(part))
		if !slices.Contains(runStatuses, st) {
			return fmt.Errorf("%q is not a run status (want %s)", part, statusNames())
		}
		if !slices.Contains(*s, st) {
			*s = append(*s, st)
		}
	}
	return nil
}

func statusNames() string {
	var names []string
	for _, s := range runStatuses {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

// parseSince reads --since: a duration (Go's syntax, plus days: "7d",
// "1d12h") or an RFC 3339 time. It returns the time runs must be created
// after.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := parseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%q: want a positive duration such as 30m, 24h or 7d, or an RFC 3339 time", s)
	}
	return now.Add(-d), nil
}

// parseDuration is time.ParseDuration with a leading number of days
// ("7d", "2d12h").
func parseDuration(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil {
			return 0, err
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	return days + d, err
}

// checkIf compiles --if as ListRuns will, so that a bad expression is a
// usage error naming the flag, found before connecting.
func checkIf(src string) error {
	if strings.TrimSpace(src) == "" {
		return nil
	}
	p, err := expr.Compile(src, expr.EventAndOutput)
	if err != nil {
		return err
	}
	if !p.OutputIsBoolOrDyn() {
		return errors.New("it does not evaluate to a bool")
	}
	return nil
}

// runJSON is a run as --json prints it.
type runJSON struct {
	ID          string          `json:"id"`
	FunctionID  string          `json:"function_id"`
	Status      string          `json:"status"`
	EventIDs    []string        `json:"event_ids"`
	Output      json.RawMessage `json:"output,omitempty"`
	Error       string          `json:"error,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	StartedAt   *time.Time      `json:"started_at,omitempty"`
	EndedAt     *time.Time      `json:"ended_at,omitempty"`
	ParentRunID string          `json:"parent_run_id,omitempty"`
	RerunOf     string          `json:"rerun_of,omitempty"`
	// Reruns and Steps are filled by runs show.
	Reruns []string   `json:"reruns,omitempty"`
	Steps  []stepJSON `json:"steps,omitempty"`
}

// stepJSON is a run's step as --json prints it.
type stepJSON struct {
	ID            string                `json:"id"`
	Kind          string                `json:"kind"`
	Status        string                `json:"status"`
	Attempts      int                   `json:"attempts"`
	Output        json.RawMessage       `json:"output,omitempty"`
	Error         string                `json:"error,omitempty"`
	ChildRunID    string                `json:"child_run_id,omitempty"`
	FirstRecorded time.Time             `json:"first_recorded"`
	LastRecorded  time.Time             `json:"last_recorded"`
	WakeAt        *time.Time            `json:"wake_at,omitempty"`
	Failures      []durable.StepFailure `json:"failures,omitempty"`
}

func toRunJSON(r *durable.Run) runJSON {
	out := runJSON{ID: r.ID, FunctionID: r.FunctionID, Status: string(r.Status), EventIDs: r.EventIDs, Output: r.Output,
		Error: r.Error, CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, EndedAt: r.EndedAt, ParentRunID: r.ParentRunID, RerunOf: r.RerunOf}
	if out.EventIDs == nil {
		out.EventIDs = []string{}
	}
	for _, s := range r.Steps {
		out.Steps = append(out.Steps, stepJSON{ID: s.ID, Kind: s.Kind, Status: s.Status, Attempts: s.Attempts, Output: s.Output,
			Error: s.Error, ChildRunID: s.ChildRunID, FirstRecorded: s.FirstRecorded, LastRecorded: s.LastRecorded,
			WakeAt: s.WakeAt, Failures: s.Failures})
	}
	return out
}

// took is how long a run ran (from its start, else its creation, to its
// end), or "" while it has not ended.
func took(r *durable.Run) string {
	if r.EndedAt == nil {
		return ""
	}
	from := r.CreatedAt
	if r.StartedAt != nil {
		from = *r.StartedAt
	}
	return fmtDuration(r.EndedAt.Sub(from))
}

func runsList(ctx context.Context, c *call) error {
	var f durable.RunFilter
	var statuses statusList
	c.fs.StringVar(&f.FunctionID, "function", "", "only runs of this function `ID`")
	c.fs.Var(&statuses, "status", "only runs in these `STATUSES` ("+statusNames()+"), comma-separated or repeated")
	since := c.fs.String("since", "", "only runs created within this `DURATION` (30m, 24h, 7d) or since an RFC 3339 time")
	c.fs.StringVar(&f.If, "if", "", "only runs for which this `CEL` expression over event and output is true, e.g. 'event.data.plan == \"pro\"'")
	c.fs.IntVar(&f.Limit, "limit", durable.DefaultListLimit, fmt.Sprintf("at most `N` runs (1 to %d)", durable.MaxListLimit))
	c.fs.StringVar(&f.Cursor, "cursor", "", "continue a listing from the `CURSOR` the previous page printed (same filters)")
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	f.Status = statuses
	if f.Limit < 1 || f.Limit > durable.MaxListLimit {
		return usagef("--limit %d: want 1 to %d", f.Limit, durable.MaxListLimit)
	}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			return usagef("--since %v", err)
		}
		f.CreatedAfter = t
	}
	if err := checkIf(f.If); err != nil {
		return usagef("--if %q: %v", f.If, err)
	}

	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	page, err := client.ListRuns(ctx, f)
	if err != nil {
		return err
	}
	if c.json {
		out := struct {
			Runs []runJSON `json:"runs"`
			Next string    `json:"next"`
		}{Runs: []runJSON{}, Next: page.Next}
		for _, r := range page.Runs {
			out.Runs = append(out.Runs, toRunJSON(r))
		}
		return writeJSON(c.stdout, out)
	}
	now := time.Now()
	if len(page.Runs) > 0 {
		t := newTable()
		t.row("ID", "FUNCTION", "STATUS", "CREATED", "TOOK", "ERROR")
		for _, r := range page.Runs {
			t.row(r.ID, r.FunctionID, string(r.Status), fmtAge(r.CreatedAt, now), orDash(took(r)), oneLine(r.Error, 60))
		}
		t.write(c.stdout)
	} else if page.Next == "" {
		fmt.Fprintln(c.stderr, "No runs found.")
	}
	if page.Next != "" {
		fmt.Fprintf(c.stderr, "More runs: add --cursor %s\n", page.Next)
	}
	return nil
}

func runsShow(ctx context.Context, c *call) error {
	width := c.fs.Int("width", defaultBarWidth, "width of the timeline's bars, in `COLUMNS`")
	pos, err := c.parse(1, 1)
	if err != nil {
		return err
	}
	if *width < 10 || *width > 400 {
		return usagef("--width %d: want 10 to 400", *width)
	}
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	run, err := client.GetRun(ctx, pos[0])
	if err != nil {
		return notFound(err, pos[0])
	}
	reruns, err := rerunsOf(ctx, client, run)
	if err != nil {
		return err
	}
	if c.json {
		out := toRunJSON(run)
		out.Reruns = reruns
		return writeJSON(c.stdout, out)
	}
	now := time.Now()
	t := newTable()
	t.row("Run:", run.ID)
	t.row("Function:", run.FunctionID)
	t.row("Status:", string(run.Status))
	if run.Error != "" {
		label := "Error:"
		if !run.Status.Done() {
			label = "Last error:"
		}
		t.row(label, indentLines(run.Error, "             "))
	}
	t.row("Events:", orDash(strings.Join(run.EventIDs, ", ")))
	t.row("Created:", fmtTime(run.CreatedAt)+" ("+fmtAge(run.CreatedAt, now)+")")
	if run.StartedAt != nil {
		t.row("Started:", fmtTime(*run.StartedAt)+" (queued "+fmtDuration(run.StartedAt.Sub(run.CreatedAt))+")")
	}
	if run.EndedAt != nil {
		t.row("Ended:", fmtTime(*run.EndedAt)+" (took "+took(run)+")")
	} else if run.StartedAt != nil {
		t.row("Running for:", fmtDuration(now.Sub(*run.StartedAt)))
	}
	if run.ParentRunID != "" {
		t.row("Parent run:", run.ParentRunID)
	}
	var children []string
	for _, s := range run.Steps {
		if s.ChildRunID != "" {
			children = append(children, s.ChildRunID+" (step "+s.ID+")")
		}
	}
	if len(children) > 0 {
		t.row("Child runs:", strings.Join(children, ", "))
	}
	if run.RerunOf != "" {
		t.row("Rerun of:", run.RerunOf)
	}
	if len(reruns) > 0 {
		t.row("Reruns:", strings.Join(reruns, ", "))
	}
	if len(run.Output) > 0 {
		t.row("Output:", oneLine(string(run.Output), 200))
	}
	t.write(c.stdout)
	fmt.Fprintln(c.stdout)
	if len(run.Steps) == 0 {
		fmt.Fprintln(c.stdout, "No steps recorded.")
		return nil
	}
	drawTimeline(c.stdout, run, now, *width)
	return nil
}

// indentLines indents every line of s after the first.
func indentLines(s, indent string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+indent)
}

// rerunsOf lists the runs that rerun run: reruns share their original's
// trigger events, so they are among the runs of its first event.
func rerunsOf(ctx context.Context, client *durable.Client, run *durable.Run) ([]string, error) {
	if len(run.EventIDs) == 0 {
		return nil, nil
	}
	runs, err := client.RunsForEvent(ctx, run.EventIDs[0])
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range runs {
		if r.RerunOf == run.ID {
			out = append(out, r.ID)
		}
	}
	return out, nil
}

func runsCancel(ctx context.Context, c *call) error {
	pos, err := c.parse(1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	before, err := client.GetRun(ctx, id)
	if err != nil {
		return notFound(err, id)
	}
	if !before.Status.Done() {
		if err := client.Cancel(ctx, id); err != nil {
			return notFound(err, id)
		}
	}
	after, err := client.GetRun(ctx, id)
	if err != nil {
		return notFound(err, id)
	}
	if c.json {
		return writeJSON(c.stdout, struct {
			ID           string `json:"id"`
			Status       string `json:"status"`
			AlreadyEnded bool   `json:"already_ended"`
		}{id, string(after.Status), before.Status.Done()})
	}
	switch {
	case before.Status.Done():
		fmt.Fprintf(c.stdout, "Run %s had already ended (%s): nothing to cancel.\n", id, before.Status)
	case after.Status == durable.RunCancelled:
		fmt.Fprintf(c.stdout, "Run %s cancelled.\n", id)
	default:
		fmt.Fprintf(c.stdout, "Run %s: cancellation requested (status %s).\n", id, after.Status)
	}
	return nil
}

func runsRerun(ctx context.Context, c *call) error {
	var opts durable.RerunOpts
	c.fs.StringVar(&opts.FromStep, "from-step", "", "keep the steps before this `STEP` (an ID as runs show prints it) and resume there")
	pos, err := c.parse(1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	newID, err := client.Rerun(ctx, id, opts)
	if err != nil {
		err = notFound(err, id)
		return errors.New(strings.ReplaceAll(c.message(err), "RerunOpts.FromStep", "--from-step"))
	}
	if c.json {
		return writeJSON(c.stdout, struct {
			ID       string `json:"id"`
			RerunOf  string `json:"rerun_of"`
			FromStep string `json:"from_step,omitempty"`
		}{newID, id, opts.FromStep})
	}
	fmt.Fprintln(c.stdout, newID)
	return nil
}
