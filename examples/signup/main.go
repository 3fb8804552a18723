// Command signup shows WaitForEvent: a "user/signed-up" event starts an
// onboarding function that sends a welcome email, then waits (durably, for
// up to a timeout) for the same user's "user/email-verified" event. A user
// who verifies is activated; a user who does not gets a reminder once the
// wait times out.
//
//	go run ./examples/signup
//
// Two users sign up: the example sends the verification event for the
// first, and lets the second one's wait time out (after 3 seconds here; a
// real app would wait days). The wait's If expression,
// `event.data.userId == async.data.userId`, matches the verification
// (`async`) to the run's own trigger (`event`), so the first user's event
// never wakes the second user's run. While a run waits it holds no
// goroutine, connection or worker slot.
//
// It connects to DATABASE_URL (else TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres) and writes only to the
// schema durable_example_signup, which it drops and recreates on each run and
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

// SignedUp is the data of a "user/signed-up" event.
type SignedUp struct {
	UserID string `json:"userId"`
	Email  string `json:"email"`
}

// Verified is the data of a "user/email-verified" event.
type Verified struct {
	UserID string `json:"userId"`
	Via    string `json:"via"`
}

// Outcome is the onboarding function's result.
type Outcome struct {
	UserID string `json:"userId"`
	State  string `json:"state"`         // "active" or "reminded"
	Via    string `json:"via,omitempty"` // how the user verified
}

const (
	// exampleSchema is the schema the example writes to.
	exampleSchema = "durable_example_signup"
	// verifyTimeout is how long a run waits for the verification; short
	// for the demo.
	verifyTimeout = 3 * time.Second
)

func main() {
	if err := run(context.Background(), databaseURL(), exampleSchema); err != nil {
		fmt.Fprintln(os.Stderr, "signup:", err)
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

	onboarding := durable.NewFunction(durable.FunctionOpts{
		ID:       "onboarding",
		Triggers: []durable.Trigger{{Event: "user/signed-up"}},
	}, func(ctx context.Context, in durable.Input[SignedUp]) (Outcome, error) {
		user := in.Event.Data
		if _, err := durable.Step(ctx, "send-welcome", func(ctx context.Context) (string, error) {
			return "welcome email sent to " + user.Email, nil
		}); err != nil {
			return Outcome{}, err
		}

		// The run is suspended here until a matching event arrives or the
		// timeout passes.
		ev, err := durable.WaitForEvent[Verified](ctx, "wait-for-verification", durable.WaitOpts{
			Event:   "user/email-verified",
			If:      "event.data.userId == async.data.userId",
			Timeout: verifyTimeout,
		})
		switch {
		case errors.Is(err, durable.ErrEventTimeout):
			return durable.Step(ctx, "send-reminder", func(ctx context.Context) (Outcome, error) {
				return Outcome{UserID: user.UserID, State: "reminded"}, nil
			})
		case err != nil:
			return Outcome{}, err
		}
		return durable.Step(ctx, "activate", func(ctx context.Context) (Outcome, error) {
			return Outcome{UserID: user.UserID, State: "active", Via: ev.Data.Via}, nil
		})
	})

	client, err := durable.NewClient(pool, &durable.Config{Schema: schema, Functions: []durable.Function{onboarding}})
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

	// Two users sign up (IDs unique per execution, so reruns never mix).
	suffix := fmt.Sprint(time.Now().UnixNano())
	ada := SignedUp{UserID: "ada-" + suffix, Email: "ada@example.com"}
	bob := SignedUp{UserID: "bob-" + suffix, Email: "bob@example.com"}
	ids, err := client.Send(ctx,
		durable.Event{Name: "user/signed-up", Data: ada},
		durable.Event{Name: "user/signed-up", Data: bob})
	if err != nil {
		return err
	}
	start := time.Now()
	fmt.Printf("sent user/signed-up for %s and %s\n", ada.UserID, bob.UserID)
	adaRun, err := runOf(ctx, client, ids[0])
	if err != nil {
		return err
	}
	bobRun, err := runOf(ctx, client, ids[1])
	if err != nil {
		return err
	}

	// Once Ada's run waits, she clicks the link in her email.
	if err := untilWaiting(ctx, client, adaRun); err != nil {
		return err
	}
	if _, err := client.Send(ctx, durable.Event{Name: "user/email-verified", Data: Verified{UserID: ada.UserID, Via: "link"}}); err != nil {
		return err
	}
	fmt.Printf("sent user/email-verified for %s after %s; %s never verifies\n",
		ada.UserID, time.Since(start).Round(time.Millisecond), bob.UserID)

	waitCtx, cancel := context.WithTimeout(ctx, verifyTimeout+10*time.Second)
	defer cancel()
	want := map[string]string{adaRun: "activate", bobRun: "send-reminder"}
	var problems []error
	for _, id := range []string{adaRun, bobRun} {
		r, err := client.WaitRun(waitCtx, id)
		if err != nil {
			return err
		}
		fmt.Printf("run %s: %s after %s, result %s\n", r.ID, r.Status, r.EndedAt.Sub(r.CreatedAt).Round(time.Millisecond), r.Output)
		var last string
		for _, s := range r.Steps {
			fmt.Printf("  step %-22s %-5s %-9s attempts=%d", s.ID, s.Kind, s.Status, s.Attempts)
			if s.Error != "" {
				fmt.Printf(" error=%q", s.Error)
			}
			if s.Kind == "wait" && s.Status == "completed" {
				fmt.Printf(" (woken by the verification event)")
			}
			fmt.Println()
			last = s.ID
		}
		if r.Status != durable.RunCompleted {
			problems = append(problems, fmt.Errorf("run %s ended %s: %s", r.ID, r.Status, r.Error))
		} else if last != want[id] {
			problems = append(problems, fmt.Errorf("run %s ended with step %q, want %q", r.ID, last, want[id]))
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

// untilWaiting returns once the run is waiting for an event.
func untilWaiting(ctx context.Context, client *durable.Client, runID string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		r, err := client.GetRun(ctx, runID)
		if err != nil {
			return err
		}
		for _, s := range r.Steps {
			if s.Kind == "wait" && s.Status == "waiting" {
				return nil
			}
		}
		if r.Status.Done() {
			return fmt.Errorf("run %s ended %s before waiting", runID, r.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("run %s is not waiting: %w", runID, ctx.Err())
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
