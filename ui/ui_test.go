package ui_test

import (
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/pgdurable/durable"
	"github.com/pgdurable/durable/ui"
)

// get fetches a page and returns its status and body.
func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// post sends a form as a browser would, with Sec-Fetch-Site set to site
// ("" for none) and Origin to origin ("" for none), without following
// redirects.
func post(t *testing.T, u string, form url.Values, site, origin string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if site != "" {
		req.Header.Set("Sec-Fetch-Site", site)
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func runStatus(t *testing.T, f *fixture, id string) durable.RunStatus {
	t.Helper()
	run, err := f.env.Client.GetRun(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return run.Status
}

func TestCrossSitePostsAreRefused(t *testing.T) {
	f := newFixture(t)
	napID := f.sleeping(t, "n-1")
	srv := f.server(t, nil)
	cancelURL := srv.URL + "/runs/" + napID + "/cancel"

	if resp := post(t, cancelURL, nil, "cross-site", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site POST (Sec-Fetch-Site): %d, want 403", resp.StatusCode)
	}
	if resp := post(t, cancelURL, nil, "", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin POST (Origin only): %d, want 403", resp.StatusCode)
	}
	if resp := post(t, srv.URL+"/runs/"+napID+"/rerun", nil, "cross-site", ""); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site rerun: %d, want 403", resp.StatusCode)
	}
	if got := runStatus(t, f, napID); got != durable.RunRunning {
		t.Fatalf("run is %s after refused cancellations, want running (sleeping)", got)
	}
	// The same action from the browser's own page goes through.
	resp := post(t, cancelURL, nil, "same-origin", srv.URL)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasSuffix(resp.Header.Get("Location"), "/runs/"+napID+"?done=cancelled") {
		t.Fatalf("same-origin cancel: %d to %q, want 303 to the run", resp.StatusCode, resp.Header.Get("Location"))
	}
	if got := runStatus(t, f, napID); got != durable.RunCancelled {
		t.Fatalf("run is %s after a same-origin cancel, want cancelled", got)
	}
}

func TestReadOnlyHidesAndRefusesActions(t *testing.T) {
	f := newFixture(t)
	failed := f.failed(t, "o-1")
	napID := f.sleeping(t, "n-1")
	srv := f.server(t, &ui.Options{ReadOnly: true})

	for _, p := range []string{"/runs/" + napID, "/runs/" + failed.ID, "/?function=nap"} {
		status, body := get(t, srv.URL+p)
		if status != http.StatusOK {
			t.Fatalf("GET %s: %d", p, status)
		}
		for _, absent := range []string{`method="post"`, "Cancel run", "Rerun", "cancel-many"} {
			if strings.Contains(body, absent) {
				t.Fatalf("read-only page %s shows %q", p, absent)
			}
		}
		if !strings.Contains(body, "read-only") {
			t.Fatalf("read-only page %s does not say so", p)
		}
	}
	for _, p := range []string{"/runs/" + napID + "/cancel", "/runs/" + failed.ID + "/rerun", "/cancel-many"} {
		form := url.Values{"function": {"nap"}}
		if resp := post(t, srv.URL+p, form, "same-origin", srv.URL); resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("read-only POST %s: %d, want 405 or 403", p, resp.StatusCode)
		}
	}
	if status, _ := get(t, srv.URL+"/cancel-many?function=nap"); status != http.StatusNotFound {
		t.Fatalf("read-only cancel preview: %d, want 404", status)
	}
	if got := runStatus(t, f, napID); got != durable.RunRunning {
		t.Fatalf("run is %s after read-only POSTs, want running", got)
	}
	page, err := f.env.Client.ListRuns(t.Context(), durable.RunFilter{FunctionID: "checkout"})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Runs) != 1 {
		t.Fatalf("%d checkout runs after a read-only rerun POST, want 1", len(page.Runs))
	}
}

