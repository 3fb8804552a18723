// Package router decides what events do: it stores them (deduplicated),
// starts a run of every function whose trigger matches, resumes the waits
// they match and cancels the runs whose CancelOn they match, all in the
// transaction that stores them. It also creates runs (with their River
// jobs, idempotency keys and cancellation listeners), cancels them, and
// tells River's producers about new work.
//
// The queries that find what an event matches go to Postgres in one batch
// (one round trip), whatever the number of events.
package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/riverbridge"
	"github.com/pgdurable/durable/internal/store"
	"github.com/pgdurable/durable/internal/telemetry"
	"github.com/pgdurable/durable/riverjobs"
)

// Config is what a Router needs.
type Config struct {
	Pool    *pgxpool.Pool
	Queries *store.Queries
	Exprs   *expr.Cache
	Logger  *slog.Logger
	River   *river.Client[pgx.Tx] // for JobCancelTx
	Queue   string                // the River queue of run jobs
	Schema  string
	// Local returns the config of a function this process has (known
	// before it is registered).
	Local func(functionID string) (store.FunctionConfig, bool)
	// KickRouter asks the routing loop to route stored system events now.
	KickRouter func()
	// Telemetry stores the senders' trace context with events and counts
	// cancelled runs; nil for none.
	Telemetry *telemetry.Telemetry
	// RecoverAfter is how long a concurrency slot reserved for a new run
	// stays reserved if no attempt takes it (Config.RecoverAfter).
	RecoverAfter time.Duration
	// KickWaker tells this process's waker that a job is due at t (a run
	// collecting events, due when its collection ends); nil for none.
	KickWaker func(t time.Time)
}

// Router routes events and creates and cancels runs.
type Router struct {
	pool       *pgxpool.Pool
	q          *store.Queries
	exprs      *expr.Cache
	logger     *slog.Logger
	river      *river.Client[pgx.Tx]
	queue      string
	channel    string // River's insert topic
	payload    string // River's insert notification for the queue
	local      func(string) (store.FunctionConfig, bool)
	kickRouter func()
	tel        *telemetry.Telemetry

	recoverAfter time.Duration
	kickWaker    func(time.Time)

	notes     notifier
	combine   store.Group[*sendCall] // concurrent Sends sharing transactions (combine.go)
	unmatched sync.Map               // event names warned about (an event that started nothing)
	listened  sync.Map               // system event names this process registered waits on
}

// New builds a Router.
func New(cfg Config) *Router {
	rt := &Router{
		pool: cfg.Pool, q: cfg.Queries, exprs: cfg.Exprs, logger: cfg.Logger, river: cfg.River,
		queue: cfg.Queue, channel: riverbridge.InsertTopic(cfg.Schema), payload: riverbridge.InsertPayload(cfg.Queue),
		local: cfg.Local, kickRouter: cfg.KickRouter, tel: cfg.Telemetry, recoverAfter: cfg.RecoverAfter, kickWaker: cfg.KickWaker,
	}
	rt.combine = store.Group[*sendCall]{Runners: combineSenders, Max: combineCalls, Run: rt.sendShared}
	return rt
}

// Channel is River's insert topic, on which producers are told of new jobs.
func (rt *Router) Channel() string { return rt.channel }

// Payload is River's insert notification for the run jobs' queue.
func (rt *Router) Payload() string { return rt.payload }

// RunJobMaxAttempts is the River attempt limit of run jobs: River's own
// retries only cover infrastructure failures (a step's retries are counted
// by the library), so the limit is only a backstop.
const RunJobMaxAttempts = 1000

// maxIndexedLeaves bounds the scalar leaves of an event probed against the
// waits' index keys (an event is at most MaxEventSize; a wait keyed on a
// leaf beyond this many is not found by index).
const maxIndexedLeaves = 5000

// SelfCancel tells a StepTx whether the events it sent cancelled its own
// run (see deliver); attach it with WithSelfCancel.
type SelfCancel struct {
	RunID string
	Hit   bool
}

type selfCancelKey struct{}

// WithSelfCancel returns ctx carrying sc.
func WithSelfCancel(ctx context.Context, sc *SelfCancel) context.Context {
	return context.WithValue(ctx, selfCancelKey{}, sc)
}

