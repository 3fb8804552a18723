package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

// options configure one benchmark run; see the flags in main.go.
type options struct {
	Runs             int
	StepsSeq         int
	StepRuns         int
	LatencySamples   int
	LatencyPause     time.Duration
	Senders          int
	SendBatches      []int
	Phases           string
	EngineParams     map[string]string
	BaselineCommits  int
	BaselineWarmup   int
	BaselineConns    int
	BaselineDuration time.Duration
	MaxWorkers       int
	PoolConns        int
	CPUProfile       string
	Statements       bool
	// RiverJobs and RiverBatch size the River-only baseline of section 3
	// (0 jobs skips it).
	RiverJobs  int
	RiverBatch int
	// WaitSamples is the number of wait-resume samples of section 5.
	WaitSamples int
	// OpenWaits and SendCostSamples size section 6: the open waits of the
	// loaded schema, and the Send calls measured per schema.
	OpenWaits       int
	SendCostSamples int
	// ListRuns is the number of runs section 7 fills its schema with.
	ListRuns int
	// PruneRuns, PruneWindow and PruneConcurrency size section 8: the
	// ended runs loaded for the pruner, how long each latency window lasts,
	// and the runs executing at once.
	PruneRuns        int
	PruneWindow      time.Duration
	PruneConcurrency int
	// FlowRuns is the number of queued runs of section 9b; FlowKeys the
	// number of keys of 9c (whose hot key has three tenths as many runs).
	FlowRuns int
	FlowKeys int
	// WakeRuns is the number of runs section 10 wakes at once.
	WakeRuns int
	// PreloadEnded and PreloadSleeping fill the bench schema before the
	// engine phases (see preload.go); 0 for none.
	PreloadEnded, PreloadSleeping int
	// LogOutput receives the library's warnings and errors.
	LogOutput io.Writer
}

// defaultOptions are the full benchmark's settings.
func defaultOptions() options {
	return options{
		Runs:             2000,
		StepsSeq:         100,
		StepRuns:         5,
		LatencySamples:   200,
		LatencyPause:     20 * time.Millisecond,
		Senders:          32,
		SendBatches:      []int{1, 20},
		Phases:           "1234567890",
		BaselineCommits:  500,
		BaselineWarmup:   50,
		BaselineConns:    32,
		BaselineDuration: 3 * time.Second,
		MaxWorkers:       100,
		PoolConns:        40,
		Statements:       true,
		RiverJobs:        2000,
		RiverBatch:       20,
		WaitSamples:      100,
		OpenWaits:        100000,
		SendCostSamples:  300,
		ListRuns:         1_000_000,
		PruneRuns:        1_000_000,
		PruneWindow:      15 * time.Second,
		PruneConcurrency: 8,
		FlowRuns:         2000,
		FlowKeys:         1000,
		WakeRuns:         10000,
	}
}

func (o options) check() error {
	var errs []error
	for name, v := range map[string]int{
		"-runs": o.Runs, "-steps-seq": o.StepsSeq, "-step-runs": o.StepRuns,
		"-latency-samples": o.LatencySamples, "-senders": o.Senders,
		"-baseline-commits": o.BaselineCommits, "-max-workers": o.MaxWorkers, "-pool-conns": o.PoolConns,
		"-river-batch": o.RiverBatch, "-wait-samples": o.WaitSamples, "-open-waits": o.OpenWaits,
		"-send-cost-samples": o.SendCostSamples, "-list-runs": o.ListRuns,
		"-prune-runs": o.PruneRuns, "-prune-concurrency": o.PruneConcurrency, "-flow-runs": o.FlowRuns, "-flow-keys": o.FlowKeys, "-wake-runs": o.WakeRuns,
	} {
		if v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1 (got %d)", name, v))
		}
	}
	if len(o.SendBatches) == 0 {
		errs = append(errs, errors.New("-send-batches needs at least one size"))
	}
	for _, b := range o.SendBatches {
		if b < 1 {
			errs = append(errs, fmt.Errorf("-send-batches: %d is not a batch size", b))
		}
	}
	if !strings.Contains(o.Phases, "1") || strings.Trim(o.Phases, "1234567890") != "" {
		errs = append(errs, fmt.Errorf("-phases %q: digits 1 to 9 and 0 (section 10), and 1 (the reference for the others) is required", o.Phases))
	}
	if o.PruneWindow <= 0 {
		errs = append(errs, errors.New("-prune-window must be positive"))
	}
	if o.PreloadEnded < 0 || o.PreloadSleeping < 0 {
		errs = append(errs, errors.New("-preload-ended and -preload-sleeping must not be negative"))
	}
	if o.RiverJobs < 0 {
		errs = append(errs, fmt.Errorf("-river-jobs must not be negative (got %d)", o.RiverJobs))
	}
	if o.BaselineConns < 1 {
		errs = append(errs, errors.New("baseline connections must be at least 1"))
	}
	if o.BaselineDuration <= 0 {
		errs = append(errs, errors.New("-baseline-duration must be positive"))
	}
	if o.PoolConns < 3 {
		errs = append(errs, errors.New("-pool-conns must be at least 3 (River's listener holds one)"))
	}
	return errors.Join(errs...)
}

