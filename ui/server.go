package ui

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// server is the handler NewHandler returns.
type server struct {
	client *durable.Client
	opts   Options
	pages  map[string]*template.Template
	counts *countCache
	h      http.Handler
	now    func() time.Time
}

func newServer(c *durable.Client, o Options) (*server, error) {
	s := &server{client: c, opts: o, counts: newCountCache(c), now: time.Now}
	if err := s.parseTemplates(); err != nil {
		return nil, err
	}
	p := o.Prefix
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET "+p+"/static/", http.StripPrefix(p+"/static/", staticHandler(static)))
	mux.HandleFunc("GET "+p+"/healthz", s.healthz)
	mux.HandleFunc("GET "+p+"/{$}", s.runsPage)
	mux.HandleFunc("GET "+p+"/runs/{id}", s.runPage)
	mux.HandleFunc("GET "+p+"/events", s.eventsPage)
	mux.HandleFunc("GET "+p+"/functions", s.functionsPage)
	if !o.ReadOnly {
		mux.HandleFunc("POST "+p+"/runs/{id}/cancel", s.cancelRun)
		mux.HandleFunc("POST "+p+"/runs/{id}/rerun", s.rerunRun)
		mux.HandleFunc("GET "+p+"/cancel-many", s.cancelManyPreview)
		mux.HandleFunc("POST "+p+"/cancel-many", s.cancelMany)
	}
	mux.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("No page at %s.", r.URL.Path))
	})
	var h http.Handler = mux
	if o.ReadOnly {
		h = readOnly(h)
	}
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusForbidden, "Cross-site request refused: actions are only accepted from the run browser's own pages.")
	}))
	s.h = cop.Handler(h)
	return s, nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	s.h.ServeHTTP(w, r)
}

// readOnly refuses every request that is not a read.
func readOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only: this run browser takes no actions", http.StatusMethodNotAllowed)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func staticHandler(fsys fs.FS) http.Handler {
	files := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, err := s.client.Functions(r.Context())
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "error", "error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
}

// page is what every template gets.
type page struct {
	Title    string
	Nav      string // "runs", "events", "functions"
	Prefix   string
	ReadOnly bool
	// Hidden reports that payloads are hidden on this page (HidePayloads
	// and no ?payloads=1); ShowURL is the page with them shown.
	Hidden  bool
	ShowURL string
	// Refresh is the auto-refresh period in seconds (0: none).
	Refresh int
	Error   string
	Data    any
	Elapsed time.Duration
}

func (s *server) newPage(r *http.Request, title, nav string) *page {
	p := &page{Title: title, Nav: nav, Prefix: s.opts.Prefix, ReadOnly: s.opts.ReadOnly}
	if s.opts.HidePayloads && r.URL.Query().Get("payloads") != "1" {
		p.Hidden = true
		q := r.URL.Query()
		q.Set("payloads", "1")
		p.ShowURL = r.URL.Path + "?" + q.Encode()
	}
	return p
}

func (s *server) parseTemplates() error {
	funcs := template.FuncMap{
		"path":      s.path,
		"pathq":     s.pathq,
		"ago":       s.ago,
		"ts":        formatTime,
		"tsp":       formatTimePtr,
		"dur":       formatDuration,
		"json":      prettyJSON,
		"statusCls": statusClass,
		"pct":       func(f float64) string { return fmt.Sprintf("%.3f%%", f) },
		"num":       formatCount,
		"add":       func(a, b int) int { return a + b },
		"deref":     func(t *time.Time) time.Time { return *t },
	}
	s.pages = map[string]*template.Template{}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return fmt.Errorf("ui: template %s: %w", n, err)
		}
		s.pages[base] = t
	}
	return nil
}

// render writes a page, rendered to a buffer first so that a template
// error becomes a clean 500.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	var buf bytes.Buffer
	if err := s.pages[name].Execute(&buf, p); err != nil {
		slog.ErrorContext(r.Context(), "durable ui: rendering", "page", name, "err", err)
		http.Error(w, "durable ui: rendering failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// fail renders the error page.
func (s *server) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	p := s.newPage(r, http.StatusText(status), "")
	p.Error = msg
	s.render(w, r, status, "error", p)
}

// failErr renders err, as a 404 when it is an unknown run.
func (s *server) failErr(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, durable.ErrRunNotFound):
		s.fail(w, r, http.StatusNotFound, err.Error())
	case errors.Is(err, r.Context().Err()):
		s.fail(w, r, http.StatusServiceUnavailable, err.Error())
	default:
		s.fail(w, r, http.StatusInternalServerError, err.Error())
	}
}

// path is the URL of a page: the prefix, then parts (escaped, except
// those starting with "/").
func (s *server) path(parts ...string) string {
	var b strings.Builder
	b.WriteString(s.opts.Prefix)
	for _, p := range parts {
		if strings.HasPrefix(p, "/") {
			b.WriteString(p)
		} else {
			b.WriteString(url.PathEscape(p))
		}
	}
	return b.String()
}

// pathq is path with a query of key, value pairs (empty values dropped).
func (s *server) pathq(p string, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Add(kv[i], kv[i+1])
		}
	}
	if len(q) == 0 {
		return s.path(p)
	}
	return s.path(p) + "?" + q.Encode()
}

func (s *server) ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := s.now().Sub(t)
	if d < 0 {
		return "in " + formatDuration(-d)
	}
	return formatDuration(d) + " ago"
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "—"
	}
	return formatTime(*t)
}

func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// formatCount writes n with thousands separators.
func formatCount(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "null"
	}
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return string(raw)
	}
	return b.String()
}

// statusOrder is the order statuses are shown in; others follow, sorted.
var statusOrder = []durable.RunStatus{durable.RunQueued, durable.RunRunning, durable.RunCompleted, durable.RunFailed, durable.RunCancelled, durable.RunSkipped}

func sortStatuses(ss []durable.RunStatus) {
	slices.SortFunc(ss, func(a, b durable.RunStatus) int {
		ia, ib := slices.Index(statusOrder, a), slices.Index(statusOrder, b)
		if ia < 0 {
			ia = len(statusOrder)
		}
		if ib < 0 {
			ib = len(statusOrder)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(string(a), string(b))
	})
}

// statusClass is a CSS class for a run or step status.
func statusClass(s any) string {
	v := fmt.Sprint(s)
	var b strings.Builder
	for _, c := range v {
		if c >= 'a' && c <= 'z' || c == '_' {
			b.WriteRune(c)
		}
	}
	return "st-" + b.String()
}
