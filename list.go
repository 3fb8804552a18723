package durable

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/store"
)

// Limits of [Client.ListRuns].
const (
	// DefaultListLimit is the page size when RunFilter.Limit is 0.
	DefaultListLimit = 50
	// MaxListLimit is the largest RunFilter.Limit.
	MaxListLimit = 1000
	// ListScanLimit bounds the runs one ListRuns call examines (those
	// that match FunctionID and the time range, newest first) to find the
	// ones that match Status and If.
	ListScanLimit = 10_000
	// ListEvalLimit bounds the runs (of those, the ones matching Status)
	// on which one ListRuns call evaluates If: decoding a run's event and
	// output and evaluating costs microseconds, the status test a fraction
	// of one.
	ListEvalLimit = 2_000
)

// RunFilter selects the runs [Client.ListRuns] returns. Zero fields do
// not filter.
type RunFilter struct {
	FunctionID string
	// Status keeps runs in any of these statuses.
	Status []RunStatus
	// CreatedAfter and CreatedBefore keep runs created strictly after and
	// strictly before these times.
	CreatedAfter  time.Time
	CreatedBefore time.Time
	// If is a CEL expression over `event` (the run's first trigger event,
	// with id, name, data and ts) and `output` (the run's result as JSON,
	// null when it has none), e.g.
	// `event.data.plan == "pro" && output.total > 100`. A run for which it
	// does not evaluate to true (a missing field, an evaluation error) is
	// left out.
	If string
	// Limit is the page size: at most this many runs. Defaults to 50; at
	// most 1000.
	Limit int
	// Cursor is the RunPage.Next of the previous page; "" starts at the
	// newest run.
	Cursor string
}

// RunPage is one page of [Client.ListRuns].
type RunPage struct {
	Runs []*Run
	// Next is the Cursor of the following page; "" on the last page.
	Next string
}

// ListRuns returns runs newest first (by creation time, then ID), without
// their steps, one page at a time: pass RunPage.Next as the next call's
// RunFilter.Cursor with the same filter. Paging is by position (the last
// run returned), so runs created meanwhile never shift a page: they are
// newer than the first page and show up only in a listing started
// afterwards, and no run is returned twice or skipped.
//
// FunctionID and the time range are read from indexes. Status and If are
// applied to the runs read, bounded: one call examines at most
// [ListScanLimit] (10,000) runs matching FunctionID and the time range,
// and evaluates If on at most [ListEvalLimit] (2,000) of them. When a
// filter is so selective that it finds fewer than Limit runs within these
// bounds, the page holds those it found (maybe none) and Next continues
// from the last run examined: a page shorter than Limit is the last one
// only when Next is "".
//
// A Limit over 1000 or negative, a Status that is not one of the
// [RunStatus] values, an If that does not compile and a malformed Cursor
// are errors naming the field.
func (c *Client) ListRuns(ctx context.Context, filter RunFilter) (*RunPage, error) {
	l, err := c.newLister(filter)
	if err != nil {
		return nil, err
	}
	page, err := l.page(ctx)
	if err != nil {
		return nil, fmt.Errorf("durable: ListRuns: %w", c.explain(err))
	}
	return page, nil
}

// runKey is a run's position in the listing order.
type runKey struct {
	createdAt time.Time
	id        string
}

// cursorVersion is the first byte of a cursor: the layout that follows
// is the position's creation time (microseconds since the Unix epoch, as
// Postgres stores it, big-endian) and the run ID.
const cursorVersion = 1

func encodeCursor(k runKey) string {
	b := make([]byte, 9, 9+len(k.id))
	b[0] = cursorVersion
	binary.BigEndian.PutUint64(b[1:], uint64(k.createdAt.UnixMicro()))
	return base64.RawURLEncoding.EncodeToString(append(b, k.id...))
}

var errMalformedCursor = errors.New("durable: RunFilter.Cursor is malformed (pass RunPage.Next as it is)")

func decodeCursor(s string) (runKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 10 || b[0] != cursorVersion || !utf8.Valid(b[9:]) {
		return runKey{}, errMalformedCursor
	}
	return runKey{time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))), string(b[9:])}, nil
}

// lister is one ListRuns call, validated.
type lister struct {
	c        *Client
	filter   RunFilter
	statuses []string
	limit    int
	after    *time.Time
	upper    *runKey // exclusive; nil: from the newest run
	cond     *expr.Program
	// What If reads (a word in its source: never wrong when it says no).
	condEvent, condOutput bool
}

