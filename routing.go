package durable

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/riverjobs"
)

// Routing: what new events do. An event starts a run of every function
// whose trigger matches it, resumes the waits it matches and cancels the
// runs whose CancelOn it matches, all in the transaction that stores it.
// The queries that find all of this go to Postgres in one batch (one round
// trip), whatever the number of events.

// trigger is a function trigger on an event name, with its function's
// stored settings.
type trigger struct {
	fn, ifExpr string
	cfg        funcConfig
}

// waitCand is a wait or cancellation listener an event may match.
type waitCand struct {
	id       int64
	runID    string
	kind     string
	step     *string
	ifExpr   string
	runEvent []byte
}

// maxIndexedLeaves bounds the scalar leaves of an event probed against the
// waits' index keys (an event is at most MaxEventSize; a wait keyed on a
// leaf beyond this many is not found by index).
const maxIndexedLeaves = 5000

// queueMatches queues, on b, the queries that find the triggers and waits
// of events; readMatches reads their results in the same order.
func (c *Client) queueMatches(b *pgx.Batch, events []eventJSON) {
	seen := map[string]bool{}
	var names []string
	for _, e := range events {
		if !seen[e.Name] {
			seen[e.Name] = true
			names = append(names, e.Name)
		}
	}
	b.Queue(c.q.MatchTriggers, names)
	for _, e := range events {
		var paths, values []string
		for p, v := range expr.Leaves(e.AsMap(), maxIndexedLeaves) {
			paths, values = append(paths, p), append(values, v)
		}
		b.Queue(c.q.MatchWaits, e.Name, paths, values)
	}
}

func (c *Client) readMatches(br pgx.BatchResults, events []eventJSON) (map[string][]trigger, [][]waitCand, error) {
	byName := map[string][]trigger{}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("durable: matching triggers: %w", err)
	}
	var fn, name, ifExpr string
	var cfg []byte
	_, err = pgx.ForEachRow(rows, []any{&fn, &name, &ifExpr, &cfg}, func() error {
		byName[name] = append(byName[name], trigger{fn, ifExpr, store.DecodeFunctionConfig(cfg)})
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("durable: matching triggers: %w", err)
	}
	waits := make([][]waitCand, len(events))
	for i := range events {
		rows, err := br.Query()
		if err != nil {
			return nil, nil, fmt.Errorf("durable: matching waits: %w", err)
		}
		waits[i], err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (waitCand, error) {
			var k waitCand
			err := row.Scan(&k.id, &k.runID, &k.kind, &k.step, &k.ifExpr, &k.runEvent)
			return k, err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("durable: matching waits: %w", err)
		}
	}
	return byName, waits, nil
}

// sendPrepared stores events and routes the new ones, in tx. It returns
// the events' IDs and how many runs it started. When notifyInTx is false
// the caller must call notifyProducers after committing tx.
func (c *Client) sendPrepared(ctx context.Context, tx pgx.Tx, events []eventJSON, notifyInTx bool) ([]string, int, error) {
	result := make([]string, len(events))
	seen := map[string]bool{}
	var uniq []eventJSON
	for i, e := range events {
		result[i] = e.ID
		if !seen[e.ID] {
			seen[e.ID] = true
			uniq = append(uniq, e)
		}
	}
	idsArr := make([]string, len(uniq))
	names := make([]string, len(uniq))
	datas := make([]json.RawMessage, len(uniq))
	tss := make([]any, len(uniq))
	for i, e := range uniq {
		idsArr[i], names[i], datas[i], tss[i] = e.ID, e.Name, e.Data, e.TS
	}
	b := &pgx.Batch{}
	// Waits being registered for these names see these events or are seen
	// by them (see registerWait).
	b.Queue(c.q.LockEventNameShared, names)
	b.Queue(c.q.InsertEvents, idsArr, names, datas, tss)
	c.queueMatches(b, uniq)
	br := tx.SendBatch(ctx, b)
	fresh, byName, waits, err := func() (map[string]bool, map[string][]trigger, [][]waitCand, error) {
		if _, err := br.Exec(); err != nil {
			return nil, nil, nil, err
		}
		rows, err := br.Query()
		if err != nil {
			return nil, nil, nil, err
		}
		inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, nil, nil, err
		}
		fresh := make(map[string]bool, len(inserted))
		for _, id := range inserted {
			fresh[id] = true
		}
		byName, waits, err := c.readMatches(br, uniq)
		return fresh, byName, waits, err
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, fmt.Errorf("durable: storing events: %w", err)
	}
	var freshEvents []eventJSON
	var freshWaits [][]waitCand
	for i, e := range uniq {
		if fresh[e.ID] {
			freshEvents = append(freshEvents, e)
			freshWaits = append(freshWaits, waits[i])
		}
	}
	n, err := c.act(ctx, tx, freshEvents, byName, freshWaits, notifyInTx)
	return result, n, err
}

