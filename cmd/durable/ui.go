package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/pgdurable/durable/ui"
)

var uiCmd = &cmd{path: "ui", synopsis: "[--addr :8080] [--prefix /durable] [--read-only] [--hide-payloads]",
	summary: "serve the run browser until interrupted", run: serveUI}

// shutdownTimeout bounds how long the server waits for requests in
// flight once interrupted.
const shutdownTimeout = 5 * time.Second

func serveUI(ctx context.Context, c *call) error {
	addr := c.fs.String("addr", ":8080", "`ADDR` to listen on (host:port; port 0 picks a free one)")
	var opts ui.Options
	c.fs.StringVar(&opts.Prefix, "prefix", "", "serve under this `PATH`, e.g. /durable")
	c.fs.BoolVar(&opts.ReadOnly, "read-only", false, "no cancel or rerun actions")
	c.fs.BoolVar(&opts.HidePayloads, "hide-payloads", false, "hide event data and outputs until asked for")
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	h, err := ui.NewHandler(client, &opts)
	if err != nil {
		return usagef("%v", err)
	}
	handler := h
	if opts.Prefix != "" {
		mux := http.NewServeMux()
		mux.Handle(opts.Prefix+"/", h)
		mux.Handle(opts.Prefix, http.RedirectHandler(opts.Prefix+"/", http.StatusFound))
		mux.Handle("/{$}", http.RedirectHandler(opts.Prefix+"/", http.StatusFound))
		handler = mux
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	url := "http://" + displayHost(ln.Addr()) + opts.Prefix + "/"
	if c.json {
		if err := writeJSON(c.stdout, struct {
			URL    string `json:"url"`
			Addr   string `json:"addr"`
			Schema string `json:"schema"`
		}{url, ln.Addr().String(), c.schema}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "Serving the run browser of schema %q on %s (Ctrl-C to stop)\n", c.schema, url)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// displayHost is the host:port to show for a listener: an unspecified
// address (":8080", "0.0.0.0") as localhost.
func displayHost(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := tcp.IP.String()
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		host = "localhost"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%d", host, tcp.Port)
}
