package ui

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

// Actions are plain form POSTs (they work without JavaScript), answered
// with a redirect to the page showing the result. NewHandler does not
// route them when ReadOnly, and cross-site requests never reach them.

const actionTimeout = 30 * time.Second

func (s *server) cancelRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := detached(r.Context(), actionTimeout)
	defer cancel()
	if err := s.client.Cancel(ctx, id); err != nil {
		if errors.Is(err, durable.ErrRunNotFound) {
			s.fail(w, r, http.StatusNotFound, "Run "+id+" not found: nothing to cancel.")
			return
		}
		s.failErr(w, r, err)
		return
	}
	http.Redirect(w, r, s.path("/runs/", id)+"?done=cancelled", http.StatusSeeOther)
}

func (s *server) rerunRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := r.ParseForm(); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := detached(r.Context(), actionTimeout)
	defer cancel()
	newID, err := s.client.Rerun(ctx, id, durable.RerunOpts{FromStep: r.PostFormValue("from_step")})
	switch {
	case errors.Is(err, durable.ErrRunNotFound):
		s.fail(w, r, http.StatusNotFound, "Run "+id+" not found: nothing to rerun.")
		return
	case errors.Is(err, durable.ErrFunctionNotFound):
		s.fail(w, r, http.StatusConflict, err.Error())
		return
	case err != nil && strings.Contains(err.Error(), "FromStep"):
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		s.failErr(w, r, err)
		return
	}
	http.Redirect(w, r, s.path("/runs/", newID)+"?done=rerun", http.StatusSeeOther)
}

// The preview counts live runs with at most cancelPreviewCalls ListRuns
// calls and for at most cancelPreviewTime; beyond, it says "at least".
const (
	cancelPreviewCalls = 20
	cancelPreviewTime  = 150 * time.Millisecond
)

type cancelData struct {
	Filter   runsFilter
	Count    int
	AtLeast  bool
	Done     bool
	Canceled int
	BackURL  string
}

// cancelFilter is the runs page's filter as a CancelFilter (live runs of
// one function, created in the range, whose trigger event matches q).
func (s *server) cancelFilter(r *http.Request) (runsFilter, durable.RunFilter, durable.CancelFilter, []string) {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		q = r.PostForm
	}
	f := runsFilter{Function: strings.TrimSpace(q.Get("function")), Q: strings.TrimSpace(q.Get("q")),
		Since: q.Get("since"), After: q.Get("after"), Before: q.Get("before")}
	rf, errs := s.runFilter(f)
	if f.Function == "" {
		errs = append(errs, "choose a function: cancelling many runs is done one function at a time")
	}
	cf := durable.CancelFilter{FunctionID: f.Function, StartedAfter: rf.CreatedAfter, StartedBefore: rf.CreatedBefore, If: f.Q}
	rf.Status = []durable.RunStatus{durable.RunQueued, durable.RunRunning}
	rf.Limit = durable.MaxListLimit
	return f, rf, cf, errs
}

// cancelManyPreview counts the live runs a cancellation would cancel and
// shows the form that does it.
func (s *server) cancelManyPreview(w http.ResponseWriter, r *http.Request) {
	f, rf, _, errs := s.cancelFilter(r)
	p := s.newPage(r, "Cancel runs", "runs")
	d := &cancelData{Filter: f, BackURL: s.path("/") + "?" + f.query().Encode()}
	p.Data = d
	if len(errs) > 0 {
		p.Error = strings.Join(errs, "\n")
		s.render(w, r, http.StatusBadRequest, "cancel", p)
		return
	}
	// Bounded: ListRuns examines at most 10,000 runs a call.
	deadline := time.Now().Add(cancelPreviewTime)
	for calls := 0; ; calls++ {
		page, err := s.client.ListRuns(r.Context(), rf)
		if err != nil {
			p.Error = strings.TrimPrefix(err.Error(), "durable: ")
			s.render(w, r, http.StatusBadRequest, "cancel", p)
			return
		}
		d.Count += len(page.Runs)
		rf.Cursor = page.Next
		if page.Next == "" || calls+1 >= cancelPreviewCalls || time.Now().After(deadline) {
			break
		}
	}
	d.AtLeast = rf.Cursor != ""
	s.render(w, r, http.StatusOK, "cancel", p)
}

func (s *server) cancelMany(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	f, _, cf, errs := s.cancelFilter(r)
	p := s.newPage(r, "Cancel runs", "runs")
	d := &cancelData{Filter: f, BackURL: s.path("/") + "?" + f.query().Encode()}
	p.Data = d
	if len(errs) > 0 {
		p.Error = strings.Join(errs, "\n")
		s.render(w, r, http.StatusBadRequest, "cancel", p)
		return
	}
	ctx, cancel := detached(r.Context(), 5*time.Minute)
	defer cancel()
	n, err := s.client.CancelMany(ctx, cf)
	d.Done, d.Canceled = true, n
	if err != nil {
		p.Error = strings.TrimPrefix(err.Error(), "durable: ")
		s.render(w, r, http.StatusBadRequest, "cancel", p)
		return
	}
	s.render(w, r, http.StatusOK, "cancel", p)
}
