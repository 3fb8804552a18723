// Command invoke shows Invoke: a function calls another function as a step
// and gets its result, and handles the other function's failure.
//
//	go run ./examples/invoke
//
// "review-application" invokes "compute-score" with
// durable.Invoke[int](ctx, "score", durable.InvokeOpts{...}). The invoked
// (child) run is a run of its own, executed by whichever process has the
// function; the parent is suspended meanwhile, holding no goroutine,
// connection or worker slot, and resumes with the child's result. The runs
// API links them both ways: Run.ParentRunID on the child,
// RunStep.ChildRunID on the parent's "invoke" step.
//
// Two applications are reviewed: one scores, the other has invalid answers,
// so its child run fails; the parent sees a *durable.StepError (errors.As)
// and falls back to a manual review instead of failing.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_invoke, which it drops and recreates on each run and
// leaves afterwards for inspection.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/migrate"
)

// Application is the data of a review.
type Application struct {
	Applicant string `json:"applicant"`
	Answers   []int  `json:"answers"`
}

// Decision is the parent's result.
type Decision struct {
	Applicant string `json:"applicant"`
	Score     int    `json:"score,omitempty"`
	Outcome   string `json:"outcome"`
	Reason    string `json:"reason,omitempty"`
}

// exampleSchema is the schema the example writes to.
const exampleSchema = "durable_example_invoke"

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "invoke:", err)
		os.Exit(1)
	}
}

// run runs the example in schema of the database at url.
func run(ctx context.Context, url, schema string) error {
	pool, err := openSchema(ctx, url, schema)
	if err != nil {
		return err
	}
	defer pool.Close()

	// The child: no trigger, so it can only be invoked.
	computeScore := durable.NewFunction(durable.FunctionOpts{
		ID:      "compute-score",
		Retries: durable.Ptr(1),
	}, func(ctx context.Context, in durable.Input[Application]) (int, error) {
		return durable.Step(ctx, "sum-answers", func(ctx context.Context) (int, error) {
			total := 0
			for _, a := range in.Event.Data.Answers {
				if a < 0 || a > 10 {
					// No point retrying: fail the step (and, unhandled, the run) now.
					return 0, durable.NonRetriable(fmt.Errorf("answer %d out of range 0..10", a))
				}
				total += a
			}
			return total, nil
		})
	})

	// The parent.
	review := durable.NewFunction(durable.FunctionOpts{
		ID:       "review-application",
		Triggers: []durable.Trigger{{Event: "application/submitted"}},
	}, func(ctx context.Context, in durable.Input[Application]) (Decision, error) {
		app := in.Event.Data
		score, err := durable.Invoke[int](ctx, "score", durable.InvokeOpts{
			Function: "compute-score",
			Data:     app, // the child's event data
			Timeout:  30 * time.Second,
		})
		var stepErr *durable.StepError
		switch {
		case errors.As(err, &stepErr): // the child run failed (or was cancelled)
			return durable.Step(ctx, "manual-review", func(ctx context.Context) (Decision, error) {
				return Decision{
					Applicant: app.Applicant,
					Outcome:   fmt.Sprintf("manual review (step %q failed)", stepErr.StepID),
					Reason:    stepErr.Message,
				}, nil
			})
		case err != nil: // e.g. a timeout (durable.ErrEventTimeout)
			return Decision{}, err
		}
		return durable.Step(ctx, "decide", func(ctx context.Context) (Decision, error) {
			outcome := "rejected"
			if score >= 20 {
				outcome = "accepted"
			}
			return Decision{Applicant: app.Applicant, Score: score, Outcome: outcome}, nil
		})
	})

	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{computeScore, review}})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(stopCtx)
	}()

	ids, err := client.Send(ctx,
		durable.Event{Name: "application/submitted", Data: Application{Applicant: "ada", Answers: []int{9, 8, 7}}},
		durable.Event{Name: "application/submitted", Data: Application{Applicant: "bob", Answers: []int{5, 42}}})
	if err != nil {
		return err
	}
	fmt.Println("sent application/submitted for ada (valid answers) and bob (an answer out of range)")

	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	wantChild := []durable.RunStatus{durable.RunCompleted, durable.RunFailed}
	wantLast := []string{"decide", "manual-review"}
	var problems []error
	for i, eventID := range ids {
		parentID, err := runOf(waitCtx, client, eventID)
		if err != nil {
			return err
		}
		parent, err := client.WaitRun(waitCtx, parentID)
		if err != nil {
			return err
		}
		fmt.Printf("parent run %s (%s): %s, result %s\n", parent.ID, parent.FunctionID, parent.Status, parent.Output)
		var child *durable.Run
		for _, s := range parent.Steps {
			fmt.Printf("  step %-13s %-6s %-9s", s.ID, s.Kind, s.Status)
			if s.ChildRunID != "" {
				fmt.Printf(" ChildRunID=%s", s.ChildRunID)
				if child, err = client.GetRun(waitCtx, s.ChildRunID); err != nil {
					return err
				}
			}
			if s.Error != "" {
				fmt.Printf(" error=%q", s.Error)
			}
			fmt.Println()
		}
		if child == nil {
			problems = append(problems, fmt.Errorf("parent run %s has no invoke step with a child run", parent.ID))
			continue
		}
		fmt.Printf("  child run %s (%s): %s, ParentRunID=%s", child.ID, child.FunctionID, child.Status, child.ParentRunID)
		if child.Error != "" {
			fmt.Printf(", error %q", child.Error)
		} else {
			fmt.Printf(", result %s", child.Output)
		}
		fmt.Println()
		last := ""
		if n := len(parent.Steps); n > 0 {
			last = parent.Steps[n-1].ID
		}
		switch {
		case parent.Status != durable.RunCompleted:
			problems = append(problems, fmt.Errorf("parent run %s ended %s: %s", parent.ID, parent.Status, parent.Error))
		case child.ParentRunID != parent.ID:
			problems = append(problems, fmt.Errorf("child run %s: ParentRunID %q, want %q", child.ID, child.ParentRunID, parent.ID))
		case child.Status != wantChild[i]:
			problems = append(problems, fmt.Errorf("child run %s ended %s, want %s", child.ID, child.Status, wantChild[i]))
		case last != wantLast[i]:
			problems = append(problems, fmt.Errorf("parent run %s ended with step %q, want %q", parent.ID, last, wantLast[i]))
		}
	}
	return errors.Join(problems...)
}

