package durable

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrEventTimeout is wrapped by the error WaitForEvent and Invoke return
	// when their timeout passes.
	ErrEventTimeout = errors.New("durable: timed out waiting for event")
	// ErrFunctionNotFound is wrapped by the error Invoke and Client.Invoke
	// return for an unknown function ID.
	ErrFunctionNotFound = errors.New("durable: function not found")
	// ErrRunNotFound is returned by the runs API for an unknown run ID.
	ErrRunNotFound = errors.New("durable: run not found")
	// ErrNotSupported is wrapped by the error NewClient returns for an
	// option that is part of the API but not implemented yet.
	ErrNotSupported = errors.New("not supported yet")
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

type nonRetriableError struct{ err error }

func (e *nonRetriableError) Error() string { return e.err.Error() }
func (e *nonRetriableError) Unwrap() error { return e.err }

// NonRetriable marks err so that the step (or function) fails now, with no
// retries.
func NonRetriable(err error) error {
	if err == nil {
		return nil
	}
	return &nonRetriableError{err: err}
}

type retryAtError struct {
	at  time.Time
	err error
}

func (e *retryAtError) Error() string { return e.err.Error() }
func (e *retryAtError) Unwrap() error { return e.err }

// RetryAfter fails the step (or function) and retries it no sooner than d
// from now, if retries remain.
func RetryAfter(d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &retryAtError{at: time.Now().Add(d), err: err}
}

// RetryAt fails the step (or function) and retries it no sooner than t, if
// retries remain.
func RetryAt(t time.Time, err error) error {
	if err == nil {
		return nil
	}
	return &retryAtError{at: t, err: err}
}

func isNonRetriable(err error) bool {
	var nr *nonRetriableError
	return errors.As(err, &nr)
}

func retryTime(err error) (time.Time, bool) {
	var ra *retryAtError
	if errors.As(err, &ra) {
		return ra.at, true
	}
	return time.Time{}, false
}
