// Package durable gives Postgres-backed Go apps durable functions:
// functions triggered by events or invoked directly, made of memoized steps,
// that survive crashes and deploys, sleep for hours without holding
// anything, and retry each step on its own. There is no server to run:
// Postgres is the queue and the state store, River is the job engine, and
// your own worker process executes the functions.
//
// # Functions and steps
//
// Define a function with [NewFunction]. Its body calls steps: [Step] runs a
// piece of code once per run and memoizes its JSON result; [StepTx] does the
// same inside a database transaction that also records the step, so the
// app's writes and the step's completion commit together (exactly once);
// [Sleep] and [SleepUntil] suspend the run without holding a goroutine,
// connection or worker slot.
//
// When a run resumes (after a sleep, a retry or a crash), the function is
// called again from the top: completed steps return their recorded results
// without running, and execution continues at the first step that has not
// completed. Code outside steps must therefore be deterministic; put side
// effects in steps.
//
// # Events
//
// [Client.Send] and [Client.SendTx] persist events and start one run of
// every function whose [Trigger] matches, in the same transaction (SendTx:
// the caller's). Events with an ID seen in the last 24 hours are not
// delivered again. Trigger filters are CEL expressions over `event`.
//
// # Errors and retries
//
// A step that returns an error is retried with backoff
// ([Config.RetryBackoff]) up to [FunctionOpts.Retries] times; [NonRetriable]
// stops at once and [RetryAfter]/[RetryAt] choose the time. Once exhausted,
// the step returns a *[StepError] the function can handle (a fallback), or
// return to fail the run. Any other error the function returns, or a panic
// outside a step, retries the function from the top.
//
// # Running
//
// [NewClient] checks the functions; [Client.Start] executes them with an
// internal River client (or the app's own, see [Config.ExternalRiver]);
// [Client.Stop] hands runs in flight back at their next step boundary. A
// process that dies mid-run is detected by its missing heartbeat and its
// runs resume elsewhere within [Config.RecoverAfter]; completed steps never
// run again. The runs API ([Client.GetRun], [Client.WaitRun],
// [Client.RunsForEvent], [Client.ListRuns], [Client.Cancel],
// [Client.Rerun]) shows and controls runs.
//
// # Database
//
// Tables are created by migrate.Up in one schema ("durable" by default).
// Each completed step costs one commit; give the pool enough connections
// for MaxWorkers concurrent runs (pgxpool's default of max(4, NumCPU) caps
// throughput long before Postgres does).
package durable
