package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgdurable/durable"
)

var functionsCmds = []*cmd{
	{path: "functions list", summary: "list the registered functions, their triggers and live processes", run: functionsList},
}

// functionJSON is a function as --json prints it.
type functionJSON struct {
	ID           string        `json:"id"`
	Name         string        `json:"name"`
	Triggers     []triggerJSON `json:"triggers"`
	Retries      int           `json:"retries"`
	Live         bool          `json:"live"`
	Workers      []workerJSON  `json:"workers"`
	RegisteredAt time.Time     `json:"registered_at"`
}

type triggerJSON struct {
	Event string `json:"event,omitempty"`
	If    string `json:"if,omitempty"`
	Cron  string `json:"cron,omitempty"`
}

type workerJSON struct {
	ID       string    `json:"id"`
	Hostname string    `json:"hostname"`
	PID      int       `json:"pid"`
	LastSeen time.Time `json:"last_seen"`
	Live     bool      `json:"live"`
}

func functionsList(ctx context.Context, c *call) error {
	if _, err := c.parse(0, 0); err != nil {
		return err
	}
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	fns, err := client.Functions(ctx)
	if err != nil {
		return err
	}
	if c.json {
		out := struct {
			Functions []functionJSON `json:"functions"`
		}{Functions: []functionJSON{}}
		for _, f := range fns {
			j := functionJSON{ID: f.ID, Name: f.Name, Triggers: []triggerJSON{}, Retries: f.Retries, Live: f.Live,
				Workers: []workerJSON{}, RegisteredAt: f.RegisteredAt}
			for _, t := range f.Triggers {
				j.Triggers = append(j.Triggers, triggerJSON(t))
			}
			for _, w := range f.Workers {
				j.Workers = append(j.Workers, workerJSON(w))
			}
			out.Functions = append(out.Functions, j)
		}
		return writeJSON(c.stdout, out)
	}
	if len(fns) == 0 {
		fmt.Fprintln(c.stderr, "No functions registered: a process registers its functions when its client starts.")
		return nil
	}
	now := time.Now()
	t := newTable()
	t.row("ID", "TRIGGERS", "LIVE", "PROCESSES", "REGISTERED")
	for _, f := range fns {
		t.row(f.ID, orDash(triggers(f.Triggers)), yesNo(f.Live), orDash(processes(f.Workers)), fmtAge(f.RegisteredAt, now))
	}
	t.write(c.stdout)
	return nil
}

// triggers shows a function's triggers: "order/created if
// event.data.amount > 100; cron @hourly".
func triggers(ts []durable.Trigger) string {
	var parts []string
	for _, t := range ts {
		s := t.Event
		if t.Cron != "" {
			s = "cron " + t.Cron
		}
		if t.If != "" {
			s += " if " + t.If
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// processes shows the live processes that have a function (host:pid),
// and how many others are gone.
func processes(ws []durable.FunctionWorker) string {
	var live []string
	gone := 0
	for _, w := range ws {
		if !w.Live {
			gone++
			continue
		}
		live = append(live, w.Hostname+":"+strconv.Itoa(w.PID))
	}
	s := strings.Join(live, ", ")
	if gone > 0 {
		if s != "" {
			s += " "
		}
		s += fmt.Sprintf("(%d gone)", gone)
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
