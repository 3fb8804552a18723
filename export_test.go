package durable

import (
	"encoding/json"

	"github.com/pgdurable/durable/internal/executor"
)

// SetTestHookWaitBegan installs a function called, with the run's trigger
// data, when a WaitForEvent of the function functionID has begun and before
// its run suspends.
func SetTestHookWaitBegan(functionID string, h func(trigger json.RawMessage)) {
	executor.TestHookWaitBegan.Store(functionID, h)
}