func TestHidePayloadsUntilAskedFor(t *testing.T) {
	f := newFixture(t)
	run := f.completed(t, "o-secret-data", "pro", 7)
	hidden := f.server(t, &ui.Options{HidePayloads: true})
	shown := f.server(t, nil)

	// The event's data holds "o-secret-data", the output "tok-o-secret-data".
	for _, p := range []string{"/runs/" + run.ID, "/events"} {
		_, body := get(t, hidden.URL+p)
		if strings.Contains(body, "o-secret-data") {
			t.Fatalf("HidePayloads: %s shows the payload", p)
		}
		if !strings.Contains(body, "payloads=1") {
			t.Fatalf("HidePayloads: %s has no link to show the payloads", p)
		}
		_, body = get(t, hidden.URL+p+"?payloads=1")
		if !strings.Contains(body, "o-secret-data") {
			t.Fatalf("HidePayloads with ?payloads=1: %s does not show the payload", p)
		}
		_, body = get(t, shown.URL+p)
		if !strings.Contains(body, "o-secret-data") {
			t.Fatalf("without HidePayloads: %s does not show the payload", p)
		}
	}
	_, body := get(t, hidden.URL+"/runs/"+run.ID+"?payloads=1")
	if !strings.Contains(body, "tok-o-secret-data") {
		t.Fatal("?payloads=1 does not show the run's output")
	}
}

func TestMountedUnderPrefix(t *testing.T) {
	f := newFixture(t)
	run := f.completed(t, "o-1", "pro", 7)
	srv := f.server(t, &ui.Options{Prefix: "/ops/durable"})

	href := regexp.MustCompile(`(?:href|action|src)="(/[^"]*)"`)
	for _, p := range []string{"/", "/runs/" + run.ID, "/events", "/functions"} {
		status, body := get(t, srv.URL+"/ops/durable"+p)
		if status != http.StatusOK {
			t.Fatalf("GET /ops/durable%s: %d", p, status)
		}
		links := href.FindAllStringSubmatch(body, -1)
		if len(links) < 4 {
			t.Fatalf("/ops/durable%s has %d links", p, len(links))
		}
		for _, m := range links {
			if !strings.HasPrefix(m[1], "/ops/durable/") {
				t.Fatalf("/ops/durable%s links to %s, outside the prefix", p, m[1])
			}
		}
	}
	if status, body := get(t, srv.URL+"/ops/durable/static/style.css"); status != http.StatusOK || !strings.Contains(body, ".timeline") {
		t.Fatalf("stylesheet under the prefix: %d", status)
	}
	if status, body := get(t, srv.URL+"/ops/durable/healthz"); status != http.StatusOK || !strings.Contains(body, `"ok"`) {
		t.Fatalf("healthz: %d %s", status, body)
	}
	if status, body := get(t, srv.URL+"/app"); status != http.StatusOK || body != "the app" {
		t.Fatalf("the app's own route: %d %q", status, body)
	}
	if status, _ := get(t, srv.URL+"/runs/"+run.ID); status != http.StatusNotFound {
		t.Fatalf("run page outside the prefix: %d, want 404", status)
	}
	if _, err := ui.NewHandler(f.env.Client, &ui.Options{Prefix: "/ops/{id}"}); err == nil {
		t.Fatal("NewHandler accepted a prefix with a pattern in it")
	}
	// A trailing slash is dropped.
	slash := f.server(t, &ui.Options{Prefix: "/ops/"})
	if status, body := get(t, slash.URL+"/ops/runs/"+run.ID); status != http.StatusOK || !strings.Contains(body, `href="/ops/static/style.css"`) {
		t.Fatalf("prefix /ops/: run page %d", status)
	}
	if _, err := ui.NewHandler(nil, nil); err == nil {
		t.Fatal("NewHandler accepted a nil client")
	}
}

