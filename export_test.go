package durable

import "encoding/json"

// SetTestHookWaitBegan installs a function called, with the function's ID
// and the run's trigger data, when a WaitForEvent has begun and before its
// run suspends.
func SetTestHookWaitBegan(h func(functionID string, trigger json.RawMessage)) {
	testHookWaitBegan.Store(h)
}
