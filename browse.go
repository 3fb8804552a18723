package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/runlist"
)

// Limits of [Client.ListEvents] and [Client.CountRuns].
const (
	// DefaultEventLimit is the page size when EventFilter.Limit is 0.
	DefaultEventLimit = 50
	// MaxEventLimit is the largest EventFilter.Limit.
	MaxEventLimit = 1000
	// EventScanLimit bounds the events one ListEvents call with
	// EventFilter.NoRuns examines to find those that started no run.
	EventScanLimit = 2_000
	// EventRunsLimit bounds the runs listed with each event
	// (EventInfo.Runs): the oldest ones.
	EventRunsLimit = 100
	// ExactCountLimit is the number of matching runs up to which
	// CountRuns counts exactly; above it, counts are estimated from a
	// sample.
	ExactCountLimit = 50_000
	// countSampleRows is about how many rows the estimate's sample reads.
	countSampleRows = 50_000
)

// EventFilter selects the events [Client.ListEvents] returns. Zero fields
// do not filter.
type EventFilter struct {
	// Name keeps the events with this name.
	Name string
	// NoRuns keeps the events that started no run (that no trigger
	// matched, or whose runs were pruned).
	NoRuns bool
	// Limit is the page size: at most this many events. Defaults to 50; at
	// most 1000.
	Limit int
	// Cursor is the EventPage.Next of the previous page; "" starts at the
	// newest event.
	Cursor string
}

// EventPage is one page of [Client.ListEvents].
type EventPage struct {
	Events []*EventInfo
	// Next is the Cursor of the following page; "" on the last page.
	Next string
}

// EventInfo is an event as stored, with the runs it started.
type EventInfo struct {
	ID   string
	Name string
	Data json.RawMessage
	// Timestamp is the event's own time (Event.Timestamp); ReceivedAt is
	// when it was stored.
	Timestamp  time.Time
	ReceivedAt time.Time
	// Runs are the runs it started (those whose first trigger event it
	// is, reruns included), oldest first, at most [EventRunsLimit].
	Runs []EventRun
}

// EventRun is a run an event started, as [Client.ListEvents] shows it.
type EventRun struct {
	ID         string    `json:"id"`
	FunctionID string    `json:"function_id"`
	Status     RunStatus `json:"status"`
}

