package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
	"github.com/pgdurable/durable/internal/testdb"
)

// The binary under test and the database it is pointed at, set by
// TestMain.
var (
	binary      string
	databaseURL string
)

// TestMain builds the command once; the tests run the binary.
func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "durable-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "durable")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the command:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	databaseURL, err = testdb.URL(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "no test database:", err)
		return 1
	}
	return m.Run()
}

// result is what one run of the binary did.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs the binary with the test database and schema, then args.
func cli(t *testing.T, schema string, args ...string) result {
	t.Helper()
	return cliEnv(t, nil, append([]string{"--database-url", databaseURL, "--schema", schema}, args...)...)
}

// cliEnv runs the binary with args exactly, and env added to the
// environment (minus DATABASE_URL).
func cliEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(withoutDatabaseURL(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

func withoutDatabaseURL() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

// ok fails t unless the command succeeded, and returns its stdout.
func (r result) ok(t *testing.T) string {
	t.Helper()
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s\nstdout:\n%s", r.stderr, r.stdout)
	return r.stdout
}

// fails checks the exit status and that stderr says want.
func (r result) fails(t *testing.T, code int, want string) {
	t.Helper()
	require.Equal(t, code, r.code, "exit status; stderr:\n%s\nstdout:\n%s", r.stderr, r.stdout)
	require.Contains(t, r.stderr, want)
}

// jsonOut decodes the command's stdout, which must be one JSON document.
func jsonOut[T any](t *testing.T, r result) T {
	t.Helper()
	out := r.ok(t)
	var v T
	dec := json.NewDecoder(strings.NewReader(out))
	require.NoError(t, dec.Decode(&v), out)
	require.False(t, dec.More(), "more than one JSON document:\n%s", out)
	return v
}

// freshSchema returns a schema name nothing uses yet, dropped when t ends.
func freshSchema(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), databaseURL)
	require.NoError(t, err)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "cli_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
		pool.Close()
	})
	return schema, pool
}

// waitRun waits for a run to end.
func waitRun(t *testing.T, env *durabletest.Env, id string) *durable.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	run, err := env.Client.WaitRun(ctx, id)
	require.NoError(t, err)
	return run
}

// lineOf returns the line of out that starts with prefix.
func lineOf(t *testing.T, out, prefix string) string {
	t.Helper()
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	t.Fatalf("no line starting with %q in:\n%s", prefix, out)
	return ""
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := cliEnv(t, nil, "--help")
	for _, want := range []string{"runs list", "runs rerun ID", "events send NAME", "migrate sql", "--database-url", "--json"} {
		require.Contains(t, r.ok(t), want)
	}
	r = cliEnv(t, nil, "runs", "--help")
	require.Contains(t, r.ok(t), "runs cancel ID")
	require.NotContains(t, r.stdout, "events send")
	r = cliEnv(t, nil, "runs", "list", "--help")
	require.Contains(t, r.ok(t), "--since DURATION")
	require.Contains(t, r.stdout, "--status STATUSES")
	r = cliEnv(t, nil, "help", "events", "send")
	require.Contains(t, r.ok(t), "--data JSON")

	// No command: usage on stderr, status 2.
	r = cliEnv(t, nil)
	r.fails(t, exitUsage, "Usage: durable")
	require.Empty(t, r.stdout)
}

