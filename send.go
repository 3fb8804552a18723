package durable

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/riverjobs"
)

// Send persists events and starts a run of every function whose trigger
// matches each new event. It returns the events' IDs, in order; an event
// whose ID was already seen in the last 24 hours is not delivered again and
// its ID is returned as it is.
func (c *Client) Send(ctx context.Context, events ...Event) ([]string, error) {
	prepared, err := c.prepareEvents(events)
	if err != nil {
		return nil, err
	}
	var out []string
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		out, err = c.sendPrepared(ctx, tx, prepared)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SendTx is Send inside the caller's transaction: if tx rolls back, no
// event is stored and no run starts (the outbox pattern, built in).
func (c *Client) SendTx(ctx context.Context, tx pgx.Tx, events ...Event) ([]string, error) {
	if tx == nil {
		return nil, fmt.Errorf("durable: SendTx: tx is nil")
	}
	prepared, err := c.prepareEvents(events)
	if err != nil {
		return nil, err
	}
	return c.sendPrepared(ctx, tx, prepared)
}

func (c *Client) prepareEvents(events []Event) ([]eventJSON, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("durable: Send: no events")
	}
	out := make([]eventJSON, len(events))
	for i, e := range events {
		p, err := prepareEvent(e, i, c.cfg.MaxEventSize)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// sendPrepared inserts events and fans them out to runs, in tx.
func (c *Client) sendPrepared(ctx context.Context, tx pgx.Tx, events []eventJSON) ([]string, error) {
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
	rows, err := tx.Query(ctx, c.q.get("InsertEvents"), idsArr, names, datas, tss)
	if err != nil {
		return nil, fmt.Errorf("durable: storing events: %w", err)
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("durable: storing events: %w", err)
	}
	if len(inserted) == 0 {
		return result, nil
	}
	fresh := make(map[string]bool, len(inserted))
	for _, id := range inserted {
		fresh[id] = true
	}
	var freshEvents []eventJSON
	for _, e := range uniq {
		if fresh[e.ID] {
			freshEvents = append(freshEvents, e)
		}
	}
	if err := c.fanOut(ctx, tx, freshEvents); err != nil {
		return nil, err
	}
	return result, nil
}

// fanOut starts the runs that new events trigger, in tx.
func (c *Client) fanOut(ctx context.Context, tx pgx.Tx, events []eventJSON) error {
	nameSet := map[string]bool{}
	var nameList []string
	for _, e := range events {
		if !nameSet[e.Name] {
			nameSet[e.Name] = true
			nameList = append(nameList, e.Name)
		}
	}
	type trig struct{ fn, ifExpr string }
	byName := map[string][]trig{}
	rows, err := tx.Query(ctx, c.q.get("MatchTriggers"), nameList)
	if err != nil {
		return fmt.Errorf("durable: matching triggers: %w", err)
	}
	var fn, name, ifExpr string
	_, err = pgx.ForEachRow(rows, []any{&fn, &name, &ifExpr}, func() error {
		byName[name] = append(byName[name], trig{fn, ifExpr})
		return nil
	})
	if err != nil {
		return fmt.Errorf("durable: matching triggers: %w", err)
	}
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
					evMap = e.asMap()
				}
				ok, err := c.evalFilter(t.ifExpr, evMap)
				if err != nil {
					c.logger.WarnContext(ctx, "durable: trigger filter failed; the event does not start this function",
						"function_id", t.fn, "event_id", e.ID, "if", t.ifExpr, "error", err)
					continue
				}
				if !ok {
					continue
				}
			}
			started[t.fn] = true
			newRuns = append(newRuns, pendingRun{functionID: t.fn, events: []eventJSON{e}})
		}
	}
	_, err = c.insertRuns(ctx, tx, newRuns)
	return err
}

func (c *Client) evalFilter(src string, event map[string]any) (bool, error) {
	p, err := c.exprs.Compile(src, expr.EventOnly)
	if err != nil {
		return false, err
	}
	return p.Bool(event, nil)
}

type pendingRun struct {
	functionID string
	events     []eventJSON
}

// runJobMaxAttempts is the River attempt limit of run jobs: River's own
// retries only cover infrastructure failures (a step's retries are
// counted by the library), so the limit is only a backstop.
const runJobMaxAttempts = 1000

// insertRuns creates runs and their River jobs in tx and returns the run
// IDs.
func (c *Client) insertRuns(ctx context.Context, tx pgx.Tx, runs []pendingRun) ([]string, error) {
	if len(runs) == 0 {
		return nil, nil
	}
	runIDs := make([]string, len(runs))
	params := make([]river.InsertManyParams, len(runs))
	for i := range runs {
		runIDs[i] = ids.New()
		params[i] = river.InsertManyParams{
			Args:       riverjobs.RunArgs{RunID: runIDs[i]},
			InsertOpts: &river.InsertOpts{Queue: c.cfg.Queue, MaxAttempts: runJobMaxAttempts},
		}
	}
	res, err := c.river.InsertManyTx(ctx, tx, params)
	if err != nil {
		return nil, fmt.Errorf("durable: inserting run jobs: %w", err)
	}
	fns := make([]string, len(runs))
	eventIDs := make([]string, len(runs))
	evs := make([]json.RawMessage, len(runs))
	jobIDs := make([]int64, len(runs))
	for i, r := range runs {
		b, err := json.Marshal(r.events)
		if err != nil {
			return nil, err
		}
		fns[i], eventIDs[i], evs[i], jobIDs[i] = r.functionID, r.events[0].ID, b, res[i].Job.ID
	}
	if _, err := tx.Exec(ctx, c.q.get("InsertRuns"), runIDs, fns, eventIDs, evs, jobIDs); err != nil {
		return nil, fmt.Errorf("durable: inserting runs: %w", err)
	}
	return runIDs, nil
}

// Invoke starts a run of a function directly and returns its run ID. data
// becomes the run's event data (the event is named
// "durable/function.invoked"). The function may live in another process; an
// ID no process has registered is an error wrapping [ErrFunctionNotFound].
func (c *Client) Invoke(ctx context.Context, functionID string, data any) (string, error) {
	if _, ok := c.funcs[functionID]; !ok {
		var exists bool
		if err := c.pool.QueryRow(ctx, c.q.get("FunctionExists"), functionID).Scan(&exists); err != nil {
			return "", fmt.Errorf("durable: Invoke: %w", err)
		}
		if !exists {
			return "", fmt.Errorf("durable: Invoke %q: %w", functionID, ErrFunctionNotFound)
		}
	}
	ev, err := prepareEvent(Event{Name: EventFunctionInvoked, Data: data}, 0, c.cfg.MaxEventSize)
	if err != nil {
		return "", fmt.Errorf("durable: Invoke %q: %w", functionID, err)
	}
	var runID string
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		ids, err := c.insertRuns(ctx, tx, []pendingRun{{functionID: functionID, events: []eventJSON{ev}}})
		if err != nil {
			return err
		}
		runID = ids[0]
		return nil
	})
	return runID, err
}