// ListEvents returns stored events newest first (by the time they were
// received, then ID), each with the runs it started, one page at a time:
// pass EventPage.Next as the next call's EventFilter.Cursor with the same
// filter. The events come from an index (by name when Name is set). With
// NoRuns, one call examines at most [EventScanLimit] events: when it finds
// fewer than Limit that started no run, the page holds those (maybe none)
// and Next continues from the last event examined; a page shorter than
// Limit is the last one only when Next is "".
//
// Events are kept as long as Config.Retention.Events says (and as long as
// a run or a wait needs them). A Limit over 1000 or negative and a
// malformed Cursor are errors naming the field.
func (c *Client) ListEvents(ctx context.Context, filter EventFilter) (*EventPage, error) {
	limit := filter.Limit
	var errs []error
	switch {
	case limit == 0:
		limit = DefaultEventLimit
	case limit < 0 || limit > MaxEventLimit:
		errs = append(errs, fmt.Errorf("durable: EventFilter.Limit %d: want 1 to %d (0 means %d)", limit, MaxEventLimit, DefaultEventLimit))
	}
	args := pgx.NamedArgs{"upper_ts": nil, "upper_id": "", "no_runs": filter.NoRuns, "runs": EventRunsLimit, "rows": limit + 1, "scan": limit + 1}
	if filter.NoRuns {
		args["scan"] = max(EventScanLimit, limit+1)
	}
	if filter.Cursor != "" {
		k, err := runlist.DecodeCursor(filter.Cursor)
		if err != nil {
			errs = append(errs, errors.New("durable: EventFilter.Cursor is malformed (pass EventPage.Next as it is)"))
		} else {
			args["upper_ts"], args["upper_id"] = k.CreatedAt, k.ID
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sql := c.q.ListEvents
	if filter.Name != "" {
		sql, args["name"] = c.q.ListEventsByName, filter.Name
	}
	// The unnamed statement gets a plan for these values.
	rows, err := c.pool.Query(ctx, sql, pgx.QueryExecModeCacheDescribe, args)
	if err != nil {
		return nil, fmt.Errorf("durable: ListEvents: %w", c.explain(err))
	}
	page := &EventPage{Events: []*EventInfo{}}
	var (
		n, rn    int
		ok       bool
		last     runlist.Key
		data     []byte
		runsJSON []byte
	)
	for rows.Next() {
		e := &EventInfo{}
		if err := rows.Scan(&e.ID, &e.Name, &data, &e.Timestamp, &e.ReceivedAt, &runsJSON, &ok, &rn); err != nil {
			rows.Close()
			return nil, fmt.Errorf("durable: ListEvents: %w", err)
		}
		n++
		last = runlist.Key{CreatedAt: e.ReceivedAt, ID: e.ID}
		if !ok {
			continue // the scan's last event, returned to say where it stopped
		}
		if err := json.Unmarshal(runsJSON, &e.Runs); err != nil {
			rows.Close()
			return nil, fmt.Errorf("durable: ListEvents: event %q runs: %w", e.ID, err)
		}
		if data != nil {
			e.Data = json.RawMessage(append([]byte(nil), data...))
		}
		page.Events = append(page.Events, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("durable: ListEvents: %w", c.explain(err))
	}
	scan := args["scan"].(int)
	switch {
	case len(page.Events) > limit:
		k := page.Events[limit-1]
		page.Events = page.Events[:limit]
		page.Next = runlist.EncodeCursor(runlist.Key{CreatedAt: k.ReceivedAt, ID: k.ID})
	case n > 0 && rn == scan:
		page.Next = runlist.EncodeCursor(last) // the scan's budget is used up
	}
	return page, nil
}

// CountFilter selects the runs [Client.CountRuns] counts. Zero fields do
// not filter.
type CountFilter struct {
	FunctionID string
	// CreatedAfter and CreatedBefore keep runs created strictly after and
	// strictly before these times.
	CreatedAfter  time.Time
	CreatedBefore time.Time
}

// RunCounts is what [Client.CountRuns] returns.
type RunCounts struct {
	// ByStatus holds the number of runs in each status found (a status no
	// run has is absent).
	ByStatus map[RunStatus]int64
	// Total is the sum of ByStatus.
	Total int64
	// Estimated reports that the counts are estimates, not exact.
	Estimated bool
}

// CountRuns counts the runs that match filter, by status, with bounded
// work whatever the number of runs (status has no index, so that status
// changes stay cheap): when at most [ExactCountLimit] runs match, the
// counts are exact; above, they are estimated (Estimated is true) from a
// random sample of durable_run's pages of about 50,000 rows, scaled by
// the table's size. An estimate is good to a few percent for a status
// holding many runs, and rough for a rare one (a status with a handful of
// runs among millions may show as none). Each query is bounded by a
// statement timeout of 2 seconds.
func (c *Client) CountRuns(ctx context.Context, filter CountFilter) (*RunCounts, error) {
	args := pgx.NamedArgs{"function_id": filter.FunctionID, "after": nil, "before": nil, "limit": ExactCountLimit + 1}
	if !filter.CreatedAfter.IsZero() {
		args["after"] = filter.CreatedAfter
	}
	if !filter.CreatedBefore.IsZero() {
		args["before"] = filter.CreatedBefore
	}
	var counts *RunCounts
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, c.q.CountTimeout); err != nil {
			return err
		}
		exact, err := countByStatus(ctx, tx, c.q.CountRunsExact, args, 1)
		if err != nil {
			return err
		}
		counts = exact
		if exact.Total <= ExactCountLimit {
			return nil
		}
		var reltuples float64
		var pages int64
		if err := tx.QueryRow(ctx, c.q.RunTableSize).Scan(&reltuples, &pages); err != nil {
			return err
		}
		pct := 100.0
		switch {
		case reltuples > 0:
			pct = min(100, 100*countSampleRows/reltuples)
		case pages > 0: // never analyzed: guess 50 rows a page
			pct = min(100, 100*countSampleRows/(50*float64(pages)))
		}
		delete(args, "limit")
		args["pct"] = pct
		est, err := countByStatus(ctx, tx, c.q.CountRunsSample, args, 100/pct)
		if err != nil {
			return err
		}
		est.Estimated = true
		counts = est
		if est.Total < exact.Total {
			// The sample missed most of them: what was counted is a lower
			// bound.
			exact.Estimated = true
			counts = exact
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("durable: CountRuns: %w", c.explain(err))
	}
	return counts, nil
}

// countByStatus runs a "status, count" query (with a custom plan) and
// scales its counts.
func countByStatus(ctx context.Context, tx pgx.Tx, sql string, args pgx.NamedArgs, scale float64) (*RunCounts, error) {
	rows, err := tx.Query(ctx, sql, pgx.QueryExecModeCacheDescribe, args)
	if err != nil {
		return nil, err
	}
	out := &RunCounts{ByStatus: map[RunStatus]int64{}}
	var status string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		v := int64(math.Round(float64(n) * scale))
		out.ByStatus[RunStatus(status)] = v
		out.Total += v
		return nil
	})
	return out, err
}

// RunEvents returns a run's trigger events as the run got them (its
// copies, kept as long as the run is, even once the events themselves are
// pruned), in order; their ReceivedAt and Runs are not filled. An unknown
// run is an error wrapping [ErrRunNotFound].
func (c *Client) RunEvents(ctx context.Context, runID string) ([]*EventInfo, error) {
	var stored []eventJSON
	err := c.pool.QueryRow(ctx, c.q.RunEvents, runID).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("durable: run %q: %w", runID, ErrRunNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("durable: RunEvents: %w", c.explain(err))
	}
	out := make([]*EventInfo, len(stored))
	for i, e := range stored {
		out[i] = &EventInfo{ID: e.ID, Name: e.Name, Data: e.Data, Timestamp: e.TS}
	}
	return out, nil
}
