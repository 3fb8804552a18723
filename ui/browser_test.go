package ui_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/ui"
)

// chromiumPath finds a Chromium to drive, or skips the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("DURABLE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("browser test skipped: no Chromium found (install Debian's chromium package, e.g. apt-get install -y chromium, or set DURABLE_CHROMIUM to a Chrome binary)")
	return ""
}

// newBrowser starts a headless Chromium for the test; every JavaScript
// dialog (the actions' confirmations) is accepted.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", path, err)
	}
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return ctx
}

// do runs browser actions with a deadline, failing the test with what was
// being done.
func do(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluating %s: %v", js, err)
	}
	return v
}

// until waits (at most 30 seconds) for a JavaScript condition to hold,
// across page loads (an evaluation during a navigation fails: it is tried
// again).
func until(t *testing.T, ctx context.Context, what, js string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := chromedp.Run(ectx, chromedp.Evaluate[bool]("Boolean("+js+")"))
		cancel()
		if err == nil && ok {
			return
		}
		last = err
		tick := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			tick.Stop()
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
	t.Fatalf("waiting for %s (%s): not true after 30s (last error: %v)", what, js, last)
}

// screenshot saves the page as docs/screenshots/name when
// DURABLE_SCREENSHOTS=1 (to refresh the README's pictures), else in the
// test's temporary directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := t.TempDir()
	if os.Getenv("DURABLE_SCREENSHOTS") == "1" {
		dir = filepath.Join("..", "docs", "screenshots")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", filepath.Join(dir, name))
}