// TestUsageErrors: bad command lines exit with status 2 and a message
// naming what was wrong, before touching the database (the URL points
// nowhere).
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	nowhere := "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `durable: unknown command "bogus"`},
		{[]string{"runs", "bogus"}, `durable: runs: unknown command "bogus"`},
		{[]string{"runs"}, "durable: runs: missing command"},
		{[]string{"runs", "show"}, "durable: runs show: missing argument ID"},
		{[]string{"runs", "show", "a", "b"}, `durable: runs show: unexpected argument "b"`},
		{[]string{"runs", "list", "--nope"}, "durable: runs list: flag provided but not defined: -nope"},
		{[]string{"runs", "list", "--since", "yesterday"}, `durable: runs list: --since "yesterday": want a positive duration`},
		{[]string{"runs", "list", "--if", "event.data.plan =="}, `durable: runs list: --if "event.data.plan =="`},
		{[]string{"runs", "list", "--if", "event.data.n + 1"}, "does not evaluate to a bool"},
		{[]string{"runs", "list", "--status", "done"}, `"done" is not a run status`},
		{[]string{"runs", "list", "--limit", "5000"}, "--limit 5000: want 1 to 1000"},
		{[]string{"events", "send", "a/b", "--data", "{nope"}, "durable: events send: --data is not valid JSON"},
		{[]string{"events", "send", "durable/function.failed"}, "reserved"},
		{[]string{"--schema", "Bad-Name", "runs", "list"}, `durable: --schema: invalid schema name "Bad-Name"`},
		{[]string{"--nope", "runs", "list"}, "durable: flag provided but not defined: -nope"},
	} {
		r := cliEnv(t, nil, append([]string{"--database-url", nowhere}, c.args...)...)
		r.fails(t, exitUsage, c.want)
		require.Empty(t, r.stdout, c.args)
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	schema, pool := freshSchema(t)

	// Not migrated yet: the message says what to run, in terminal terms.
	cli(t, schema, "runs", "list").fails(t, exitRuntime, "run 'durable --schema "+schema+" migrate up' first")

	require.Contains(t, cli(t, schema, "migrate", "up").ok(t), "at the current version")
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('durable_run', 'river_job')`, schema).Scan(&n))
	require.Equal(t, 2, n)
	cli(t, schema, "runs", "list").ok(t)
	// Up again is a no-op.
	require.Equal(t, "up", jsonOut[struct{ Direction string }](t, cli(t, schema, "migrate", "up", "--json")).Direction)

	sql := cli(t, schema, "migrate", "sql").ok(t)
	require.True(t, strings.Index(sql, `CREATE SCHEMA IF NOT EXISTS "`+schema+`"`) < strings.Index(sql, `CREATE TABLE "`+schema+`".durable_run`))
	require.Less(t, strings.Index(sql, "-- river 001"), strings.Index(sql, "-- durable 001"))
	m := jsonOut[struct {
		Migrations []migrationJSON `json:"migrations"`
	}](t, cli(t, schema, "migrate", "sql", "--json"))
	require.Equal(t, "river", m.Migrations[0].Line)
	require.Equal(t, "durable", m.Migrations[len(m.Migrations)-1].Line)
	require.Contains(t, cli(t, schema, "migrate", "sql", "--down").ok(t), `DROP SCHEMA IF EXISTS "`+schema+`"`)

	require.Contains(t, cli(t, schema, "migrate", "down", "--river").ok(t), "Dropped pgdurable's and River's tables")
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&n))
	require.Zero(t, n)
	cli(t, schema, "runs", "list").fails(t, exitRuntime, "migrate up' first")
}

// TestNoDatabaseURL: without --database-url or DATABASE_URL the command
// says so, and tries the local server.
func TestNoDatabaseURL(t *testing.T) {
	t.Parallel()
	r := cliEnv(t, nil, "--schema", "cli_never_created", "runs", "list")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "neither --database-url nor DATABASE_URL is set")
	// DATABASE_URL is used when set.
	r = cliEnv(t, []string{"DATABASE_URL=postgres://nobody@127.0.0.1:1/none?connect_timeout=1"}, "runs", "list")
	r.fails(t, exitRuntime, "cannot connect to Postgres at 127.0.0.1:1/none (from DATABASE_URL)")
	require.NotContains(t, r.stderr, "neither")
}

// greet is a function with one step and an output.
func greet() durable.Function {
	return durable.NewFunction(durable.FunctionOpts{
		ID:       "greet",
		Triggers: []durable.Trigger{{Event: "user/signup", If: "event.data.name != \"\""}},
	}, func(ctx context.Context, in durable.Input[struct{ Name string }]) (string, error) {
		return durable.Step(ctx, "hello", func(ctx context.Context) (string, error) { return "hi " + in.Event.Data.Name, nil })
	})
}

func TestEventsSendAndRunsList(t *testing.T) {
	t.Parallel()
	env := durabletest.New(t, greet())

	eventID := strings.TrimSpace(cli(t, env.Schema, "events", "send", "user/signup", "--data", `{"name": "ada"}`).ok(t))
	var runID string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		runs, err := env.Client.RunsForEvent(t.Context(), eventID)
		require.NoError(c, err)
		require.Len(c, runs, 1)
		runID = runs[0].ID
	}, 30*time.Second, 20*time.Millisecond)
	run := waitRun(t, env, runID)
	require.Equal(t, durable.RunCompleted, run.Status)
	require.JSONEq(t, `"hi ada"`, string(run.Output))

	out := cli(t, env.Schema, "runs", "list").ok(t)
	require.Contains(t, lineOf(t, out, "ID "), "STATUS")
	line := lineOf(t, out, runID)
	require.Contains(t, line, "greet")
	require.Contains(t, line, "completed")

	list := jsonOut[struct {
		Runs []runJSON `json:"runs"`
		Next string    `json:"next"`
	}](t, cli(t, env.Schema, "runs", "list", "--json"))
	require.Len(t, list.Runs, 1)
	require.Equal(t, runID, list.Runs[0].ID)
	require.Equal(t, "completed", list.Runs[0].Status)
	require.Equal(t, []string{eventID}, list.Runs[0].EventIDs)
	require.Empty(t, list.Next)

	// Filters reach ListRuns.
	for _, c := range []struct {
		args  []string
		match bool
	}{
		{[]string{"--function", "greet"}, true},
		{[]string{"--function", "other"}, false},
		{[]string{"--status", "failed,cancelled"}, false},
		{[]string{"--status", "failed", "--status", "completed"}, true},
		{[]string{"--since", "1h"}, true},
		{[]string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, false},
		{[]string{"--if", `event.data.name == "ada" && output == "hi ada"`}, true},
		{[]string{"--if", `event.data.name == "bob"`}, false},
	} {
		r := cli(t, env.Schema, append([]string{"runs", "list"}, c.args...)...)
		require.Equal(t, c.match, strings.Contains(r.ok(t), runID), c.args)
	}

	// Pages: the first page hints at the cursor of the next.
	second := env.Run(durable.Event{Name: "user/signup", Data: map[string]string{"name": "bob"}})
	r := cli(t, env.Schema, "runs", "list", "--limit", "1")
	require.Contains(t, r.ok(t), second.ID)
	require.NotContains(t, r.stdout, runID)
	_, cursor, found := strings.Cut(strings.TrimSpace(r.stderr), "--cursor ")
	require.True(t, found, r.stderr)
	r = cli(t, env.Schema, "runs", "list", "--limit", "1", "--cursor", cursor)
	require.Contains(t, r.ok(t), runID)
	cli(t, env.Schema, "runs", "list", "--cursor", "garbage").fails(t, exitRuntime, "durable: runs list:")

	// An event ID given is kept, and a repeat is not delivered again.
	for range 2 {
		require.Equal(t, "evt-fixed\n", cli(t, env.Schema, "events", "send", "user/signup", "--id", "evt-fixed", "--data", `{"name":"cy"}`).ok(t))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		runs, err := env.Client.RunsForEvent(t.Context(), "evt-fixed")
		require.NoError(c, err)
		require.Len(c, runs, 1)
	}, 30*time.Second, 20*time.Millisecond)

	// --json, and data from a file.
	file := filepath.Join(t.TempDir(), "data.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"name":"di"}`), 0o600))
	sent := jsonOut[struct{ ID string }](t, cli(t, env.Schema, "events", "send", "user/signup", "--data", "@"+file, "--json"))
	require.NotEmpty(t, sent.ID)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		runs, err := env.Client.RunsForEvent(t.Context(), sent.ID)
		require.NoError(c, err)
		require.Len(c, runs, 1)
		require.Equal(c, durable.RunCompleted, runs[0].Status)
		require.JSONEq(c, `"hi di"`, string(runs[0].Output))
	}, 30*time.Second, 20*time.Millisecond)
}
