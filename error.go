package durable

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
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

// panicError is a panic turned into an error: its message is what runs
// show; the trimmed stack is kept on the step's record only.
type panicError struct {
	msg   string
	stack string
}

func (e *panicError) Error() string { return e.msg }

// stackMarker separates a step's error message from the stack stored
// after it (see stepErrorText).
const stackMarker = "\n\nstack:\n"

// maxStack bounds the stack stored with a panic.
const maxStack = 4 << 10

func newPanicError(p any) *panicError {
	return &panicError{msg: cleanText(fmt.Sprintf("panic: %v", p)), stack: trimmedStack()}
}

// trimmedStack is the stack of a panic being recovered, without the
// runtime's and this library's frames, with paths cut to their last
// directory, at most maxStack bytes.
func trimmedStack() string {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var b strings.Builder
	for {
		f, more := frames.Next()
		if !internalFrame(f.Function) {
			line := fmt.Sprintf("%s\n\t%s:%d\n", f.Function, filepath.Join(filepath.Base(filepath.Dir(f.File)), filepath.Base(f.File)), f.Line)
			if b.Len()+len(line) > maxStack {
				b.WriteString("...\n")
				break
			}
			b.WriteString(line)
		}
		if !more {
			break
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func internalFrame(fn string) bool {
	for _, p := range []string{"runtime.", "github.com/pgdurable/durable.", "github.com/pgdurable/durable/internal/",
		"github.com/pgdurable/durable/riverjobs.", "github.com/riverqueue/"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// stepErrorText is what a step's record keeps of err: the message, and for
// a panic its trimmed stack after stackMarker.
func stepErrorText(err error) string {
	var pe *panicError
	if errors.As(err, &pe) && pe.stack != "" {
		return cleanText(err.Error()) + stackMarker + pe.stack
	}
	return cleanText(err.Error())
}

// stepMessage is a step record's error without its stack.
func stepMessage(text string) string {
	msg, _, _ := strings.Cut(text, stackMarker)
	return msg
}

// runErrorText is what a run's record keeps of err: the message only.
func runErrorText(err error) string {
	return stepMessage(cleanText(err.Error()))
}

// cleanText makes s storable in a text column: Postgres refuses NUL bytes
// and invalid UTF-8, and an error message must never be why a run cannot
// be recorded.
func cleanText(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}