// trigger is a function trigger on an event name, with its function's
// stored settings.
type trigger struct {
	fn, ifExpr string
	cfg        store.FunctionConfig
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

// queueMatches queues, on b, the queries that find the triggers and waits
// of events; readMatches reads their results in the same order.
func (rt *Router) queueMatches(b *pgx.Batch, events []store.Event) {
	seen := map[string]bool{}
	var names []string
	for _, e := range events {
		if !seen[e.Name] {
			seen[e.Name] = true
			names = append(names, e.Name)
		}
	}
	b.Queue(rt.q.MatchTriggers, names)
	for _, e := range events {
		var paths, values []string
		for p, v := range expr.Leaves(e.AsMap(), maxIndexedLeaves) {
			paths, values = append(paths, p), append(values, v)
		}
		b.Queue(rt.q.MatchWaits, e.Name, paths, values)
	}
}

func (rt *Router) readMatches(br pgx.BatchResults, events []store.Event) (map[string][]trigger, [][]waitCand, error) {
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

// Send stores events and routes the new ones, in tx. It returns
// the events' IDs and how many runs it started. When notifyInTx is false
// the caller must call NotifyProducers after committing tx.
func (rt *Router) Send(ctx context.Context, tx pgx.Tx, events []store.Event, notifyInTx bool) ([]string, int, error) {
	result := make([]string, len(events))
	seen := map[string]bool{}
	var uniq []store.Event
	for i, e := range events {
		result[i] = e.ID
		if !seen[e.ID] {
			seen[e.ID] = true
			uniq = append(uniq, e)
		}
	}
	// The sender's trace context, stored with the events (and with the
	// runs they start, whose spans link to it).
	var traceJSON []byte
	if rt.tel != nil {
		if tc := rt.tel.TraceContext(ctx); tc != nil {
			traceJSON, _ = json.Marshal(tc)
			for i := range uniq {
				uniq[i].Trace = tc
			}
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
	b.Queue(rt.q.LockEventNameShared, names)
	b.Queue(rt.q.InsertEvents, idsArr, names, datas, tss, traceJSON)
	rt.queueMatches(b, uniq)
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
		byName, waits, err := rt.readMatches(br, uniq)
		return fresh, byName, waits, err
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, fmt.Errorf("durable: storing events: %w", err)
	}
	var freshEvents []store.Event
	var freshWaits [][]waitCand
	for i, e := range uniq {
		if fresh[e.ID] {
			freshEvents = append(freshEvents, e)
			freshWaits = append(freshWaits, waits[i])
		}
	}
	n, err := rt.act(ctx, tx, freshEvents, byName, freshWaits, notifyInTx)
	return result, n, err
}

// fanOut routes events already stored (system events), in tx.
func (rt *Router) fanOut(ctx context.Context, tx pgx.Tx, events []store.Event) error {
	b := &pgx.Batch{}
	rt.queueMatches(b, events)
	br := tx.SendBatch(ctx, b)
	byName, waits, err := rt.readMatches(br, events)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = rt.act(ctx, tx, events, byName, waits, true)
	return err
}

// act starts the triggered runs and resumes or cancels the matched runs.
func (rt *Router) act(ctx context.Context, tx pgx.Tx, events []store.Event, byName map[string][]trigger, waits [][]waitCand, notifyInTx bool) (int, error) {
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
				ok, err := rt.evalFilter(t.ifExpr, evMap)
				if err != nil {
					rt.filterFailed(ctx, "trigger filter", err, "function_id", t.fn, "event_id", e.ID)
					continue
				}
				if !ok {
					continue
				}
			}
			started[t.fn] = true
			newRuns = append(newRuns, pendingRun{functionID: t.fn, cfg: t.cfg, events: []store.Event{e}})
		}
	}
	for i, e := range events {
		if len(byName[e.Name]) == 0 && len(waits[i]) == 0 {
			rt.warnUnmatched(ctx, e)
		}
	}
	newRuns, created, err := rt.flowRuns(ctx, tx, newRuns, notifyInTx)
	if err != nil {
		return 0, err
	}
	ids, err := rt.createRuns(ctx, tx, newRuns, notifyInTx)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		if id != "" {
			created++
		}
	}
	for i, e := range events {
		if err := rt.deliver(ctx, tx, e, waits[i]); err != nil {
			return 0, err
		}
	}
	// The new runs pass their gates last: deliveries and cancellations lock
	// run rows (and release those runs' gates), which come before gates in
	// the lock order.
	if err := rt.enqueue(ctx, tx, newRuns, ids); err != nil {
		return 0, err
	}
	return created, nil
}