// runOf returns the ID of the run an event started, waiting 10 s at most.
func runOf(ctx context.Context, client *durable.Client, eventID string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		runs, err := client.RunsForEvent(ctx, eventID)
		if err != nil {
			return "", err
		}
		if len(runs) > 0 {
			return runs[0].ID, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no run for event %s: %w", eventID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// databaseURL is DATABASE_URL, else TEST_DATABASE_URL, else the local
// server with trust auth.
func databaseURL() string {
	for _, env := range []string{"DATABASE_URL", "TEST_DATABASE_URL"} {
		if u := os.Getenv(env); u != "" {
			return u
		}
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openSchema connects to url and gives the example a fresh schema: the one
// an earlier run left is dropped and migrate.Up creates it again. It prints
// where the example writes, without the password.
func openSchema(ctx context.Context, url, schema string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("bad database URL (set DATABASE_URL): %w", err)
	}
	c := pool.Config().ConnConfig
	where := fmt.Sprintf("postgres://%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = pool.Ping(pingCtx); err != nil {
		err = fmt.Errorf("no Postgres answers at %s; set DATABASE_URL to a server you can reach: %w", where, err)
	} else if _, err = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err == nil {
		err = migrate.Up(ctx, pool, schema)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	fmt.Printf("pgdurable example: writing to schema %q in %s (recreated on each run and kept afterwards; drop it with: DROP SCHEMA %s CASCADE)\n", schema, where, schema)
	return pool, nil
}
