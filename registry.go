package durable

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/pgdurable/durable/internal/store"
)

// FunctionInfo is a function as registered in the database (by
// [Client.Register] or [Client.Start] of a process that has it).
type FunctionInfo struct {
	ID, Name string
	Triggers []Trigger
	Retries  int
	// Idempotency, CancelOn and Timeouts as registered.
	Idempotency string
	CancelOn    []CancelOn
	Timeouts    Timeouts
	// Workers are the executing processes that have the function (River
	// client IDs, with their host and PID), live or not.
	Workers []FunctionWorker
	// Live reports whether a live process has the function: when false,
	// its runs wait, queued, until one starts.
	Live bool
	// RegisteredAt is when the function was last registered.
	RegisteredAt time.Time
}

// FunctionWorker is an executing process that has a function.
type FunctionWorker struct {
	ID       string
	Hostname string
	PID      int
	LastSeen time.Time // its last heartbeat (or, once gone, when it started)
	Live     bool      // heartbeat within Config.RecoverAfter
}

// Functions lists the registered functions, with the processes that have
// them, by ID.
func (c *Client) Functions(ctx context.Context) ([]FunctionInfo, error) {
	rows, err := c.pool.Query(ctx, c.q.ListFunctions, c.cfg.RecoverAfter.Seconds())
	if err != nil {
		return nil, fmt.Errorf("durable: Functions: %w", c.explain(err))
	}
	defer rows.Close()
	var out []FunctionInfo
	for rows.Next() {
		var f FunctionInfo
		var cfgRaw, trigRaw, workRaw []byte
		if err := rows.Scan(&f.ID, &f.Name, &f.Retries, &cfgRaw, &f.RegisteredAt, &trigRaw, &workRaw); err != nil {
			return nil, fmt.Errorf("durable: Functions: %w", err)
		}
		var trigs []struct{ Event, If, Cron string }
		var workers []struct {
			ID, Hostname string
			PID          int
			LastSeen     time.Time `json:"last_seen"`
			Live         bool
		}
		if err := json.Unmarshal(trigRaw, &trigs); err != nil {
			return nil, fmt.Errorf("durable: Functions: %w", err)
		}
		if err := json.Unmarshal(workRaw, &workers); err != nil {
			return nil, fmt.Errorf("durable: Functions: %w", err)
		}
		for _, t := range trigs {
			f.Triggers = append(f.Triggers, Trigger(t))
		}
		for _, w := range workers {
			f.Workers = append(f.Workers, FunctionWorker(w))
			f.Live = f.Live || w.Live
		}
		cfg := store.DecodeFunctionConfig(cfgRaw)
		f.Idempotency = cfg.Idempotency
		f.Timeouts = Timeouts{Start: time.Duration(cfg.StartMS) * time.Millisecond, Finish: time.Duration(cfg.FinishMS) * time.Millisecond}
		for _, co := range cfg.CancelOn {
			f.CancelOn = append(f.CancelOn, CancelOn{Event: co.Event, If: co.If, Timeout: time.Duration(co.TimeoutMS) * time.Millisecond})
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("durable: Functions: %w", err)
	}
	return out, nil
}

// Unregister forgets a function removed from the code: its triggers stop
// starting runs (runs already created are kept, and run on a process that
// still has it). A process that has the function registers it again when
// it starts. An unknown ID is an error wrapping [ErrFunctionNotFound].
func (c *Client) Unregister(ctx context.Context, functionID string) error {
	tag, err := c.pool.Exec(ctx, c.q.UnregisterFunction, functionID)
	if err != nil {
		return fmt.Errorf("durable: Unregister %q: %w", functionID, c.explain(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("durable: Unregister %q: %w", functionID, ErrFunctionNotFound)
	}
	return nil
}

// recordWorkers notes that this process has its functions.
func (c *Client) recordWorkers(ctx context.Context) error {
	ids := make([]string, 0, len(c.funcs))
	for id := range c.funcs {
		ids = append(ids, id)
	}
	_, err := c.pool.Exec(ctx, c.q.RecordFunctionWorkers, ids, c.workerID)
	return err
}