// deliver resumes the waits and cancels the runs an event matches.
func (rt *Router) deliver(ctx context.Context, tx pgx.Tx, e store.Event, cands []waitCand) error {
	if len(cands) == 0 {
		return nil
	}
	evMap := e.AsMap()
	e.Trace = nil // a waiting step's output is the event as functions see it
	// Newest runs first: a child run is newer than its parent, and a
	// child's end locks the child, then the parent; ending both here in
	// the same order cannot deadlock with it.
	sort.Slice(cands, func(i, j int) bool { return cands[i].runID > cands[j].runID })
	for _, k := range cands {
		if k.ifExpr != "" {
			var runEvent store.Event
			if err := json.Unmarshal(k.runEvent, &runEvent); err != nil {
				continue
			}
			ok, err := rt.EvalWait(k.ifExpr, runEvent.AsMap(), evMap)
			if err != nil {
				rt.filterFailed(ctx, k.kind+" condition", err, "run_id", k.runID, "event_id", e.ID)
			}
			if err != nil || !ok {
				continue
			}
		}
		switch k.kind {
		case "cancel":
			ok, err := rt.CancelRun(ctx, tx, k.runID, fmt.Sprintf("cancelled by event %s (%s)", e.ID, e.Name))
			if err != nil {
				return err
			}
			if sc, _ := ctx.Value(selfCancelKey{}).(*SelfCancel); ok && sc != nil && sc.RunID == k.runID {
				sc.Hit = true // a StepTx's own events cancelled its run
			}
		case "wait":
			out, err := json.Marshal(e)
			if err != nil {
				return err
			}
			var delivered bool // false: another event, or the timeout, took the wait first
			if err := tx.QueryRow(ctx, rt.q.TakeWait, k.id, k.runID, out, rt.channel).Scan(&delivered); err != nil {
				return fmt.Errorf("durable: delivering event to run %s: %w", k.runID, err)
			}
		}
	}
	return nil
}

// insertRuns creates runs, their River jobs and their cancellation
// listeners in tx, and returns the run IDs in order ("" for a run not
// created because its idempotency key was taken), and passes the new runs' flow-control
// gates (enqueue).
func (rt *Router) insertRuns(ctx context.Context, tx pgx.Tx, runs []pendingRun, notifyInTx bool) ([]string, error) {
	runIDs, err := rt.createRuns(ctx, tx, runs, notifyInTx)
	if err != nil {
		return nil, err
	}
	if err := rt.enqueue(ctx, tx, runs, runIDs); err != nil {
		return nil, err
	}
	return runIDs, nil
}

// createRuns is insertRuns without the flow-control gates (the caller
// passes them with enqueue).
func (rt *Router) createRuns(ctx context.Context, tx pgx.Tx, runs []pendingRun, notifyInTx bool) ([]string, error) {
	if len(runs) == 0 {
		return nil, nil
	}
	runIDs := make([]string, len(runs))
	for i, r := range runs {
		runIDs[i] = r.id
		if runIDs[i] == "" {
			runIDs[i] = ids.New()
		}
	}
	if err := rt.claimIdempotency(ctx, tx, runs, runIDs); err != nil {
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
			w.add(rt, runIDs[i], "cancel", nil, co.Event, co.If, r.events[0], exp)
		}
	}
	if len(rIDs) == 0 {
		return runIDs, nil
	}
	notify := notifyInTx && rt.notifyDue()
	var inserted, notified int
	err := tx.QueryRow(ctx, rt.q.InsertRuns, rIDs, fns, eventIDs, evs, parents, parentSteps, starts, finishes,
		rt.payload, riverjobs.Kind, RunJobMaxAttempts, rt.queue, rt.channel, notify).Scan(&inserted, &notified)
	if err != nil {
		return nil, fmt.Errorf("durable: inserting runs: %w", err)
	}
	if err := w.insert(ctx, rt, tx); err != nil {
		return nil, err
	}
	return runIDs, nil
}

// warnUnmatched logs, once per event name and client, an event that
// matched no registered trigger and no wait: often a function whose
// process never registered it (see Client.Register), or a misspelt name.
func (rt *Router) warnUnmatched(ctx context.Context, e store.Event) {
	if strings.HasPrefix(e.Name, failure.ReservedPrefix) {
		return // system events often have no listener
	}
	if _, seen := rt.unmatched.LoadOrStore(e.Name, true); seen {
		return
	}
	rt.logger.WarnContext(ctx, "durable: an event started no run and matched no wait: no registered function has a trigger on its name (functions become known when a process that has them calls Register or Start); logged once per name",
		"event_name", e.Name, "event_id", e.ID)
}