func (c *Client) newLister(f RunFilter) (*lister, error) {
	l := &lister{c: c, filter: f, limit: f.Limit, statuses: []string{}}
	var errs []error
	switch {
	case f.Limit == 0:
		l.limit = DefaultListLimit
	case f.Limit < 0 || f.Limit > MaxListLimit:
		errs = append(errs, fmt.Errorf("durable: RunFilter.Limit %d: want 1 to %d (0 means %d)", f.Limit, MaxListLimit, DefaultListLimit))
	}
	for i, s := range f.Status {
		switch s {
		case RunQueued, RunRunning, RunCompleted, RunFailed, RunCancelled:
			l.statuses = append(l.statuses, string(s))
		default:
			errs = append(errs, fmt.Errorf("durable: RunFilter.Status[%d]: %q is not a run status", i, s))
		}
	}
	if strings.TrimSpace(f.If) != "" {
		// Compiled for this call, not cached: a listing's If comes from a
		// user (a search box), and expr.Cache never forgets an entry.
		p, err := expr.Compile(f.If, expr.EventAndOutput)
		if err == nil && !p.OutputIsBoolOrDyn() {
			err = errors.New("it does not evaluate to a bool")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("durable: RunFilter.If %q: %w", f.If, err))
		}
		l.cond = p
		l.condEvent, l.condOutput = strings.Contains(f.If, "event"), strings.Contains(f.If, "output")
	}
	if !f.CreatedAfter.IsZero() {
		t := f.CreatedAfter
		l.after = &t
	}
	if !f.CreatedBefore.IsZero() {
		// (CreatedBefore, "") precedes every run created at that time.
		l.upper = &runKey{createdAt: f.CreatedBefore.Truncate(time.Microsecond)}
	}
	if f.Cursor != "" {
		k, err := decodeCursor(f.Cursor)
		if err != nil {
			errs = append(errs, err)
		} else if l.upper == nil || k.createdAt.Before(l.upper.createdAt) {
			l.upper = &k
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}

// page reads runs in index order, a bounded scan at a time, until it has
// one more match than the page holds (so that Next is set only when a run
// follows), the runs in range are exhausted, ListScanLimit runs were
// examined or If was evaluated ListEvalLimit times. Without If, the first
// query settles it (the status filter is applied by the query); with If,
// each query brings a batch of runs that match Status (twice as many as
// the last), for the filter to sift.
func (l *lister) page(ctx context.Context) (*RunPage, error) {
	sql, fn := l.c.q.ListRuns, ""
	if l.filter.FunctionID != "" {
		sql, fn = l.c.q.ListFunctionRuns, l.filter.FunctionID
	}
	runs := make([]*Run, 0, min(l.limit+1, 64)) // empty, not nil, when none matches
	scanLeft, evalLeft := ListScanLimit, ListEvalLimit
	upper := l.upper
	chunk := max(2*(l.limit+1), 100)
	for {
		want := l.limit + 1 - len(runs)
		if l.cond != nil {
			want = min(chunk, scanLeft, evalLeft)
			chunk *= 2
		}
		args := pgx.NamedArgs{
			"function_id": fn, "statuses": l.statuses, "after": l.after,
			"upper_ts": nil, "upper_id": "", "scan": scanLeft, "rows": want, "with_event": l.condEvent,
		}
		if upper != nil {
			args["upper_ts"], args["upper_id"] = upper.createdAt, upper.id
		}
		// The unnamed statement gets a plan for these values: the time
		// range and the function's share of runs choose the index.
		rows, err := l.c.pool.Query(ctx, sql, pgx.QueryExecModeCacheDescribe, args)
		if err != nil {
			return nil, err
		}
		var (
			n, rn int
			last  runKey // the last run examined
			stop  bool   // a page's worth found, or If's budget used up, at last
		)
		// A run is read in two passes: what every run examined needs (its
		// position, and what If reads), then the rest for a run kept.
		var (
			id        string
			createdAt time.Time
			out, ev   []byte
			ok        bool
		)
		probe := []any{&id, nil, nil, nil, &out, nil, &createdAt, nil, nil, nil, nil, &ev, &ok, &rn}
		for !stop && rows.Next() {
			if err := rows.Scan(probe...); err != nil {
				rows.Close()
				return nil, err
			}
			n++
			last = runKey{createdAt, id}
			if !ok {
				continue // the scan's last run, returned to say where it stopped
			}
			if l.cond != nil {
				evalLeft--
				stop = evalLeft == 0
				if !l.match(ev, out) {
					continue
				}
			}
			r := &Run{}
			var status string
			if err := rows.Scan(append(runColumns(r, &status, &out), nil, nil, nil)...); err != nil {
				rows.Close()
				return nil, err
			}
			finishRun(r, status, out)
			runs = append(runs, r)
			stop = stop || len(runs) > l.limit
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		switch {
		case len(runs) > l.limit:
			k := runs[l.limit-1]
			return &RunPage{Runs: runs[:l.limit], Next: encodeCursor(runKey{k.CreatedAt, k.ID})}, nil
		case stop || n > 0 && rn == scanLeft:
			// If's budget, or the scan's, is used up at the last run
			// examined.
			return &RunPage{Runs: runs, Next: encodeCursor(last)}, nil
		case n < want:
			return &RunPage{Runs: runs}, nil // no run left in range
		}
		scanLeft -= rn
		upper = &last
	}
}

// match evaluates If over a run's first trigger event and its output; a
// run on which it fails (a missing field, a type error) does not match.
func (l *lister) match(event, output []byte) bool {
	var ev map[string]any
	if l.condEvent {
		// The event as expressions see it everywhere (store.Event.AsMap),
		// decoded in one pass.
		if err := json.Unmarshal(event, &ev); err != nil {
			return false
		}
		if s, ok := ev["ts"].(string); ok {
			if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
				ev["ts"] = ts.UTC().Format(time.RFC3339Nano)
			}
		}
	}
	var out any
	if l.condOutput && output != nil {
		if err := json.Unmarshal(output, &out); err != nil {
			return false
		}
	}
	ok, err := l.cond.BoolOutput(ev, out)
	return err == nil && ok
}

// RerunOpts configures [Client.Rerun].
type RerunOpts struct {
	// FromStep is a step ID as shown in RunStep.ID (with its counter
	// suffix); "" reruns from the top.
	FromStep string
}

// Rerun starts a new run of the same function with the same trigger
// events (the same event IDs; RunsForEvent lists both runs) and returns
// its ID. The new run's RerunOf names runID. The original run is left as
// it is, whatever its status.
//
// With FromStep, the steps of the original that completed and first ran
// before FromStep (in the order of Run.Steps) are copied into the new run
// as they are (IDs, outputs): the function replays them without running
// their bodies (a StepTx's writes are not made again, a SendEvent's
// events are not sent again), and executes FromStep and everything after
// it. Steps before FromStep that did not complete (failed and handled by
// the function, timed out, cancelled) are not copied and run again.
// FromStep may be any step the original recorded, whatever its kind or
// status; one it never reached is an error naming FromStep and listing
// the run's step IDs.
//
// The rerun claims no idempotency key: the one its trigger event holds
// (usually for the original run) does not stop it, and stays with that
// run. A rerun of a run started by an "invoke" step has no parent: the
// parent already has, or will get, the original's result. An unknown run
// is an error wrapping [ErrRunNotFound]; a function no process has
// registered, [ErrFunctionNotFound].
func (c *Client) Rerun(ctx context.Context, runID string, opts RerunOpts) (string, error) {
	var newID string
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		var fn string
		var events []store.Event
		var steps []string
		err := tx.QueryRow(ctx, c.q.RerunSource, runID).Scan(&fn, &events, &steps)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrRunNotFound
		}
		if err != nil {
			return err
		}
		if opts.FromStep != "" && !slices.Contains(steps, opts.FromStep) {
			return unknownStep(runID, opts.FromStep, steps)
		}
		newID, err = c.router.Rerun(ctx, tx, router.RerunArgs{Of: runID, FunctionID: fn, Events: events, FromStep: opts.FromStep})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("durable: Rerun %q: %w", runID, c.explain(err))
	}
	c.router.NotifyProducers(ctx)
	return newID, nil
}

func unknownStep(runID, step string, steps []string) error {
	if len(steps) == 0 {
		return fmt.Errorf("RerunOpts.FromStep %q: run %s has no steps", step, runID)
	}
	const show = 50
	list := strings.Join(steps[:min(len(steps), show)], ", ")
	if len(steps) > show {
		list += fmt.Sprintf(", ... (%d in all)", len(steps))
	}
	return fmt.Errorf("RerunOpts.FromStep %q: run %s has no such step; its steps: %s", step, runID, list)
}
