// Package failure holds the errors every part of pgdurable shares: the
// sentinels the public package re-exports, the markers that steer retries
// (non-retriable, retry at), the step failure the executor hands to the
// public step functions, and what stored error texts may hold.
package failure

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Sentinels, re-exported by package durable.
var (
	ErrEventTimeout     = errors.New("durable: timed out waiting for event")
	ErrFunctionNotFound = errors.New("durable: function not found")
	ErrRunNotFound      = errors.New("durable: run not found")
	ErrNotSupported     = errors.New("not supported yet")
	ErrReservedName     = errors.New(`names starting with "durable/" are reserved for the library`)
)

// ReservedPrefix starts the names of the events the library sends itself.
const ReservedPrefix = "durable/"

// ReservedFunction is the error for invoking a function only the library
// triggers.
func ReservedFunction(id string) error {
	return fmt.Errorf("function %q is an OnFailure handler, which only the library triggers: %w", id, ErrReservedName)
}

type nonRetriable struct{ err error }

func (e *nonRetriable) Error() string { return e.err.Error() }
func (e *nonRetriable) Unwrap() error { return e.err }

// NonRetriable marks err so that the step (or function) fails now.
func NonRetriable(err error) error {
	if err == nil {
		return nil
	}
	return &nonRetriable{err: err}
}

// IsNonRetriable reports whether err was marked by NonRetriable.
func IsNonRetriable(err error) bool {
	var nr *nonRetriable
	return errors.As(err, &nr)
}

type retryAt struct {
	at  time.Time
	err error
}

func (e *retryAt) Error() string { return e.err.Error() }
func (e *retryAt) Unwrap() error { return e.err }

// RetryAt marks err so that the step (or function) is retried no sooner
// than t.
func RetryAt(t time.Time, err error) error {
	if err == nil {
		return nil
	}
	return &retryAt{at: t, err: err}
}

// RetryTime returns the time RetryAt asked for.
func RetryTime(err error) (time.Time, bool) {
	var ra *retryAt
	if errors.As(err, &ra) {
		return ra.at, true
	}
	return time.Time{}, false
}

// StepFailed is a step that exhausted its retries (or failed
// non-retriably). The public step functions turn it into a
// *durable.StepError; returned unhandled from a function (as either), it
// fails the run.
type StepFailed struct {
	StepID   string
	Attempts int
	Message  string
}

func (e *StepFailed) Error() string {
	return fmt.Sprintf("step %q failed after %d attempt(s): %s", e.StepID, e.Attempts, e.Message)
}

// FailsRun marks an error the function returned that fails the run without
// a function-level retry (a *durable.StepError the function did not
// handle).
type FailsRun struct{ Err error }

func (e *FailsRun) Error() string { return e.Err.Error() }
func (e *FailsRun) Unwrap() error { return e.Err }

// Panic is a panic turned into an error: its message is what runs show;
// the trimmed stack is kept on the step's record only.
type Panic struct {
	Msg   string
	Stack string
}

func (e *Panic) Error() string { return e.Msg }

// StackMarker separates a step's error message from the stack stored
// after it (see StepText).
const StackMarker = "\n\nstack:\n"

// maxStack bounds the stack stored with a panic.
const maxStack = 4 << 10

// NewPanic turns a recovered value into a *Panic with the stack of the
// panicking goroutine (call it from the deferred function that recovered).
func NewPanic(p any) *Panic {
	return &Panic{Msg: Clean(fmt.Sprintf("panic: %v", p)), Stack: trimmedStack()}
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

// StepText is what a step's record keeps of err: the message, and for a
// panic its trimmed stack after StackMarker.
func StepText(err error) string {
	var pe *Panic
	if errors.As(err, &pe) && pe.Stack != "" {
		return Clean(err.Error()) + StackMarker + pe.Stack
	}
	return Clean(err.Error())
}

// Message is a step record's error without its stack.
func Message(text string) string {
	msg, _, _ := strings.Cut(text, StackMarker)
	return msg
}

// RunText is what a run's record keeps of err: the message only.
func RunText(err error) string {
	return Message(Clean(err.Error()))
}

// Clean makes s storable in a text column: Postgres refuses NUL bytes and
// invalid UTF-8, and an error message must never be why a run cannot be
// recorded.
func Clean(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}