// env is what every phase shares: the database, the bench schema, the
// monitor reading server statistics, and the report being written.
type env struct {
	o      options
	url    string
	schema string
	// tag is random and unique to this process: it prefixes the
	// application_name of every connection the bench opens, so that the
	// monitor can wait for them to close (closing flushes their statistics).
	tag    string
	mon    *monitor
	out    io.Writer
	logger *slog.Logger
	warns  atomic.Int64 // library log records at Warn or above
	errs   atomic.Int64 // of which at Error or above
	rows   []summaryRow
	// costs are the throughput phases' results (3a, 3b, ... and the
	// River-only baseline), for the comparison at the end of section 3.
	costs []phaseCost
}

// summaryRow is one line of the closing table.
type summaryRow struct {
	Metric, Measured, Target, Result string
}

func (e *env) printf(format string, args ...any) { fmt.Fprintf(e.out, format, args...) }

func (e *env) section(title string) { e.printf("\n== %s ==\n", title) }

func (e *env) summarize(metric, measured, target, result string) {
	e.rows = append(e.rows, summaryRow{metric, measured, target, result})
}

// verdict returns PASS or MISS.
func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// run executes the whole benchmark and writes the report to out.
func run(ctx context.Context, o options, out io.Writer) (err error) {
	if err := o.check(); err != nil {
		return err
	}
	if o.LogOutput == nil {
		o.LogOutput = io.Discard
	}
	dbURL, err := testdb.URL(ctx)
	if err != nil {
		return fmt.Errorf("finding Postgres: %w", err)
	}
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	e := &env{
		o:      o,
		url:    dbURL,
		schema: "bench_" + hex.EncodeToString(rnd[:]),
		tag:    "durable-bench-" + hex.EncodeToString(rnd[:]),
		out:    out,
	}
	e.mon = &monitor{e: e}
	e.logger = slog.New(&countingHandler{
		h:     slog.NewTextHandler(o.LogOutput, &slog.HandlerOptions{Level: slog.LevelWarn}),
		warns: &e.warns, errs: &e.errs,
	})

	admin, err := e.pool(ctx, "admin", 2, nil, nil)
	if err != nil {
		return err
	}
	defer admin.Close()
	var version string
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return fmt.Errorf("reading the server version: %w", err)
	}
	var syncCommit string
	_ = admin.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit)

	if err := migrate.Up(ctx, admin, e.schema); err != nil {
		return fmt.Errorf("migrate.Up(%s): %w", e.schema, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		conn, derr := e.conn(dctx, "drop")
		if derr == nil {
			_, derr = conn.Exec(dctx, "DROP SCHEMA "+pgx.Identifier{e.schema}.Sanitize()+" CASCADE")
			_ = conn.Close(dctx)
		}
		if derr != nil {
			err = errors.Join(err, fmt.Errorf("dropping schema %s: %w", e.schema, derr))
		}
	}()
	if _, err := admin.Exec(ctx, "CREATE TABLE "+e.table("bench_t")+" (v bigint NOT NULL)"); err != nil {
		return fmt.Errorf("creating bench_t: %w", err)
	}
	e.printf("durable-bench: %s %s/%s, %d CPUs (GOMAXPROCS %d), PostgreSQL %s (synchronous_commit=%s)\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), version, syncCommit)
	e.printf("database %s, schema %s; started %s\n", redact(dbURL), e.schema, time.Now().Format(time.RFC3339))
	e.printf("engine phases: one client per phase, MaxWorkers %d, pgxpool MaxConns %d, RecoverAfter default\n",
		o.MaxWorkers, o.PoolConns)
	if len(o.EngineParams) > 0 {
		e.printf("engine pools' session settings: %v\n", o.EngineParams)
	}
	var others int
	_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
		AND application_name NOT LIKE $1 || '%'`, e.tag).Scan(&others)
	e.printf("machine load average (1 min): %s; other client connections on the server: %d (the machine and database may be shared)\n",
		loadAvg(), others)
	admin.Close() // its backends' statistics must be flushed before the first snapshot
	if err := e.preload(ctx); err != nil {
		return err
	}
	start := time.Now()

	base, err := e.machineLimit(ctx)
	if err != nil {
		return fmt.Errorf("section 1 (machine limit): %w", err)
	}
	if strings.Contains(o.Phases, "2") {
		if err := e.stepLatency(ctx, base); err != nil {
			return fmt.Errorf("section 2 (per-step latency): %w", err)
		}
	}
	if strings.Contains(o.Phases, "3") {
		for i, batch := range o.SendBatches {
			sub := ""
			if len(o.SendBatches) > 1 {
				sub = string(rune('a' + i))
			}
			if err := e.throughput(ctx, base, sub, batch); err != nil {
				return fmt.Errorf("section 3%s (throughput, %d events per Send): %w", sub, batch, err)
			}
		}
		if o.RiverJobs > 0 {
			sub := string(rune('a' + len(o.SendBatches)))
			if err := e.riverBaseline(ctx, base, sub); err != nil {
				return fmt.Errorf("section 3%s (River-only baseline): %w", sub, err)
			}
		}
	}
	if strings.Contains(o.Phases, "4") {
		if err := e.eventLatency(ctx); err != nil {
			return fmt.Errorf("section 4 (event latency): %w", err)
		}
	}
	if strings.Contains(o.Phases, "5") {
		if err := e.waitLatency(ctx); err != nil {
			return fmt.Errorf("section 5 (wait-resume latency): %w", err)
		}
	}
	if strings.Contains(o.Phases, "6") {
		if err := e.sendCost(ctx); err != nil {
			return fmt.Errorf("section 6 (Send cost with open waits): %w", err)
		}
	}
	if strings.Contains(o.Phases, "7") {
		if err := e.listRuns(ctx, base); err != nil {
			return fmt.Errorf("section 7 (ListRuns): %w", err)
		}
	}
	if strings.Contains(o.Phases, "8") {
		if err := e.pruneLatency(ctx, base); err != nil {
			return fmt.Errorf("section 8 (per-step latency while pruning): %w", err)
		}
	}

	if strings.Contains(o.Phases, "9") {
		if err := e.flowControl(ctx, base); err != nil {
			return fmt.Errorf("section 9 (flow control): %w", err)
		}
	}

	if strings.Contains(o.Phases, "0") {
		if err := e.wakeUp(ctx); err != nil {
			return fmt.Errorf("section 10 (wake-up): %w", err)
		}
	}

	e.section("Summary")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  metric\tmeasured\ttarget\tresult")
	for _, r := range e.rows {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", r.Metric, r.Measured, r.Target, r.Result)
	}
	_ = tw.Flush()
	e.printf("  library log records at WARN or above: %d (ERROR: %d)\n", e.warns.Load(), e.errs.Load())
	e.printf("  total time %s; load average (1 min) at the end: %s\n", time.Since(start).Round(100*time.Millisecond), loadAvg())
	return nil
}

// table returns the quoted name of a table in the bench schema.
func (e *env) table(name string) string { return pgx.Identifier{e.schema, name}.Sanitize() }

// pool opens a pool whose connections carry the bench's application_name
// (tag-role) and the given session settings and, when tracer is not nil,
// report to it.
func (e *env) pool(ctx context.Context, role string, maxConns int32, tracer pgx.QueryTracer, params map[string]string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		return nil, fmt.Errorf("parsing the database URL: %w", err)
	}
	cfg.MaxConns = maxConns
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = e.tag + "-" + role
	if tracer != nil {
		cfg.ConnConfig.Tracer = tracer
	}
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening the %s pool: %w", role, err)
	}
	return p, nil
}

// conn opens a single connection with the bench's application_name.
func (e *env) conn(ctx context.Context, role string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(e.url)
	if err != nil {
		return nil, fmt.Errorf("parsing the database URL: %w", err)
	}
	cfg.RuntimeParams["application_name"] = e.tag + "-" + role
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting (%s): %w", role, err)
	}
	return c, nil
}

// redact hides a password in a URL.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	return u.String()
}

// countingHandler counts records at Warn and Error or above and passes
// them on.
type countingHandler struct {
	h           slog.Handler
	warns, errs *atomic.Int64
}

func (c *countingHandler) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }

func (c *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	// Section 6 sends, on purpose, events that match no trigger and no
	// wait: the library's once-per-name notice about them is expected.
	expected := strings.Contains(r.Message, "an event started no run")
	if r.Level >= slog.LevelWarn && !expected {
		c.warns.Add(1)
	}
	if r.Level >= slog.LevelError {
		c.errs.Add(1)
	}
	return c.h.Handle(ctx, r)
}

func (c *countingHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &countingHandler{h: c.h.WithAttrs(a), warns: c.warns, errs: c.errs}
}

func (c *countingHandler) WithGroup(n string) slog.Handler {
	return &countingHandler{h: c.h.WithGroup(n), warns: c.warns, errs: c.errs}
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// plural returns "s" unless n is 1.
func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}
