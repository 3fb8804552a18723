package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// FunctionRecord is a function as registered.
type FunctionRecord struct {
	ID, Name string
	Retries  int
	Config   FunctionConfig
	Triggers []TriggerRecord
}

// TriggerRecord is a registered trigger: Event or Cron.
type TriggerRecord struct {
	Event, If, Cron string
}

// RegisterFunctions records functions and replaces their triggers, in one
// transaction.
func (q *Queries) RegisterFunctions(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, fns []FunctionRecord) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, q.LockRegistry); err != nil {
			return fmt.Errorf("durable: registering functions: %w", err)
		}
		for _, f := range fns {
			cfg, err := json.Marshal(f.Config)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, q.UpsertFunction, f.ID, f.Name, f.Retries, cfg); err != nil {
				return fmt.Errorf("durable: registering function %q: %w", f.ID, err)
			}
			if _, err := tx.Exec(ctx, q.DeleteTriggers, f.ID); err != nil {
				return fmt.Errorf("durable: registering function %q: %w", f.ID, err)
			}
			if len(f.Triggers) == 0 {
				continue
			}
			var idx []int32
			var names, ifs, crons []string
			for i, t := range f.Triggers {
				idx = append(idx, int32(i))
				names, ifs, crons = append(names, t.Event), append(ifs, t.If), append(crons, t.Cron)
			}
			if _, err := tx.Exec(ctx, q.InsertTriggers, f.ID, idx, names, ifs, crons); err != nil {
				return fmt.Errorf("durable: registering triggers of %q: %w", f.ID, err)
			}
		}
		return nil
	})
}
