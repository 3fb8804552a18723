package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Row is what runs one statement returning a row: a pool, a connection or
// a transaction.
type Row interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Owner is the attempt that holds a run: the River client working its job
// (Worker, whose heartbeat says whether it is alive) and the attempt's own
// token. Stored as two columns, owner_worker and owner_token.
type Owner struct {
	Worker, Token string
}

// Step is a step as stored, also the memo of a run attempt.
type Step struct {
	Key      string          `json:"key"`
	Seq      int             `json:"seq"`
	Kind     string          `json:"kind"`
	Status   string          `json:"status"`
	Attempts int             `json:"attempts"`
	Output   json.RawMessage `json:"output"`
	Error    *string         `json:"error"`
	WakeAt   *time.Time      `json:"wake_at"`
	ChildRun *string         `json:"-"`
}

// stepArrays are steps as the array parameters of CommitSteps and Commit.
func stepArrays(steps []*Step) pgx.NamedArgs {
	n := len(steps)
	keys, kinds, statuses, errs := make([]string, n), make([]string, n), make([]string, n), make([]*string, n)
	seqs, attempts := make([]int32, n), make([]int32, n)
	outputs := make([][]byte, n)
	wakes := make([]*time.Time, n)
	children := make([]*string, n)
	for i, s := range steps {
		keys[i], kinds[i], statuses[i], errs[i] = s.Key, s.Kind, s.Status, s.Error
		seqs[i], attempts[i], outputs[i], wakes[i], children[i] = int32(s.Seq), int32(s.Attempts), s.Output, s.WakeAt, s.ChildRun
	}
	return pgx.NamedArgs{"keys": keys, "seqs": seqs, "kinds": kinds, "statuses": statuses, "attempts": attempts,
		"outputs": outputs, "errors": errs, "wakes": wakes, "children": children}
}

// CommitStepsIn records steps finished mid-attempt, fenced on the owner (the
// run row is locked FOR SHARE, not rewritten). It reports false when the
// fence failed: the run is no longer this attempt's, or not running.
func (q *Queries) CommitStepsIn(ctx context.Context, db Row, runID string, owner Owner, steps []*Step) (bool, error) {
	if len(steps) == 1 {
		s := steps[0]
		var one, two int
		err := db.QueryRow(ctx, q.CommitStep, pgx.NamedArgs{
			"run_id": runID, "owner_worker": owner.Worker, "owner_token": owner.Token,
			"key": s.Key, "seq": s.Seq, "kind": s.Kind, "status": s.Status, "attempts": s.Attempts,
			"output": []byte(s.Output), "error": s.Error, "wake_at": s.WakeAt, "child": s.ChildRun,
		}).Scan(&one, &two)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	}
	args := stepArrays(steps)
	args["run_id"], args["owner_worker"], args["owner_token"] = runID, owner.Worker, owner.Token
	var runs, written int
	if err := db.QueryRow(ctx, q.CommitSteps, args).Scan(&runs, &written); err != nil {
		return false, err
	}
	return runs > 0, nil
}

// CommitArgs is a full write of a run (see the Commit query).
type CommitArgs struct {
	RunID      string
	Owner      *Owner // nil releases the run
	Epoch      int64  // the fencing version the run must have
	Status     string
	Output     json.RawMessage
	Error      *string
	FnAttempts int
	WakeAt     *time.Time
	Steps      []*Step
	// A suspension completes this attempt's job, the run continuing in
	// NewJobID (inserted in the same transaction).
	JobID       int64
	CompleteJob bool
	NewJobID    *int64
	Channel     string // River's insert topic, for the parent a run's end wakes
	LogLines    int64
	// Gated: the run passes flow-control gates; a suspension or hand-back
	// gives its concurrency slots back.
	Gated bool
}

// CommitResult is what a full write did.
type CommitResult struct {
	Runs, Jobs, Events int // Runs is 0 when the fence failed
}

// CommitIn performs a full write of a run in db.
func (q *Queries) CommitIn(ctx context.Context, db Row, a CommitArgs) (CommitResult, error) {
	args := stepArrays(a.Steps)
	var worker, token *string
	if a.Owner != nil {
		worker, token = &a.Owner.Worker, &a.Owner.Token
	}
	var output any
	if a.Output != nil {
		output = []byte(a.Output)
	}
	for k, v := range map[string]any{
		"run_id": a.RunID, "owner_worker": worker, "owner_token": token, "epoch": a.Epoch, "status": a.Status,
		"output": output, "error": a.Error, "fn_attempts": a.FnAttempts, "wake_at": a.WakeAt,
		"job_id": a.JobID, "complete_job": a.CompleteJob, "channel": a.Channel, "new_job_id": a.NewJobID,
		"log_lines": a.LogLines, "gated": a.Gated,
	} {
		args[k] = v
	}
	var r CommitResult
	var released int
	err := db.QueryRow(ctx, q.Commit, args).Scan(&r.Runs, &r.Jobs, &r.Events, &released)
	return r, err
}
