// Package riverjobs holds the River job that carries a durable run and the
// worker that executes it. Most users never import it: [durable.Client]
// registers the worker itself. Apps that run their own River client
// register it with durable.Client.AddWorkers.
package riverjobs

import (
	"context"
	"time"

	"github.com/riverqueue/river"
)

// Kind is the River job kind of a durable run.
const Kind = "durable_run"

// RunArgs are the arguments of a run's River job: just the run's ID. All of
// the run's state lives in the library's tables; the job only says "work on
// this run now".
type RunArgs struct {
	RunID string `json:"run_id"`
}

// Kind implements river.JobArgs.
func (RunArgs) Kind() string { return Kind }

// Executor executes one attempt of a run.
type Executor interface {
	ExecuteRun(ctx context.Context, job *river.Job[RunArgs]) error
}

// RunWorker is the River worker for [RunArgs].
type RunWorker struct {
	river.WorkerDefaults[RunArgs]
	Exec Executor
}

// Work implements river.Worker.
func (w *RunWorker) Work(ctx context.Context, job *river.Job[RunArgs]) error {
	return w.Exec.ExecuteRun(ctx, job)
}

// Timeout disables River's job timeout: a durable run's steps may last as
// long as they need, and dead workers are detected by heartbeats instead.
func (w *RunWorker) Timeout(*river.Job[RunArgs]) time.Duration { return -1 }