// filterFailed logs a filter whose evaluation failed; the filter does not
// match. A comparison with a field the event lacks is expected (the filter
// is false) and logged at Debug, naming the expression and the field;
// anything else is a Warn.
func (rt *Router) filterFailed(ctx context.Context, what string, err error, attrs ...any) {
	if mf, ok := expr.IsMissingField(err); ok {
		rt.logger.DebugContext(ctx, "durable: "+what+" compares a missing field; it does not match",
			append(attrs, "expr", mf.Expr, "field", mf.Field)...)
		return
	}
	rt.logger.WarnContext(ctx, "durable: "+what+" failed to evaluate; it does not match", append(attrs, "error", err)...)
}

func (rt *Router) evalFilter(src string, event map[string]any) (bool, error) {
	p, err := rt.exprs.Compile(src, expr.EventOnly)
	if err != nil {
		return false, err
	}
	return p.Bool(event, nil)
}

type pendingRun struct {
	functionID  string
	cfg         store.FunctionConfig
	events      []store.Event
	parentRunID string // for runs started by an "invoke" step
	parentStep  string
	id          string    // set when flow control needed it before the insert
	startAt     time.Time // a run collecting events (Debounce, Batch): when its job is due
}

// claimIdempotency blanks the IDs of runs whose function's idempotency key
// is already held (by an earlier run, or an earlier run of this batch).
func (rt *Router) claimIdempotency(ctx context.Context, tx pgx.Tx, runs []pendingRun, runIDs []string) error {
	var fns, keys, ridsArr []string
	var exps []time.Time
	seen := map[[2]string]bool{}
	claimed := map[string]bool{}
	for i, r := range runs {
		if r.cfg.Idempotency == "" {
			continue
		}
		key, err := rt.evalKey(r.cfg.Idempotency, r.events[0].AsMap())
		if err != nil {
			rt.logger.WarnContext(ctx, "durable: idempotency key failed to evaluate; starting the run without one",
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
	rows, err := tx.Query(ctx, rt.q.ClaimIdempotencyKeys, fns, keys, ridsArr, exps)
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

func (rt *Router) evalKey(src string, event map[string]any) (string, error) {
	p, err := rt.exprs.Compile(src, expr.EventOnly)
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

func (w *waitRows) add(rt *Router, runID, kind string, step *string, name, ifExpr string, runEvent store.Event, expires *time.Time) {
	runEvent.Trace = nil // conditions see the event without it
	ev, _ := json.Marshal(runEvent)
	path, value := rt.indexKey(ifExpr, runEvent)
	w.runIDs, w.kinds, w.steps, w.names, w.ifs = append(w.runIDs, runID), append(w.kinds, kind), append(w.steps, step), append(w.names, name), append(w.ifs, ifExpr)
	w.paths, w.values, w.runEvents, w.expires = append(w.paths, path), append(w.values, value), append(w.runEvents, ev), append(w.expires, expires)
}

func (w *waitRows) insert(ctx context.Context, rt *Router, tx pgx.Tx) error {
	if len(w.runIDs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, rt.q.InsertWaits, w.runIDs, w.kinds, w.steps, w.names, w.paths, w.values, w.ifs, w.runEvents, w.expires)
	if err != nil {
		return fmt.Errorf("durable: inserting waits: %w", err)
	}
	return nil
}

// indexKey returns the indexable equality of a wait condition, with the
// run's event substituted, or nils when it has none (the wait is then
// found by event name alone).
func (rt *Router) indexKey(ifExpr string, runEvent store.Event) (*string, *string) {
	if ifExpr == "" {
		return nil, nil
	}
	p, err := rt.exprs.Compile(ifExpr, expr.EventAndAsync)
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

// Invoke starts a run of functionID in tx, with data (at most
// maxEventSize bytes of JSON) as its "durable/function.invoked" event, as
// the child of parentRun's step parentStep when they are set (then the
// producers are told in tx; else the caller calls NotifyProducers after
// committing).
func (rt *Router) Invoke(ctx context.Context, tx pgx.Tx, functionID string, data any, maxEventSize int, parentRun, parentStep string) (string, error) {
	ev, err := PrepareEvent("", store.EventFunctionInvoked, data, time.Time{}, 0, maxEventSize)
	if err != nil {
		return "", err
	}
	cfg, err := rt.FunctionConfig(ctx, tx, functionID)
	if err != nil {
		return "", err
	}
	if cfg.System {
		return "", failure.ReservedFunction(functionID)
	}
	if rt.tel != nil && ev.Trace == nil {
		ev.Trace = rt.tel.TraceContext(ctx) // the invoker's: the run's spans link to it
	}
	ids, err := rt.insertRuns(ctx, tx, []pendingRun{{functionID: functionID, cfg: cfg, events: []store.Event{ev}, parentRunID: parentRun, parentStep: parentStep}}, parentRun != "")
	if err != nil {
		return "", err
	}
	if ids[0] == "" {
		return "", fmt.Errorf("a run of %q with the same idempotency key exists", functionID)
	}
	return ids[0], nil
}

// FunctionConfig returns a function's stored settings, or an error
// wrapping ErrFunctionNotFound when no process has registered it. A
// function of this client is known even before Start.
func (rt *Router) FunctionConfig(ctx context.Context, db store.Row, functionID string) (store.FunctionConfig, error) {
	if cfg, ok := rt.local(functionID); ok {
		return cfg, nil
	}
	var raw []byte
	err := db.QueryRow(ctx, rt.q.FunctionConfig, functionID).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.FunctionConfig{}, failure.ErrFunctionNotFound
	}
	if err != nil {
		return store.FunctionConfig{}, err
	}
	return store.DecodeFunctionConfig(raw), nil
}

// ListenName records, once per name and process, that a wait listens to a
// system event name, under the name's exclusive lock (see durable_end_run).
func (rt *Router) ListenName(ctx context.Context, name string) error {
	if _, done := rt.listened.Load(name); done {
		return nil
	}
	err := pgx.BeginFunc(ctx, rt.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, rt.q.LockEventName, []string{name}); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, rt.q.ListenName, name)
		return err
	})
	if err == nil {
		rt.listened.Store(name, true)
	}
	return err
}

func (rt *Router) EvalWait(src string, event, async map[string]any) (bool, error) {
	p, err := rt.exprs.Compile(src, expr.EventAndAsync)
	if err != nil {
		return false, err
	}
	return p.Bool(event, async)
}

// CancelRun cancels a live run in tx (emitting durable/function.cancelled,
// telling a waiting parent) and its River job: at once when the job waits
// in the queue, by cancelling its context when it runs. It reports false
// for a run that is not live.
func (rt *Router) CancelRun(ctx context.Context, tx pgx.Tx, runID, reason string) (bool, error) {
	var jobID *int64
	var events int
	var functionID string
	err := tx.QueryRow(ctx, rt.q.CancelRun, runID, reason, rt.channel).Scan(&jobID, &events, &functionID)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if events > 0 {
		rt.kickRouter()
	}
	if rt.tel != nil {
		// Counted when the cancelling statement succeeds (the rare caller
		// that then rolls back is counted all the same).
		rt.tel.RunEnded(ctx, functionID, store.RunCancelled)
	}
	if jobID != nil {
		if _, err := rt.river.JobCancelTx(ctx, tx, *jobID); err != nil && !errors.Is(err, pgx.ErrNoRows) && !errors.Is(err, river.ErrNotFound) {
			return false, fmt.Errorf("durable: cancelling job %d: %w", *jobID, err)
		}
	}
	return true, nil
}

func (rt *Router) RouteOnce(ctx context.Context) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, rt.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, rt.q.UnroutedEvents)
		if err != nil {
			return err
		}
		events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Event, error) {
			var e store.Event
			err := row.Scan(&e.ID, &e.Name, &e.Data, &e.TS)
			return e, err
		})
		if err != nil || len(events) == 0 {
			return err
		}
		n = len(events)
		if err := rt.fanOut(ctx, tx, events); err != nil {
			return err
		}
		ids := make([]string, len(events))
		for i, e := range events {
			ids[i] = e.ID
		}
		_, err = tx.Exec(ctx, rt.q.MarkRouted, ids)
		return err
	})
	return n, err
}

// interval renders milliseconds as a Postgres interval, or nil.
func interval(ms int64) *string {
	if ms <= 0 {
		return nil
	}
	s := strconv.FormatInt(ms, 10) + " milliseconds"
	return &s
}

// StartRun creates a run of functionID for ev in tx (a cron tick's), and
// returns its ID ("" when its idempotency key is taken).
func (rt *Router) StartRun(ctx context.Context, tx pgx.Tx, functionID string, cfg store.FunctionConfig, ev store.Event) (string, error) {
	ids, err := rt.insertRuns(ctx, tx, []pendingRun{{functionID: functionID, cfg: cfg, events: []store.Event{ev}}}, true)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// InsertWait stores a run's wait for an event, in tx.
func (rt *Router) InsertWait(ctx context.Context, tx pgx.Tx, runID, stepKey, eventName, ifExpr string, trigger store.Event, expires time.Time) error {
	var w waitRows
	w.add(rt, runID, "wait", &stepKey, eventName, ifExpr, trigger, &expires)
	return w.insert(ctx, rt, tx)
}
