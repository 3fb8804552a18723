// Package integration_test exercises the engine end to end: worker
// processes that are killed or stopped mid-run, several clients racing on
// one schema, and sleeping runs that must not hold worker slots.
package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/internal/testdb"
	"github.com/pgdurable/durable/migrate"
)

var (
	binDir      string
	buildOnce   sync.Once
	workerBin   string
	buildErr    error
	buildOutput []byte
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "durable-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration_test: temp dir:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// workerBinary builds ./worker once per test binary and returns its path.
func workerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		workerBin = filepath.Join(binDir, "durable-test-worker")
		// The worker is built like the tests: with -race when they are, so
		// that a data race in the engine fails the worker too (exit 66).
		args := []string{"build", "-o", workerBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command(goBin, append(args, "./worker")...)
		buildOutput, buildErr = cmd.CombinedOutput()
	})
	require.NoError(t, buildErr, "building the worker: %s", buildOutput)
	return workerBin
}

// env is a test's database: a pool and a freshly migrated schema of its
// own, dropped when the test ends.
type env struct {
	t      *testing.T
	ctx    context.Context
	url    string
	pool   *pgxpool.Pool
	schema string
}

func setup(t *testing.T, maxConns int32) *env {
	t.Helper()
	ctx := context.Background()
	url, err := testdb.URL(ctx)
	require.NoError(t, err)
	pool := newPool(t, url, maxConns)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "it_" + hex.EncodeToString(b[:])
	require.NoError(t, migrate.Up(ctx, pool, schema))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Logf("dropping schema %s: %v", schema, err)
		}
	})
	return &env{t: t, ctx: ctx, url: url, pool: pool, schema: schema}
}

func newPool(t *testing.T, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// exec runs a statement where {{schema}} stands for the test's schema.
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	_, err := e.pool.Exec(e.ctx, e.sql(sql), args...)
	require.NoError(e.t, err)
}

func (e *env) sql(s string) string { return strings.ReplaceAll(s, "{{schema}}", e.schema) }

// sendOnlyClient is a client with no functions: it sends and reads runs.
func (e *env) sendOnlyClient() *durable.Client {
	e.t.Helper()
	c, err := durable.NewClient(e.pool, &durable.Config{Schema: e.schema})
	require.NoError(e.t, err)
	return c
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		require.NoError(t, err, "waiting for %s", what)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "timed out", "waiting %s for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // the poll interval
	}
}

// never checks cond every 10 ms for d and fails the test if it ever holds
// (what says what must not happen). cond runs on another goroutine, so it
// returns its error instead of failing the test: an error counts as "not
// holding" for the check, and the first one fails the test once d is over.
func never(t *testing.T, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	var mu sync.Mutex
	var firstErr error
	require.Never(t, func() bool {
		ok, err := cond()
		if err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
			return false
		}
		return ok
	}, d, 10*time.Millisecond, what)
	mu.Lock()
	defer mu.Unlock()
	require.NoError(t, firstErr, "checking for: %s", what)
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// readyWriter closes ready once a "ready" line has been written.
type readyWriter struct {
	out     *syncBuffer
	ready   chan struct{}
	mu      sync.Mutex
	partial []byte
	seen    bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	_, _ = w.out.Write(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
		if line == "ready" && !w.seen {
			w.seen = true
			close(w.ready)
		}
	}
	return len(p), nil
}

// proc is a running worker process.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	out     *syncBuffer
	ready   chan struct{}
	done    chan struct{}
	waitErr error
}

type workerOpts struct {
	recoverAfter time.Duration
	maxWorkers   int
	args         []string // more flags, e.g. "-functions", "race-waiter"
}

// startWorker starts the worker program on the env's schema. The process is
// killed (if still running) when the test ends, and its output is logged if
// the test failed.
func (e *env) startWorker(name string, o workerOpts) *proc {
	e.t.Helper()
	bin := workerBinary(e.t)
	out := &syncBuffer{}
	p := &proc{t: e.t, name: name, out: out, ready: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command(bin,
		"-database-url", e.url,
		"-schema", e.schema,
		"-name", name,
		"-recover-after", o.recoverAfter.String(),
		"-max-workers", fmt.Sprint(o.maxWorkers),
	)
	p.cmd.Args = append(p.cmd.Args, o.args...)
	p.cmd.Stdout = &readyWriter{out: out, ready: p.ready}
	p.cmd.Stderr = out
	require.NoError(e.t, p.cmd.Start())
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if e.t.Failed() {
			e.t.Logf("---- output of worker %s (%v) ----\n%s", name, p.waitErr, out.String())
		}
	})
	return p
}

func (p *proc) waitReady(d time.Duration) {
	p.t.Helper()
	select {
	case <-p.ready:
	case <-p.done:
		require.FailNowf(p.t, "worker exited", "worker %s exited before it was ready (%v):\n%s", p.name, p.waitErr, p.out.String())
	case <-time.After(d):
		require.FailNowf(p.t, "worker not ready", "worker %s not ready after %s:\n%s", p.name, d, p.out.String())
	}
}

func (p *proc) kill() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Kill())
	<-p.done
	var ee *exec.ExitError
	require.True(p.t, errors.As(p.waitErr, &ee), "worker %s: %v", p.name, p.waitErr)
	ws, ok := ee.Sys().(syscall.WaitStatus)
	require.True(p.t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "worker %s was not killed by SIGKILL: %v", p.name, p.waitErr)
}

func (p *proc) signal(s os.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(s))
}

// waitExit waits for the process to exit and returns its exit code (-1 if
// killed by a signal).
func (p *proc) waitExit(d time.Duration) (int, bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return 0, false
	}
}