// TestBrowser drives the run browser in headless Chromium, mounted under a
// prefix: the runs list and its filter, a failed run's timeline with its
// attempts, a rerun from a step, and cancelling a sleeping run.
func TestBrowser(t *testing.T) {
	ctx := newBrowser(t)
	f := newFixture(t)
	for i, plan := range []string{"pro", "free", "pro", "free", "free"} {
		f.completed(t, fmt.Sprintf("o-%d", i+1), plan, 40*(i+1))
	}
	failed := f.failed(t, "o-6")
	napID := f.sleeping(t, "n-1")
	otherNap := f.sleeping(t, "n-2")
	srv := f.server(t, &ui.Options{Prefix: "/durable"})
	base := srv.URL + "/durable"

	// The runs page lists every run, newest first, with counts by status.
	do(t, ctx, "opening the runs page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#runs tr.run")))
	if n := eval[int](t, ctx, `document.querySelectorAll("#runs tr.run").length`); n != 8 {
		t.Fatalf("runs page lists %d runs, want 8", n)
	}
	if first := eval[string](t, ctx, `document.querySelector("#runs tr.run").dataset.run`); first != otherNap {
		t.Fatalf("first run listed is %s, want the newest, %s", first, otherNap)
	}
	until(t, ctx, "the counts by status", `document.querySelector("#counts a.st-completed") !== null`)
	counts := eval[string](t, ctx, `document.getElementById("counts").innerText`)
	for _, want := range []string{"completed 5", "failed 1", "running 2"} {
		if !strings.Contains(counts, want) {
			t.Fatalf("counts %q do not say %q", counts, want)
		}
	}

	// Auto-refresh can be paused, and the choice is remembered.
	until(t, ctx, "the auto-refresh toggle", `document.getElementById("refresh-toggle").innerText.includes("every 5s")`)
	do(t, ctx, "pausing auto-refresh", chromedp.Click(chromedp.ID("refresh-toggle")))
	until(t, ctx, "auto-refresh paused", `document.getElementById("refresh-toggle").innerText.includes("paused") && localStorage.getItem("durable-ui-refresh") === "off"`)
	do(t, ctx, "reloading", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("refresh-toggle")))
	until(t, ctx, "auto-refresh still paused after a reload", `document.getElementById("refresh-toggle").innerText.includes("paused")`)
	do(t, ctx, "resuming auto-refresh", chromedp.Click(chromedp.ID("refresh-toggle")))
	until(t, ctx, "auto-refresh on", `document.getElementById("refresh-toggle").innerText.includes("every 5s")`)

	// Filtering by a CEL search over the trigger event.
	do(t, ctx, "filtering on the pro plan",
		chromedp.SendKeys(chromedp.ID("f-q"), `event.data.plan == "pro"`),
		chromedp.Click(chromedp.ID("f-apply")))
	until(t, ctx, "the filtered page", `location.search.includes("q=") && document.querySelectorAll("#runs tr.run").length === 2`)
	text := eval[string](t, ctx, `document.getElementById("runs").innerText`)
	if strings.Contains(text, "nap") || strings.Contains(text, "failed") {
		t.Fatalf("filtered runs include runs of other plans: %s", text)
	}

	// A failed run: its timeline has a bar per step and a mark per failed
	// attempt, and lists the attempts' errors.
	do(t, ctx, "opening the failed run", chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#runs tr.run`)),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-run=%q] a`, failed.ID))),
		chromedp.WaitVisible(chromedp.ID("timeline")))
	if got := eval[string](t, ctx, `document.getElementById("run-status").innerText`); got != "failed" {
		t.Fatalf("run status %q, want failed", got)
	}
	if n := eval[int](t, ctx, `document.querySelectorAll("#timeline .tl-row[data-step]").length`); n != 2 {
		t.Fatalf("timeline has %d rows, want 2 (prepare, charge)", n)
	}
	if n := eval[int](t, ctx, `document.querySelectorAll('#timeline .tl-row[data-step="charge"] .mark').length`); n != 2 {
		t.Fatalf("charge shows %d failed attempts, want 2", n)
	}
	do(t, ctx, "opening charge's details", chromedp.Click(chromedp.CSS(`.tl-row[data-step="charge"] summary`)),
		chromedp.WaitVisible(chromedp.CSS(`.tl-row[data-step="charge"] .attempts`)))
	if got := eval[string](t, ctx, `document.querySelector('.tl-row[data-step="charge"] .attempts').innerText`); strings.Count(got, "card declined for o-6") != 2 {
		t.Fatalf("charge's attempts read %q, want both errors", got)
	}
	screenshot(t, ctx, "run.png")

	// Rerun from the failing step, now that it succeeds: the new run
	// replays prepare (its body does not run again) and completes.
	prepared := f.prepared.Load()
	do(t, ctx, "rerunning from charge", chromedp.Click(chromedp.CSS(`.tl-row[data-step="charge"] button.rerun-step`)),
		chromedp.WaitVisible(chromedp.ID("rerun-of")))
	if got := eval[string](t, ctx, `document.getElementById("rerun-of").innerText`); got != failed.ID {
		t.Fatalf("rerun of %q, want %s", got, failed.ID)
	}
	until(t, ctx, "the rerun to complete (auto-refresh)", `document.getElementById("run-status").innerText === "completed"`)
	if n := f.prepared.Load(); n != prepared {
		t.Fatalf("prepare ran %d more times in the rerun from charge, want 0", n-prepared)
	}

	// Cancel the sleeping run: its sleep shows with its deadline first.
	do(t, ctx, "opening the sleeping run", chromedp.Navigate(base+"/runs/"+napID), chromedp.WaitVisible(chromedp.ID("timeline")))
	if n := eval[int](t, ctx, `document.querySelectorAll('.tl-row[data-step="snooze"] .bar.pending').length`); n != 1 {
		t.Fatal("the sleep has no bar up to its deadline")
	}
	if got := eval[string](t, ctx, `document.querySelector('.tl-row[data-step="snooze"] summary').innerText`); !strings.Contains(got, "wakes") {
		t.Fatalf("the sleep's summary %q does not say when it wakes", got)
	}
	do(t, ctx, "cancelling the sleeping run", chromedp.Click(chromedp.ID("cancel")), chromedp.WaitVisible(chromedp.ID("notice")))
	until(t, ctx, "the run to show cancelled", `document.getElementById("run-status").innerText === "cancelled"`)
	run, err := f.env.Client.GetRun(t.Context(), napID)
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != durable.RunCancelled {
		t.Fatalf("sleeping run is %s after cancel, want cancelled", run.Status)
	}

	// The runs page now has a run in every status, and a rerun (on a new
	// handler: its counts are fresh, not cached from the first view).
	fresh := f.server(t, &ui.Options{Prefix: "/durable"})
	do(t, ctx, "opening the runs page again", chromedp.Navigate(fresh.URL+"/durable/"), chromedp.WaitVisible(chromedp.CSS("#runs tr.run")))
	until(t, ctx, "fresh counts", `document.querySelector("#counts a.st-cancelled") !== null`)
	until(t, ctx, "the rerun in the list", `document.querySelectorAll("#runs tr.run").length === 9 && document.querySelector("#runs .tag") !== null`)
	screenshot(t, ctx, "runs.png")
}
