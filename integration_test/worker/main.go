// Command worker is a durable worker process used by the integration tests
// in the parent directory: the tests start it, kill it (SIGKILL) or stop it
// (SIGTERM), and check what it and its peers recorded.
//
// It defines one function, "crashy" (trigger "crash/start"), whose steps
// are five StepTx ("tx-0".."tx-4") that each insert a row into
// <schema>.effects in the step's transaction and then hold the step open for
// -step-delay (so that a kill lands mid-run), with a plain Step
// ("plain-0".."plain-3") between each two of them that inserts a row into
// <schema>.plain_effects through a separate pool connection (an
// at-least-once side effect: the table records every execution). The test
// creates both tables.
//
// With -functions it defines other functions instead (or as well): see
// coordination.go. The default, "crashy", keeps the behaviour above.
//
// It prints "ready" on stdout once Start has returned, and on SIGTERM (or
// SIGINT) calls Stop with a 10 s timeout, then exits 0 (1 if Stop failed).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable"
)

// Step layout of "crashy", shared with the tests by convention.
const (
	txSteps    = 5
	plainSteps = txSteps - 1
)

func main() {
	var (
		dbURL        = flag.String("database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
		schema       = flag.String("schema", os.Getenv("DURABLE_SCHEMA"), "schema of the durable tables and of effects/plain_effects (default $DURABLE_SCHEMA)")
		name         = flag.String("name", os.Getenv("WORKER_NAME"), "worker name recorded in the effects tables (default $WORKER_NAME)")
		recoverAfter = flag.Duration("recover-after", envDuration("RECOVER_AFTER", 2*time.Second), "Config.RecoverAfter (default $RECOVER_AFTER or 2s)")
		maxWorkers   = flag.Int("max-workers", 0, "Config.MaxWorkers (0: the library's default)")
		maxConns     = flag.Int("max-conns", 6, "pool size")
		stepDelay    = flag.Duration("step-delay", 300*time.Millisecond, "how long each StepTx holds its transaction open")
		functions    = flag.String("functions", "crashy", "comma-separated IDs of the functions to define (crashy, and those of coordination.go)")
		waitTimeout  = flag.Duration("wait-timeout", time.Second, "WaitOpts.Timeout of tmo-waiter")
		blockPost    = flag.Bool("block-post-invoke", false, "inv-parent blocks inside its post-invoke StepTx until the process dies")
	)
	flag.Parse()
	if *dbURL == "" || *schema == "" || *name == "" {
		fmt.Fprintln(os.Stderr, "worker: -database-url, -schema and -name are required")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("worker", *name)

	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(*dbURL)
	if err != nil {
		fatal(logger, "parsing database URL", err)
	}
	pcfg.MaxConns = int32(*maxConns)
	pcfg.ConnConfig.Tracer = txConflictTracer{worker: *name}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		fatal(logger, "connecting", err)
	}
	defer pool.Close()

	effects := pgx.Identifier{*schema, "effects"}.Sanitize()
	plainEffects := pgx.Identifier{*schema, "plain_effects"}.Sanitize()

	crashy := durable.NewFunction(durable.FunctionOpts{
		ID:       "crashy",
		Triggers: []durable.Trigger{{Event: "crash/start"}},
	}, func(ctx context.Context, in durable.Input[map[string]any]) (string, error) {
		for i := range txSteps {
			id := fmt.Sprintf("tx-%d", i)
			if _, err := durable.StepTx(ctx, id, func(ctx context.Context, tx pgx.Tx) (string, error) {
				if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (run_id, step, worker) VALUES ($1, $2, $3)", in.RunID, id, *name); err != nil {
					return "", err
				}
				select {
				case <-time.After(*stepDelay):
				case <-ctx.Done():
					return "", ctx.Err()
				}
				return *name, nil
			}); err != nil {
				return "", err
			}
			if i >= plainSteps {
				continue
			}
			pid := fmt.Sprintf("plain-%d", i)
			if _, err := durable.Step(ctx, pid, func(ctx context.Context) (string, error) {
				_, err := pool.Exec(ctx, "INSERT INTO "+plainEffects+" (run_id, step, worker) VALUES ($1, $2, $3)", in.RunID, pid, *name)
				return *name, err
			}); err != nil {
				return "", err
			}
		}
		return "done", nil
	})

	available := coordinationFunctions(coordOpts{pool: pool, schema: *schema, worker: *name, waitTimeout: *waitTimeout, blockPostInvoke: *blockPost})
	available["crashy"] = crashy
	maps.Copy(available, flowFunctions(coordOpts{pool: pool, schema: *schema, worker: *name}))
	var fns []durable.Function
	for _, id := range strings.Split(*functions, ",") {
		f, ok := available[strings.TrimSpace(id)]
		if !ok {
			fmt.Fprintf(os.Stderr, "worker: unknown function %q in -functions\n", id)
			os.Exit(2)
		}
		fns = append(fns, f)
	}

	client, err := durable.NewClient(pool, &durable.Config{
		Functions:    fns,
		Logger:       logger,
		MaxWorkers:   *maxWorkers,
		Schema:       *schema,
		RecoverAfter: *recoverAfter,
		RetryBackoff: func(int) time.Duration { return 50 * time.Millisecond },
	})
	if err != nil {
		fatal(logger, "building client", err)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	if err := client.Start(ctx); err != nil {
		fatal(logger, "starting client", err)
	}
	fmt.Println("ready")

	sig := <-sigs
	logger.Info("worker: stopping", "signal", sig.String())
	start := time.Now()
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = client.Stop(stopCtx)
	cancel()
	if err != nil {
		logger.Error("worker: Stop failed", "error", err, "took", time.Since(start))
		pool.Close()
		os.Exit(1)
	}
	logger.Info("worker: stopped", "took", time.Since(start))
}

func envDuration(key string, def time.Duration) time.Duration {
	if v := os.Getenv(key); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

func fatal(logger *slog.Logger, what string, err error) {
	logger.Error("worker: "+what, "error", err)
	os.Exit(1)
}
