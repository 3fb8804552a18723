package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/runlist"
)

// Run is one execution of one function for one trigger.
type Run struct {
	ID         string
	FunctionID string
	Status     RunStatus
	EventIDs   []string
	Output     json.RawMessage // the function's result, when completed
	Error      string          // when failed or cancelled (while running: the last error being retried)
	Steps      []RunStep       // filled by GetRun and WaitRun, in the order they first ran
	CreatedAt  time.Time
	StartedAt  *time.Time
	EndedAt    *time.Time
	// ParentRunID is the run whose "invoke" step started this one, if any.
	ParentRunID string
	// RerunOf is the run this one reruns (see [Client.Rerun]), if any.
	RerunOf string
}

// RunStatus is the state of a run.
type RunStatus string

// Run statuses.
const (
	RunQueued    RunStatus = "queued"
	RunRunning   RunStatus = "running" // includes sleeping and waiting
	RunCompleted RunStatus = "completed"
	RunFailed    RunStatus = "failed"
	RunCancelled RunStatus = "cancelled"
	// RunSkipped is an end state: flow control (RateLimit, Singleton)
	// turned the run away; its Error names the reason and the option.
	// WaitRun returns it and RunsForEvent finds it for the event.
	RunSkipped RunStatus = "skipped"
)

// Done reports whether the status is final.
func (s RunStatus) Done() bool {
	return s == RunCompleted || s == RunFailed || s == RunCancelled || s == RunSkipped
}

// RunStep is a step of a run as recorded.
type RunStep struct {
	ID       string // with its counter suffix, e.g. "fetch-data:1"
	Kind     string // "step", "sleep", "wait", "invoke", "send"
	Status   string // "completed", "failed", "retrying", "sleeping", "waiting", "timed_out", "cancelled" (a step left waiting when its run ended)
	Attempts int
	Output   json.RawMessage
	Error    string
	// ChildRunID is the run an "invoke" step started.
	ChildRunID string
	// FirstRecorded is when the step was first recorded: for a sleep, a
	// wait or an invoke, when it began; for a Step, when its first attempt
	// ended (it ran since the step before it).
	FirstRecorded time.Time
	// LastRecorded is when the step was last written (its end, once it has
	// ended).
	LastRecorded time.Time
	// WakeAt is a sleeping, waiting or retrying step's deadline: when the
	// sleep ends, the wait times out, or the next attempt is due.
	WakeAt *time.Time
	// Failures lists every failed attempt, oldest first (Error holds the
	// last one's message).
	Failures []StepFailure
}

// StepFailure is one failed attempt of a step.
type StepFailure struct {
	Attempt int       `json:"attempt"` // 1-based
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// GetRun returns a run with its steps, or an error wrapping
// [ErrRunNotFound].
func (c *Client) GetRun(ctx context.Context, runID string) (*Run, error) {
	run, err := scanRun(c.pool.QueryRow(ctx, c.q.GetRun, runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("durable: run %q: %w", runID, ErrRunNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("durable: GetRun: %w", err)
	}
	rows, err := c.pool.Query(ctx, c.q.GetSteps, runID)
	if err != nil {
		return nil, fmt.Errorf("durable: GetRun: %w", err)
	}
	var s RunStep
	var out, failures []byte
	_, err = pgx.ForEachRow(rows, []any{&s.ID, &s.Kind, &s.Status, &s.Attempts, &out, &s.Error, &s.ChildRunID,
		&s.FirstRecorded, &s.LastRecorded, &s.WakeAt, &failures}, func() error {
		step := s
		step.Failures = nil
		if err := json.Unmarshal(failures, &step.Failures); err != nil {
			return fmt.Errorf("step %q failures: %w", s.ID, err)
		}
		if out != nil {
			step.Output = json.RawMessage(append([]byte(nil), out...))
		}
		run.Steps = append(run.Steps, step)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("durable: GetRun: %w", err)
	}
	return run, nil
}

// WaitRun waits until the run ends (completed, failed or cancelled) or ctx
// is done, and returns it with its steps.
func (c *Client) WaitRun(ctx context.Context, runID string) (*Run, error) {
	delay := 5 * time.Millisecond
	for {
		run, err := c.GetRun(ctx, runID)
		if err != nil {
			return nil, err
		}
		if run.Status.Done() {
			return run, nil
		}
		select {
		case <-ctx.Done():
			return run, fmt.Errorf("durable: WaitRun %q: %w", runID, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 250*time.Millisecond)
	}
}

// RunsForEvent returns the runs an event started, oldest first (without
// their steps).
func (c *Client) RunsForEvent(ctx context.Context, eventID string) ([]*Run, error) {
	rows, err := c.pool.Query(ctx, c.q.RunsForEvent, eventID)
	if err != nil {
		return nil, fmt.Errorf("durable: RunsForEvent: %w", err)
	}
	defer rows.Close()
	var runs []*Run
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, fmt.Errorf("durable: RunsForEvent: %w", err)
		}
		runs = append(runs, r)
	}
	return runs, rows.Err()
}

// Cancel cancels a run. A queued, sleeping or retrying run ends as
// cancelled at once; a running one has its context cancelled and runs no
// further step (a step in flight has its result discarded, and a StepTx in
// flight rolls back). Cancelling a run that already ended is a no-op; an
// unknown run is an error wrapping [ErrRunNotFound].
func (c *Client) Cancel(ctx context.Context, runID string) error {
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		cancelled, err := c.router.CancelRun(ctx, tx, runID, "cancelled")
		if err != nil {
			return fmt.Errorf("durable: Cancel: %w", err)
		}
		if cancelled {
			return nil
		}
		var exists bool
		if err := tx.QueryRow(ctx, c.q.RunExists, runID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return fmt.Errorf("durable: Cancel %q: %w", runID, ErrRunNotFound)
		}
		return nil
	})
}

func scanRun(row pgx.Row) (*Run, error) {
	var r runlist.Run
	if err := row.Scan(runlist.Columns(&r)...); err != nil {
		return nil, err
	}
	return publicRun(&r), nil
}

// publicRun is a stored run as the runs API shows it.
func publicRun(r *runlist.Run) *Run {
	out := &Run{ID: r.ID, FunctionID: r.FunctionID, Status: RunStatus(r.Status), EventIDs: r.EventIDs, Error: r.Error,
		CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, EndedAt: r.EndedAt, ParentRunID: r.ParentRunID, RerunOf: r.RerunOf}
	if r.Output != nil {
		out.Output = json.RawMessage(r.Output)
	}
	return out
}