// fanOut routes events already stored (system events), in tx.
func (c *Client) fanOut(ctx context.Context, tx pgx.Tx, events []eventJSON) error {
	b := &pgx.Batch{}
	c.queueMatches(b, events)
	br := tx.SendBatch(ctx, b)
	byName, waits, err := c.readMatches(br, events)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = c.act(ctx, tx, events, byName, waits, true)
	return err
}

// act starts the triggered runs and resumes or cancels the matched runs.
func (c *Client) act(ctx context.Context, tx pgx.Tx, events []eventJSON, byName map[string][]trigger, waits [][]waitCand, notifyInTx bool) (int, error) {
	var newRuns []pendingRun
	for _, e := range events {
		var evMap map[string]any
		started := map[string]bool{}
		for _, t := range byName[e.Name] {
			if started[t.fn] {
				continue
			}
			if t.ifExpr != "" {
				if evMap == nil {
					evMap = e.AsMap()
				}
				ok, err := c.evalFilter(t.ifExpr, evMap)
				if err != nil {
					c.filterFailed(ctx, "trigger filter", err, "function_id", t.fn, "event_id", e.ID)
					continue
				}
				if !ok {
					continue
				}
			}
			started[t.fn] = true
			newRuns = append(newRuns, pendingRun{functionID: t.fn, cfg: t.cfg, events: []eventJSON{e}})
		}
	}
	for i, e := range events {
		if len(byName[e.Name]) == 0 && len(waits[i]) == 0 {
			c.warnUnmatched(ctx, e)
		}
	}
	ids, err := c.insertRuns(ctx, tx, newRuns, notifyInTx)
	if err != nil {
		return 0, err
	}
	created := 0
	for _, id := range ids {
		if id != "" {
			created++
		}
	}
	for i, e := range events {
		if err := c.deliver(ctx, tx, e, waits[i]); err != nil {
			return 0, err
		}
	}
	return created, nil
}

// deliver resumes the waits and cancels the runs an event matches.
func (c *Client) deliver(ctx context.Context, tx pgx.Tx, e eventJSON, cands []waitCand) error {
	if len(cands) == 0 {
		return nil
	}
	evMap := e.AsMap()
	// Newest runs first: a child run is newer than its parent, and a
	// child's end locks the child, then the parent; ending both here in
	// the same order cannot deadlock with it.
	sort.Slice(cands, func(i, j int) bool { return cands[i].runID > cands[j].runID })
	for _, k := range cands {
		if k.ifExpr != "" {
			var runEvent eventJSON
			if err := json.Unmarshal(k.runEvent, &runEvent); err != nil {
				continue
			}
			ok, err := c.evalWait(k.ifExpr, runEvent.AsMap(), evMap)
			if err != nil {
				c.filterFailed(ctx, k.kind+" condition", err, "run_id", k.runID, "event_id", e.ID)
			}
			if err != nil || !ok {
				continue
			}
		}
		switch k.kind {
		case "cancel":
			ok, err := c.cancelRun(ctx, tx, k.runID, fmt.Sprintf("cancelled by event %s (%s)", e.ID, e.Name))
			if err != nil {
				return err
			}
			if sc, _ := ctx.Value(selfCancelKey{}).(*selfCancel); ok && sc != nil && sc.runID == k.runID {
				sc.hit = true // a StepTx's own events cancelled its run
			}
		case "wait":
			out, err := json.Marshal(e)
			if err != nil {
				return err
			}
			var delivered bool // false: another event, or the timeout, took the wait first
			if err := tx.QueryRow(ctx, c.q.TakeWait, k.id, k.runID, out, c.notifyChannel).Scan(&delivered); err != nil {
				return fmt.Errorf("durable: delivering event to run %s: %w", k.runID, err)
			}
		}
	}
	return nil
}

