package durable

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/router"
	"github.com/pgdurable/durable/internal/runlist"
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
	l, err := newLister(filter)
	if err != nil {
		return nil, err
	}
	rows, next, err := l.Page(ctx, c.pool, c.q)
	if err != nil {
		return nil, fmt.Errorf("durable: ListRuns: %w", c.explain(err))
	}
	page := &RunPage{Runs: make([]*Run, len(rows)), Next: next}
	for i, r := range rows {
		page.Runs[i] = publicRun(r)
	}
	return page, nil
}

// newLister validates a filter into a listing.
func newLister(f RunFilter) (*runlist.Query, error) {
	l := &runlist.Query{FunctionID: f.FunctionID, Limit: f.Limit, Statuses: []string{}, ScanLimit: ListScanLimit, EvalLimit: ListEvalLimit}
	var errs []error
	switch {
	case f.Limit == 0:
		l.Limit = DefaultListLimit
	case f.Limit < 0 || f.Limit > MaxListLimit:
		errs = append(errs, fmt.Errorf("durable: RunFilter.Limit %d: want 1 to %d (0 means %d)", f.Limit, MaxListLimit, DefaultListLimit))
	}
	for i, s := range f.Status {
		switch s {
		case RunQueued, RunRunning, RunCompleted, RunFailed, RunCancelled, RunSkipped:
			l.Statuses = append(l.Statuses, string(s))
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
		l.Cond = p
		l.CondEvent, l.CondOutput = strings.Contains(f.If, "event"), strings.Contains(f.If, "output")
	}
	if !f.CreatedAfter.IsZero() {
		t := f.CreatedAfter
		l.After = &t
	}
	if !f.CreatedBefore.IsZero() {
		// (CreatedBefore, "") precedes every run created at that time.
		l.Upper = &runlist.Key{CreatedAt: f.CreatedBefore.Truncate(time.Microsecond)}
	}
	if f.Cursor != "" {
		k, err := runlist.DecodeCursor(f.Cursor)
		if err != nil {
			errs = append(errs, err)
		} else if l.Upper == nil || k.CreatedAt.Before(l.Upper.CreatedAt) {
			l.Upper = &k
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
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
