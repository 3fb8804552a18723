package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pgdurable/durable"
)

var eventsCmds = []*cmd{
	{path: "events send", synopsis: "NAME [--data JSON] [--id ID]", summary: "send an event and print its ID", run: eventsSend},
}

func eventsSend(ctx context.Context, c *call) error {
	data := c.fs.String("data", "", "the event's data: `JSON`, or @FILE to read it from a file (@- for stdin); default null")
	id := c.fs.String("id", "", "the event's `ID` (an event with an ID seen in the last 24 hours is not delivered again); default a new one")
	pos, err := c.parse(1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if strings.TrimSpace(name) == "" {
		return usagef("event NAME is empty")
	}
	if strings.HasPrefix(name, durable.ReservedPrefix) {
		return usagef("event name %q: names starting with %q are reserved for the library's own events", name, durable.ReservedPrefix)
	}
	ev := durable.Event{ID: *id, Name: name}
	if *data != "" {
		raw, err := c.readData(*data)
		if err != nil {
			return err
		}
		ev.Data = raw
	}
	client, closeDB, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	ids, err := client.Send(ctx, ev)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, struct {
			ID string `json:"id"`
		}{ids[0]})
	}
	fmt.Fprintln(c.stdout, ids[0])
	return nil
}

// readData reads --data: inline JSON, or @FILE, or @- for stdin. It must
// be valid JSON.
func (c *call) readData(arg string) (json.RawMessage, error) {
	b := []byte(arg)
	if file, ok := strings.CutPrefix(arg, "@"); ok {
		var err error
		if file == "-" {
			b, err = io.ReadAll(c.stdin)
		} else {
			b, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, usagef("--data: %v", err)
		}
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, usagef("--data is not valid JSON: %v", err)
	}
	return json.RawMessage(b), nil
}