func TestBadInputIsShownNotPanicked(t *testing.T) {
	f := newFixture(t)
	f.completed(t, "o-1", "pro", 7)
	srv := f.server(t, nil)

	status, body := get(t, srv.URL+"/runs/no-such-run-42")
	if status != http.StatusNotFound || !strings.Contains(body, "no-such-run-42") {
		t.Fatalf("unknown run: %d, want 404 naming it; body: %.300s", status, body)
	}
	status, body = get(t, srv.URL+"/?q="+url.QueryEscape(`event.data.plan ==`))
	if status != http.StatusBadRequest || !strings.Contains(body, `id="page-error"`) || !strings.Contains(body, "RunFilter.If") {
		t.Fatalf("bad CEL: %d, want 400 with the error on the page; body: %.500s", status, body)
	}
	if !strings.Contains(body, `value="event.data.plan =="`) {
		t.Fatal("bad CEL: the search box lost what was typed")
	}
	status, body = get(t, srv.URL+"/?q="+url.QueryEscape(`event.data.total + 1`))
	if status != http.StatusBadRequest || !strings.Contains(body, "bool") {
		t.Fatalf("non-bool CEL: %d; body: %.500s", status, body)
	}
	for _, q := range []string{"cursor=not-a-cursor", "after=yesterday", "since=forever", "status=sleepy"} {
		status, body = get(t, srv.URL+"/?"+q)
		if status != http.StatusBadRequest || !strings.Contains(body, `id="page-error"`) {
			t.Fatalf("runs page with %s: %d, want 400 with the error shown", q, status)
		}
	}
	if status, body = get(t, srv.URL+"/events?cursor=nope"); status != http.StatusBadRequest || !strings.Contains(body, "Cursor") {
		t.Fatalf("events with a bad cursor: %d", status)
	}
	if status, _ = get(t, srv.URL+"/no/such/page"); status != http.StatusNotFound {
		t.Fatalf("unknown page: %d, want 404", status)
	}
	resp := post(t, srv.URL+"/runs/no-such-run-42/cancel", nil, "same-origin", srv.URL)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("cancelling an unknown run: %d, want 404", resp.StatusCode)
	}
	resp = post(t, srv.URL+"/runs/no-such-run-42/rerun", nil, "same-origin", srv.URL)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("rerunning an unknown run: %d, want 404", resp.StatusCode)
	}
}

func TestCancelManyPreviewsThenCancels(t *testing.T) {
	f := newFixture(t)
	naps := []string{f.sleeping(t, "n-1"), f.sleeping(t, "n-2")}
	done := f.completed(t, "o-1", "pro", 7)
	srv := f.server(t, nil)

	_, body := get(t, srv.URL+"/?function=nap")
	if !strings.Contains(body, `href="/cancel-many?function=nap"`) {
		t.Fatalf("runs page of nap has no cancel-many link")
	}
	status, body := get(t, srv.URL+"/cancel-many?function=nap")
	if status != http.StatusOK || !regexp.MustCompile(`id="preview">\s*2 live runs`).MatchString(body) {
		t.Fatalf("preview: %d; body: %.2000s", status, body)
	}
	// A filter on the trigger event narrows it.
	_, body = get(t, srv.URL+"/cancel-many?function=nap&q="+url.QueryEscape(`event.data.id == "n-2"`))
	if !regexp.MustCompile(`id="preview">\s*1 live run `).MatchString(body) {
		t.Fatalf("filtered preview: %.2000s", body)
	}
	resp := post(t, srv.URL+"/cancel-many", url.Values{"function": {"nap"}, "q": {`event.data.id == "n-2"`}}, "same-origin", srv.URL)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel many: %d", resp.StatusCode)
	}
	if runStatus(t, f, naps[0]) != durable.RunRunning || runStatus(t, f, naps[1]) != durable.RunCancelled {
		t.Fatal("cancel many with a filter did not cancel exactly the matching run")
	}
	if runStatus(t, f, done.ID) != durable.RunCompleted {
		t.Fatal("cancel many touched another function's run")
	}
	status, _ = get(t, srv.URL+"/cancel-many")
	if status != http.StatusBadRequest {
		t.Fatalf("cancel preview without a function: %d, want 400", status)
	}
}
