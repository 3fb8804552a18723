package executor

import (
	"encoding/json"
	"sync"
	"sync/atomic"
)

// Hooks change how steps behave, for the durabletest package only: skip
// sleeps, stub steps' results. An executor finds its hooks by schema (see
// RegisterHooks), so a test harness sets them up before building its
// client; without hooks a step pays one nil check.
type Hooks struct {
	SkipSleeps atomic.Bool // a sleep resolves at once
	stubs      sync.Map    // step ID -> json.RawMessage
}

// Stub makes the step with this ID (with its counter suffix, e.g.
// "fetch:1") return out without running.
func (h *Hooks) Stub(stepID string, out json.RawMessage) { h.stubs.Store(stepID, out) }

func (h *Hooks) stub(key string) (json.RawMessage, bool) {
	if h == nil {
		return nil, false
	}
	v, ok := h.stubs.Load(key)
	if !ok {
		return nil, false
	}
	return v.(json.RawMessage), true
}

func (h *Hooks) skipSleeps() bool { return h != nil && h.SkipSleeps.Load() }

var hooksBySchema sync.Map // schema -> *Hooks

// RegisterHooks makes executors built from now on for schema use h, until
// the returned function is called.
func RegisterHooks(schema string, h *Hooks) (unregister func()) {
	hooksBySchema.Store(schema, h)
	return func() { hooksBySchema.Delete(schema) }
}

func hooksFor(schema string) *Hooks {
	if v, ok := hooksBySchema.Load(schema); ok {
		return v.(*Hooks)
	}
	return nil
}
