package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/durabletest"
)

// startUI starts "durable ui" with args and returns the process and its
// stdout; the process is killed when t ends if it still runs.
func startUI(t *testing.T, schema string, args ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"--database-url", databaseURL, "--schema", schema, "ui"}, args...)...)
	cmd.Env = withoutDatabaseURL()
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, bufio.NewReader(stdout)
}

// get fetches url and returns its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// stop interrupts the process and checks that it shuts down cleanly.
func stop(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "exit status after SIGINT")
	case <-time.After(20 * time.Second):
		t.Fatal("durable ui did not stop within 20s of SIGINT")
	}
}

func TestUI(t *testing.T) {
	t.Parallel()
	env := durabletest.New(t, greet())
	run := env.Run(durable.Event{Name: "user/signup", Data: map[string]string{"name": "ada"}})

	// --json: the address picked is printed first.
	cmd, out := startUI(t, env.Schema, "--addr", "127.0.0.1:0", "--json")
	var started struct {
		URL    string `json:"url"`
		Addr   string `json:"addr"`
		Schema string `json:"schema"`
	}
	require.NoError(t, json.NewDecoder(out).Decode(&started))
	require.Regexp(t, `^http://127\.0\.0\.1:[1-9][0-9]*/$`, started.URL)
	require.Equal(t, env.Schema, started.Schema)
	code, body := get(t, started.URL+"healthz")
	require.Equal(t, http.StatusOK, code, body)
	// The runs page is the schema's.
	code, body = get(t, started.URL)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, run.ID)
	stop(t, cmd)

	// A prefix; the root redirects to it.
	cmd, out = startUI(t, env.Schema, "--addr", "127.0.0.1:0", "--prefix", "/durable", "--read-only")
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	url := regexp.MustCompile(`http://127\.0\.0\.1:\d+/durable/`).FindString(line)
	require.NotEmpty(t, url, line)
	require.Contains(t, line, env.Schema)
	code, body = get(t, url+"runs/"+run.ID)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "hello")
	code, body = get(t, strings.TrimSuffix(url, "durable/"))
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, run.ID)
	stop(t, cmd)

	// An address that cannot be listened on is an error naming --addr.
	cli(t, env.Schema, "ui", "--addr", "127.0.0.1:99999").fails(t, exitRuntime, "durable: ui: --addr:")
}
