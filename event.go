package durable

import (
	"time"

	"github.com/pgdurable/durable/internal/failure"
	"github.com/pgdurable/durable/internal/router"
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

func reservedFunction(id string) error { return failure.ReservedFunction(id) }

// eventJSON is an event's stored JSON form.
type eventJSON = store.Event

// prepareEvent validates an event and turns it into its stored form. i is
// its position in the call, used in error messages.
func prepareEvent(e Event, i int, maxSize int) (eventJSON, error) {
	return router.PrepareEvent(e.ID, e.Name, e.Data, e.Timestamp, i, maxSize)
}
