// Package ui serves pgdurable's run browser: server-rendered pages over a
// [durable.Client] with actions to cancel and rerun runs. It needs no Node
// toolchain and loads nothing from the network (its templates, CSS and a
// little JavaScript are embedded); every page reads without JavaScript,
// which only adds a pausable auto-refresh and confirmations.
//
// Pages, under Options.Prefix:
//
//	/                the runs, newest first: filters (function, status,
//	                 time range, CEL over event and output), cursor pages,
//	                 counts by status (cached, estimated on big tables)
//	/runs/{id}       a run: trigger events, timings, parent, children,
//	                 rerun of, and its step timeline (attempts, errors,
//	                 deadlines, outputs on demand)
//	/events          recent events and the runs each started
//	/functions       the registry: triggers, options, processes, runs
//	/cancel-many     preview, then cancel, the live runs matching a filter
//	/healthz         {"status":"ok"} when the database answers
//
// Actions are form POSTs refused for cross-site requests
// ([http.CrossOriginProtection]); with Options.ReadOnly they are neither
// rendered nor accepted (405). Pages are sent with a Content-Security-Policy
// allowing only their own scripts and styles, and may not be framed. The
// handler has no login of its own: mount it behind the app's
// authentication (the package's example puts it behind basic auth).
package ui

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/pgdurable/durable"
)

// Options configures [NewHandler].
type Options struct {
	// Prefix is the path the handler is mounted under, e.g. "/durable"
	// (a trailing slash is dropped); "" mounts it at the root. Requests are expected
	// with the prefix still on their path: mount the handler with
	// mux.Handle(prefix+"/", h), not behind http.StripPrefix.
	Prefix string
	// ReadOnly removes every action: no cancel or rerun forms are
	// rendered and POSTs are refused.
	ReadOnly bool
	// HidePayloads keeps event data and step and run outputs off the pages
	// until asked for, one run or event at a time.
	HidePayloads bool
}

// NewHandler serves the run browser: GET {Prefix}/ lists runs (filters:
// function, status, time range, CEL search), GET {Prefix}/runs/{id} shows a
// run (trigger event, step timeline with attempts, errors and outputs,
// parent/child links). Actions (cancel, rerun, rerun from a step, cancel
// many) are POSTs guarded against cross-site requests and absent when
// ReadOnly. It has no login of its own: mount it behind the app's auth.
func NewHandler(client *durable.Client, opts *Options) (http.Handler, error) {
	if client == nil {
		return nil, errors.New("ui: NewHandler: client is nil")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	// "durable", "/durable/" and "/durable" mount at /durable; "/" at the
	// root.
	if p := strings.Trim(o.Prefix, "/"); p != "" {
		o.Prefix = "/" + p
	} else {
		o.Prefix = ""
	}
	if strings.ContainsAny(o.Prefix, "{}?#%\t\n\r ") {
		return nil, fmt.Errorf("ui: NewHandler: Options.Prefix %q: want a plain path such as /durable", opts.Prefix)
	}
	return newServer(client, o)
}
