package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/store"
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
	var started int
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		out, started, err = c.sendPrepared(ctx, tx, prepared, false)
		return err
	})
	if err != nil {
		return nil, c.explain(err)
	}
	if started > 0 {
		c.notifyProducers(ctx)
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
	ids, _, err := c.sendPrepared(ctx, tx, prepared, true)
	return ids, c.explain(err)
}

func (c *Client) prepareEvents(events []Event) ([]eventJSON, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("durable: Send: no events")
	}
	out := make([]eventJSON, len(events))
	for i, e := range events {
		if strings.HasPrefix(strings.TrimSpace(e.Name), ReservedPrefix) {
			return nil, fmt.Errorf("durable: event %d (%q): %w", i, e.Name, ErrReservedName)
		}
		p, err := prepareEvent(e, i, c.cfg.MaxEventSize)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

func (c *Client) evalFilter(src string, event map[string]any) (bool, error) {
	p, err := c.exprs.Compile(src, expr.EventOnly)
	if err != nil {
		return false, err
	}
	return p.Bool(event, nil)
}

type pendingRun struct {
	functionID  string
	cfg         funcConfig
	events      []eventJSON
	parentRunID string // for runs started by an "invoke" step
	parentStep  string
}

func newID() string { return ids.New() }

// runJobMaxAttempts is the River attempt limit of run jobs: River's own
// retries only cover infrastructure failures (a step's retries are
// counted by the library), so the limit is only a backstop.
const runJobMaxAttempts = 1000

// claimIdempotency blanks the IDs of runs whose function's idempotency key
// is already held (by an earlier run, or an earlier run of this batch).
func (c *Client) claimIdempotency(ctx context.Context, tx pgx.Tx, runs []pendingRun, runIDs []string) error {
	var fns, keys, ridsArr []string
	var exps []time.Time
	seen := map[[2]string]bool{}
	claimed := map[string]bool{}
	for i, r := range runs {
		if r.cfg.Idempotency == "" {
			continue
		}
		key, err := c.evalKey(r.cfg.Idempotency, r.events[0].AsMap())
		if err != nil {
			c.logger.WarnContext(ctx, "durable: idempotency key failed to evaluate; starting the run without one",
				"function_id", r.functionID, "idempotency", r.cfg.Idempotency, "error", err)
			continue
		}
		claimed[runIDs[i]] = false
		if seen[[2]string{r.functionID, key}] {
			continue
		}
		seen[[2]string{r.functionID, key}] = true
		fns, keys, ridsArr = append(fns, r.functionID), append(keys, key), append(ridsArr, runIDs[i])
		exps = append(exps, time.Now().Add(24*time.Hour))
	}
	if len(fns) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, c.q.ClaimIdempotencyKeys, fns, keys, ridsArr, exps)
	if err != nil {
		return fmt.Errorf("durable: idempotency keys: %w", err)
	}
	won, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("durable: idempotency keys: %w", err)
	}
	for _, id := range won {
		claimed[id] = true
	}
	for i, id := range runIDs {
		if ok, has := claimed[id]; has && !ok {
			runIDs[i] = ""
		}
	}
	return nil
}

func (c *Client) evalKey(src string, event map[string]any) (string, error) {
	p, err := c.exprs.Compile(src, expr.EventOnly)
	if err != nil {
		return "", err
	}
	return p.String(event, nil)
}

// waitRows collects durable_wait rows (waits and cancellation listeners)
// for one insert.
type waitRows struct {
	runIDs, kinds, names, ifs []string
	steps, paths, values      []*string
	runEvents                 []json.RawMessage
	expires                   []*time.Time
}

func (w *waitRows) add(c *Client, runID, kind string, step *string, name, ifExpr string, runEvent eventJSON, expires *time.Time) {
	ev, _ := json.Marshal(runEvent)
	path, value := c.indexKey(ifExpr, runEvent)
	w.runIDs, w.kinds, w.steps, w.names, w.ifs = append(w.runIDs, runID), append(w.kinds, kind), append(w.steps, step), append(w.names, name), append(w.ifs, ifExpr)
	w.paths, w.values, w.runEvents, w.expires = append(w.paths, path), append(w.values, value), append(w.runEvents, ev), append(w.expires, expires)
}

func (w *waitRows) insert(ctx context.Context, c *Client, tx pgx.Tx) error {
	if len(w.runIDs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, c.q.InsertWaits, w.runIDs, w.kinds, w.steps, w.names, w.paths, w.values, w.ifs, w.runEvents, w.expires)
	if err != nil {
		return fmt.Errorf("durable: inserting waits: %w", err)
	}
	return nil
}

// indexKey returns the indexable equality of a wait condition, with the
// run's event substituted, or nils when it has none (the wait is then
// found by event name alone).
func (c *Client) indexKey(ifExpr string, runEvent eventJSON) (*string, *string) {
	if ifExpr == "" {
		return nil, nil
	}
	p, err := c.exprs.Compile(ifExpr, expr.EventAndAsync)
	if err != nil {
		return nil, nil
	}
	eq, ok := p.AsyncEquality()
	if !ok {
		return nil, nil
	}
	key, ok, err := eq.Value.Key(runEvent.AsMap(), nil)
	if err != nil || !ok {
		return nil, nil
	}
	return &eq.Path, &key
}

// Invoke starts a run of a function directly and returns its run ID. data
// becomes the run's event data (the event is named
// "durable/function.invoked"). The function may live in another process; an
// ID no process has registered is an error wrapping [ErrFunctionNotFound].
func (c *Client) Invoke(ctx context.Context, functionID string, data any) (string, error) {
	var runID string
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) (err error) {
		runID, err = c.invokeTx(ctx, tx, functionID, data, "", "", false)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("durable: Invoke %q: %w", functionID, c.explain(err))
	}
	c.notifyProducers(ctx)
	return runID, nil
}

// invokeTx starts a run of functionID in tx, with data as its
// "durable/function.invoked" event, as the child of parentRun's step
// parentStep when they are set.
func (c *Client) invokeTx(ctx context.Context, tx pgx.Tx, functionID string, data any, parentRun, parentStep string, notifyInTx bool) (string, error) {
	cfg, err := c.functionConfig(ctx, tx, functionID)
	if err != nil {
		return "", err
	}
	if cfg.System {
		return "", reservedFunction(functionID)
	}
	ev, err := prepareEvent(Event{Name: EventFunctionInvoked, Data: data}, 0, c.cfg.MaxEventSize)
	if err != nil {
		return "", err
	}
	ids, err := c.insertRuns(ctx, tx, []pendingRun{{functionID: functionID, cfg: cfg, events: []eventJSON{ev}, parentRunID: parentRun, parentStep: parentStep}}, notifyInTx)
	if err != nil {
		return "", err
	}
	if ids[0] == "" {
		return "", fmt.Errorf("a run of %q with the same idempotency key exists", functionID)
	}
	return ids[0], nil
}

// functionConfig returns a function's stored settings, or an error
// wrapping ErrFunctionNotFound when no process has registered it. A
// function of this client is known even before Start.
func (c *Client) functionConfig(ctx context.Context, db execer, functionID string) (funcConfig, error) {
	if d, ok := c.funcs[functionID]; ok {
		return d.config(), nil
	}
	var raw []byte
	err := db.QueryRow(ctx, c.q.FunctionConfig, functionID).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return funcConfig{}, ErrFunctionNotFound
	}
	if err != nil {
		return funcConfig{}, err
	}
	return store.DecodeFunctionConfig(raw), nil
}
