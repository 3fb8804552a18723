package durable

import (
	"fmt"
	"time"

	"github.com/pgdurable/durable/internal/failure"
)

var (
	// ErrEventTimeout is wrapped by the error WaitForEvent and Invoke return
	// when their timeout passes.
	ErrEventTimeout = failure.ErrEventTimeout
	// ErrFunctionNotFound is wrapped by the error Invoke and Client.Invoke
	// return for an unknown function ID.
	ErrFunctionNotFound = failure.ErrFunctionNotFound
	// ErrRunNotFound is returned by the runs API for an unknown run ID.
	ErrRunNotFound = failure.ErrRunNotFound
	// ErrNotSupported is wrapped by the error NewClient returns for an
	// option that is part of the API but not implemented yet.
	ErrNotSupported = failure.ErrNotSupported
	// ErrReservedName is wrapped by the error returned for an event named
	// with [ReservedPrefix], or an Invoke of a function only the library
	// triggers (an OnFailure handler).
	ErrReservedName = failure.ErrReservedName
)

// StepError is what Step/StepTx return once a step has exhausted its
// retries (or failed non-retriably); a function may handle it and go on.
// Returned unhandled from the function, it fails the run.
type StepError struct {
	StepID   string
	Attempts int
	Message  string
}

// Error describes the step's final failure.
func (e *StepError) Error() string {
	return fmt.Sprintf("step %q failed after %d attempt(s): %s", e.StepID, e.Attempts, e.Message)
}

// Is reports whether target is a *StepError for the same step (or one with
// an empty StepID, which matches any).
func (e *StepError) Is(target error) bool {
	t, ok := target.(*StepError)
	if !ok {
		return false
	}
	return t.StepID == "" || t.StepID == e.StepID
}

// NonRetriable marks err so that the step (or function) fails now, with no
// retries.
func NonRetriable(err error) error { return failure.NonRetriable(err) }

// RetryAfter fails the step (or function) and retries it no sooner than d
// from now, if retries remain.
func RetryAfter(d time.Duration, err error) error { return failure.RetryAt(time.Now().Add(d), err) }

// RetryAt fails the step (or function) and retries it no sooner than t, if
// retries remain.
func RetryAt(t time.Time, err error) error { return failure.RetryAt(t, err) }

func isNonRetriable(err error) bool { return failure.IsNonRetriable(err) }

func retryTime(err error) (time.Time, bool) { return failure.RetryTime(err) }
