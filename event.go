package durable

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pgdurable/durable/internal/ids"
	"github.com/pgdurable/durable/internal/store"
)

// Event is something that happened, sent with [Client.Send],
// [Client.SendTx] or [SendEvent]. Functions whose triggers match it run.
type Event struct {
	ID        string    // optional; events with the same ID within 24h are delivered once
	Name      string    // required, e.g. "cart/checkout.completed"
	Data      any       // JSON-marshalable
	Timestamp time.Time // defaults to now
}

// System event names emitted by the library.
const (
	EventFunctionFinished  = "durable/function.finished"
	EventFunctionFailed    = "durable/function.failed"
	EventFunctionCancelled = "durable/function.cancelled"
	EventFunctionInvoked   = "durable/function.invoked"
	EventScheduledTimer    = "durable/scheduled.timer"
)

// ReservedPrefix starts the names of the events the library sends itself
// (system events). Send, SendTx, SendEvent refuse such names with an error
// wrapping [ErrReservedName], so that no caller can forge a system event
// (and, say, run an OnFailure handler for a made-up run).
const ReservedPrefix = "durable/"

// ErrReservedName is wrapped by the error returned for an event named with
// [ReservedPrefix], or an Invoke of a function only the library triggers.
var ErrReservedName = errors.New(`names starting with "durable/" are reserved for the library`)

func reservedFunction(id string) error {
	return fmt.Errorf("function %q is an OnFailure handler, which only the library triggers: %w", id, ErrReservedName)
}

// eventJSON is an event's stored JSON form.
type eventJSON = store.Event

// prepareEvent validates an event and turns it into its stored form. i is
// its position in the call, used in error messages.
func prepareEvent(e Event, i int, maxSize int) (eventJSON, error) {
	where := fmt.Sprintf("event %d", i)
	if e.Name != "" {
		where = fmt.Sprintf("event %d (%q)", i, e.Name)
	}
	name := strings.TrimSpace(e.Name)
	if name == "" {
		return eventJSON{}, fmt.Errorf("durable: %s: Name is required", where)
	}
	if len(name) > 256 {
		return eventJSON{}, fmt.Errorf("durable: %s: Name is %d bytes, over the 256-byte limit", where, len(name))
	}
	if len(e.ID) > 256 {
		return eventJSON{}, fmt.Errorf("durable: %s: ID is %d bytes, over the 256-byte limit", where, len(e.ID))
	}
	var data json.RawMessage
	switch d := e.Data.(type) {
	case nil:
		data = json.RawMessage("{}")
	case json.RawMessage:
		if !json.Valid(d) {
			return eventJSON{}, fmt.Errorf("durable: %s: Data is not valid JSON", where)
		}
		data = d
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return eventJSON{}, fmt.Errorf("durable: %s: Data does not marshal to JSON: %w", where, err)
		}
		data = b
	}
	if len(data) > maxSize {
		return eventJSON{}, fmt.Errorf("durable: %s: Data is %d bytes, over the %d-byte limit (Config.MaxEventSize)", where, len(data), maxSize)
	}
	ts := e.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	id := e.ID
	if id == "" {
		id = ids.At(ts)
	}
	return eventJSON{ID: id, Name: name, Data: data, TS: ts.UTC().Truncate(time.Microsecond)}, nil
}
