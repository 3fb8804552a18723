package maintenance

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/telemetry"
)

// DefaultBacklogEvery is how often the backlog gauges' values are read
// from the database.
const DefaultBacklogEvery = 15 * time.Second

// backlogLoop reads the queued runs per function (query Backlog) at once,
// then every BacklogEvery, into the snapshot the backlog gauges report
// when collected: a collection never queries the database. It runs only
// when the client meters; the snapshot is cleared when it stops.
func (s *Services) backlogLoop(ctx context.Context) {
	tel := s.cfg.Telemetry
	defer tel.SetBacklog(nil, time.Time{})
	every := s.cfg.BacklogEvery
	if every <= 0 {
		every = DefaultBacklogEvery
	}
	for {
		if err := s.readBacklog(ctx, tel); err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "durable: reading the backlog for metrics failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

func (s *Services) readBacklog(ctx context.Context, tel *telemetry.Telemetry) error {
	rows, err := s.pool.Query(ctx, s.q.Backlog, s.cfg.Queue)
	if err != nil {
		return err
	}
	at := time.Now()
	backlog, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (telemetry.Backlog, error) {
		var b telemetry.Backlog
		var age float64
		err := row.Scan(&b.FunctionID, &b.Queued, &age)
		b.OldestAge = time.Duration(age * float64(time.Second))
		return b, err
	})
	if err != nil {
		return err
	}
	if backlog == nil {
		backlog = []telemetry.Backlog{} // read: nothing is queued
	}
	tel.SetBacklog(backlog, at)
	return nil
}
