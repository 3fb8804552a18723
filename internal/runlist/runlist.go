// Package runlist lists runs newest first, a bounded scan at a time (see
// Query.Page): the engine behind Client.ListRuns.
package runlist

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/store"
)

// Run is a run as listed: the columns every run query starts with
// (GetRun, RunsForEvent, ListRuns), in their order (see Columns).
type Run struct {
	ID, FunctionID, Status string
	EventIDs               []string
	Output                 []byte
	Error                  string
	CreatedAt              time.Time
	StartedAt, EndedAt     *time.Time
	ParentRunID, RerunOf   string
}

// Columns are the scan targets of those columns.
func Columns(r *Run) []any {
	return []any{&r.ID, &r.FunctionID, &r.Status, &r.EventIDs, &r.Output, &r.Error, &r.CreatedAt, &r.StartedAt, &r.EndedAt, &r.ParentRunID, &r.RerunOf}
}

// Query is one listing, validated.
type Query struct {
	FunctionID string
	Statuses   []string // empty: any
	After      *time.Time
	Upper      *Key // exclusive; nil: from the newest run
	Limit      int
	// Cond is the If filter over `event` and `output`, with what its
	// source reads (a word in it: never wrong when it says no).
	Cond                  *expr.Program
	CondEvent, CondOutput bool
	// ScanLimit bounds the runs one call examines; EvalLimit the ones Cond
	// is evaluated on.
	ScanLimit, EvalLimit int
}

// Key is a run's position in the listing order.
type Key struct {
	CreatedAt time.Time
	ID        string
}

// cursorVersion is the first byte of a cursor: the layout that follows
// is the position's creation time (microseconds since the Unix epoch, as
// Postgres stores it, big-endian) and the run ID.
const cursorVersion = 1

// EncodeCursor is the opaque cursor of a position.
func EncodeCursor(k Key) string {
	b := make([]byte, 9, 9+len(k.ID))
	b[0] = cursorVersion
	binary.BigEndian.PutUint64(b[1:], uint64(k.CreatedAt.UnixMicro()))
	return base64.RawURLEncoding.EncodeToString(append(b, k.ID...))
}

// ErrMalformedCursor is DecodeCursor's error.
var ErrMalformedCursor = errors.New("durable: RunFilter.Cursor is malformed (pass RunPage.Next as it is)")

// DecodeCursor reads a cursor EncodeCursor made.
func DecodeCursor(s string) (Key, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 10 || b[0] != cursorVersion || !utf8.Valid(b[9:]) {
		return Key{}, ErrMalformedCursor
	}
	return Key{CreatedAt: time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))), ID: string(b[9:])}, nil
}

// Page reads runs in index order, a bounded scan at a time, until it has
// one more match than the page holds (so that Next is set only when a run
// follows), the runs in range are exhausted, l.ScanLimit runs were
// examined or If was evaluated l.EvalLimit times. Without If, the first
// query settles it (the status filter is applied by the query); with If,
// each query brings a batch of runs that match Status (twice as many as
// the last), for the filter to sift.
func (l *Query) Page(ctx context.Context, pool *pgxpool.Pool, q *store.Queries) ([]*Run, string, error) {
	sql, fn := q.ListRuns, ""
	if l.FunctionID != "" {
		sql, fn = q.ListFunctionRuns, l.FunctionID
	}
	runs := make([]*Run, 0, min(l.Limit+1, 64)) // empty, not nil, when none matches
	scanLeft, evalLeft := l.ScanLimit, l.EvalLimit
	upper := l.Upper
	chunk := max(2*(l.Limit+1), 100)
	for {
		want := l.Limit + 1 - len(runs)
		if l.Cond != nil {
			want = min(chunk, scanLeft, evalLeft)
			chunk *= 2
		}
		args := pgx.NamedArgs{
			"function_id": fn, "statuses": l.Statuses, "after": l.After,
			"upper_ts": nil, "upper_id": "", "scan": scanLeft, "rows": want, "with_event": l.CondEvent,
		}
		if upper != nil {
			args["upper_ts"], args["upper_id"] = upper.CreatedAt, upper.ID
		}
		// The unnamed statement gets a plan for these values: the time
		// range and the function's share of runs choose the index.
		rows, err := pool.Query(ctx, sql, pgx.QueryExecModeCacheDescribe, args)
		if err != nil {
			return nil, "", err
		}
		var (
			n, rn int
			last  Key  // the last run examined
			stop  bool // a page's worth found, or If's budget used up, at last
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
				return nil, "", err
			}
			n++
			last = Key{CreatedAt: createdAt, ID: id}
			if !ok {
				continue // the scan's last run, returned to say where it stopped
			}
			if l.Cond != nil {
				evalLeft--
				stop = evalLeft == 0
				if !l.match(ev, out) {
					continue
				}
			}
			r := &Run{}
			if err := rows.Scan(append(Columns(r), nil, nil, nil)...); err != nil {
				rows.Close()
				return nil, "", err
			}
			runs = append(runs, r)
			stop = stop || len(runs) > l.Limit
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, "", err
		}
		switch {
		case len(runs) > l.Limit:
			k := runs[l.Limit-1]
			return runs[:l.Limit], EncodeCursor(Key{CreatedAt: k.CreatedAt, ID: k.ID}), nil
		case stop || n > 0 && rn == scanLeft:
			// If's budget, or the scan's, is used up at the last run
			// examined.
			return runs, EncodeCursor(last), nil
		case n < want:
			return runs, "", nil // no run left in range
		}
		scanLeft -= rn
		upper = &last
	}
}

// match evaluates If over a run's first trigger event and its output; a
// run on which it fails (a missing field, a type error) does not match.
func (l *Query) match(event, output []byte) bool {
	var ev map[string]any
	if l.CondEvent {
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
	if l.CondOutput && output != nil {
		if err := json.Unmarshal(output, &out); err != nil {
			return false
		}
	}
	ok, err := l.Cond.BoolOutput(ev, out)
	return err == nil && ok
}