// insertRuns creates runs, their River jobs and their cancellation
// listeners in tx, and returns the run IDs in order ("" for a run not
// created because its idempotency key was taken).
func (c *Client) insertRuns(ctx context.Context, tx pgx.Tx, runs []pendingRun, notifyInTx bool) ([]string, error) {
	if len(runs) == 0 {
		return nil, nil
	}
	runIDs := make([]string, len(runs))
	for i := range runs {
		runIDs[i] = newID()
	}
	if err := c.claimIdempotency(ctx, tx, runs, runIDs); err != nil {
		return nil, err
	}
	var rIDs, fns, eventIDs []string
	var parents, parentSteps, starts, finishes []*string
	var evs []json.RawMessage
	var w waitRows
	for i, r := range runs {
		if runIDs[i] == "" {
			continue
		}
		b, err := json.Marshal(r.events)
		if err != nil {
			return nil, err
		}
		rIDs, fns, eventIDs, evs = append(rIDs, runIDs[i]), append(fns, r.functionID), append(eventIDs, r.events[0].ID), append(evs, b)
		var parent, parentStep *string
		if r.parentRunID != "" {
			parent, parentStep = &r.parentRunID, &r.parentStep
		}
		parents, parentSteps = append(parents, parent), append(parentSteps, parentStep)
		starts, finishes = append(starts, interval(r.cfg.StartMS)), append(finishes, interval(r.cfg.FinishMS))
		for _, co := range r.cfg.CancelOn {
			var exp *time.Time
			if co.TimeoutMS > 0 {
				t := time.Now().Add(time.Duration(co.TimeoutMS) * time.Millisecond)
				exp = &t
			}
			w.add(c, runIDs[i], "cancel", nil, co.Event, co.If, r.events[0], exp)
		}
	}
	if len(rIDs) == 0 {
		return runIDs, nil
	}
	notify := notifyInTx && c.notifyDue()
	var inserted, notified int
	err := tx.QueryRow(ctx, c.q.InsertRuns, rIDs, fns, eventIDs, evs, parents, parentSteps, starts, finishes,
		c.notifyPayload, riverjobs.Kind, runJobMaxAttempts, c.cfg.Queue, c.notifyChannel, notify).Scan(&inserted, &notified)
	if err != nil {
		return nil, fmt.Errorf("durable: inserting runs: %w", err)
	}
	if err := w.insert(ctx, c, tx); err != nil {
		return nil, err
	}
	return runIDs, nil
}

// notifier rate-limits the NOTIFY that wakes River's producers: Postgres
// serialises the commits of notifying transactions, so one every
// notifyEvery per process is plenty (producers also poll).
type notifier struct {
	mu      sync.Mutex
	last    time.Time
	pending bool
}

const notifyEvery = 5 * time.Millisecond

// notifyDue reports whether a notification may be sent now (and records
// it as sent).
func (c *Client) notifyDue() bool {
	c.notes.mu.Lock()
	defer c.notes.mu.Unlock()
	if time.Since(c.notes.last) < notifyEvery {
		return false
	}
	c.notes.last = time.Now()
	return true
}

// notifyProducers tells River's producers that runs are ready, after the
// transaction that created them committed: at once, or, within
// notifyEvery of the previous notification, once that interval ends.
func (c *Client) notifyProducers(ctx context.Context) {
	c.notes.mu.Lock()
	wait := notifyEvery - time.Since(c.notes.last)
	if wait <= 0 {
		c.notes.last = time.Now()
		c.notes.mu.Unlock()
		c.sendNotify(ctx)
		return
	}
	if c.notes.pending {
		c.notes.mu.Unlock()
		return
	}
	c.notes.pending = true
	c.notes.mu.Unlock()
	time.AfterFunc(wait, func() {
		c.notes.mu.Lock()
		c.notes.pending = false
		c.notes.last = time.Now()
		c.notes.mu.Unlock()
		c.sendNotify(context.WithoutCancel(ctx))
	})
}

func (c *Client) sendNotify(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.pool.Exec(ctx, c.q.NotifyInsert, c.notifyChannel, c.notifyPayload); err != nil {
		c.logger.WarnContext(ctx, "durable: notifying producers failed; they will find the runs at their next poll", "error", err)
	}
}

// warnUnmatched logs, once per event name and client, an event that
// matched no registered trigger and no wait: often a function whose
// process never registered it (see Client.Register), or a misspelt name.
func (c *Client) warnUnmatched(ctx context.Context, e eventJSON) {
	if strings.HasPrefix(e.Name, ReservedPrefix) {
		return // system events often have no listener
	}
	if _, seen := c.unmatched.LoadOrStore(e.Name, true); seen {
		return
	}
	c.logger.WarnContext(ctx, "durable: an event started no run and matched no wait: no registered function has a trigger on its name (functions become known when a process that has them calls Register or Start); logged once per name",
		"event_name", e.Name, "event_id", e.ID)
}

// filterFailed logs a filter whose evaluation failed; the filter does not
// match. A comparison with a field the event lacks is expected (the filter
// is false) and logged at Debug, naming the expression and the field;
// anything else is a Warn.
func (c *Client) filterFailed(ctx context.Context, what string, err error, attrs ...any) {
	if mf, ok := expr.IsMissingField(err); ok {
		c.logger.DebugContext(ctx, "durable: "+what+" compares a missing field; it does not match",
			append(attrs, "expr", mf.Expr, "field", mf.Field)...)
		return
	}
	c.logger.WarnContext(ctx, "durable: "+what+" failed to evaluate; it does not match", append(attrs, "error", err)...)
}
