package executor

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// outcomeKind says how one attempt of a run ended.
type outcomeKind uint8

const (
	// outDone: the run ended, or there was nothing to do, or the run
	// continues in a job the suspending commit inserted: the job completes.
	outDone outcomeKind = iota + 1
	// outSuspend: the function stopped to wait (a sleep, a wait, an invoke,
	// a step's retry backoff) until at. Only inside an attempt: finish
	// turns it into outResume (short) or outDone (continuation job).
	outSuspend
	// outResume: a short suspension, recorded; the attempt is run again in
	// process at at, holding the worker slot.
	outResume
	// outRequeue: the job goes back to River, available again at at (the
	// function lives in another process, a live process holds the run, the
	// run is not due yet).
	outRequeue
	// outCancelled: the run was cancelled; the job is cancelled.
	outCancelled
	// outLeaseLost: another attempt took the run over; look again after
	// RecoverAfter.
	outLeaseLost
	// outShutdown: this process is stopping; the run was handed back and is
	// available at once.
	outShutdown
	// outTransient: the database failed in a way that may pass (connection
	// loss, serialisation failure, deadlock): River retries the job with
	// backoff (see retryPolicy).
	outTransient
)

// outcome is how an attempt ended: what the attempt's state became and what
// River must do with the job. river is the one place it is translated.
type outcome struct {
	kind outcomeKind
	at   time.Time // outSuspend, outResume, outRequeue
	err  error     // outCancelled, outTransient: why
}

func done() outcome                      { return outcome{kind: outDone} }
func requeueAt(t time.Time) outcome      { return outcome{kind: outRequeue, at: t} }
func transient(err error) outcome        { return outcome{kind: outTransient, err: err} }
func cancelled(reason error) outcome     { return outcome{kind: outCancelled, err: reason} }
func suspendOutcome(t time.Time) outcome { return outcome{kind: outSuspend, at: t} }

// river translates the outcome into River's answer for the job.
func (o outcome) river(recoverAfter time.Duration) error {
	switch o.kind {
	case outDone:
		return nil
	case outRequeue, outResume, outSuspend:
		return river.JobSnooze(max(time.Until(o.at), 0))
	case outCancelled:
		return river.JobCancel(o.err)
	case outLeaseLost:
		return river.JobSnooze(recoverAfter)
	case outShutdown:
		// The only zero snooze: River makes the job available at once
		// without using an attempt, for this or another process.
		return river.JobSnooze(0)
	case outTransient:
		return o.err // River records the error and retries with backoff
	}
	return errors.New("durable: unknown attempt outcome")
}

// stops reports whether the outcome ends the attempt for a reason other
// than the function's own suspension: such a reason wins over a
// suspension recorded by a parallel goroutine.
func (o outcome) stops() bool { return o.kind != outSuspend }

// errClass is what a failed database write means for a step.
type errClass uint8

const (
	// classTransient: the same write may succeed later.
	classTransient errClass = iota + 1
	// classPermanent: the data is refused (SQLSTATE classes 22 data
	// exception, 23 integrity constraint violation, 54 program limit
	// exceeded): the same write fails again, so the step fails.
	classPermanent
)

// classify sorts a database error. Errors that are not Postgres's own
// (connection loss, timeouts, pool exhaustion) are transient.
func classify(err error) errClass {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && len(pg.Code) >= 2 {
		switch pg.Code[:2] {
		case "22", "23", "54":
			return classPermanent
		}
	}
	return classTransient
}

// stopOutcome is the outcome for an error that ends an attempt from
// outside the function's control: a failed fence, a stopping process, the
// job's context ending, or a transient database failure.
func (e *Executor) stopOutcome(ctx context.Context, err error) outcome {
	switch {
	case errors.Is(err, errRunCancelled):
		return cancelled(errRunCancelled)
	case errors.Is(err, errLeaseLost):
		return outcome{kind: outLeaseLost}
	case errors.Is(err, errShutdown), e.stopping.Load() && ctx.Err() != nil:
		return outcome{kind: outShutdown}
	case ctx.Err() != nil:
		// The job's context ended: River cancelled the job (Cancel from
		// another process) or the client is stopping hard.
		return outcome{kind: outShutdown, err: ctx.Err()}
	}
	return transient(err)
}

// RetryPolicy is the River retry policy of the internal client. River's
// own retries only follow transient database failures (a step's retries
// are the library's), so they back off from one second, doubling up to a
// minute, counting the failures of the last ten minutes: a run that hit
// one outage long ago starts again from one second.
type RetryPolicy struct{}

// NextRetry implements river.ClientRetryPolicy.
func (RetryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	now := time.Now()
	recent := 0
	for _, e := range job.Errors {
		if now.Sub(e.At) < 10*time.Minute {
			recent++
		}
	}
	// job.Errors holds the earlier failures, not this one: the first
	// retry waits a second, each recent failure before it doubles that.
	d := time.Second
	for i := 0; i < recent && d < time.Minute; i++ {
		d *= 2
	}
	d = min(d, time.Minute)
	return now.Add(d + time.Duration(rand.Int64N(int64(d)/5+1)))
}

// isConnError reports whether err is the connection's failure rather than
// an answer from Postgres.
func isConnError(err error) bool {
	var ne net.Error
	var ce *pgconn.ConnectError
	return errors.As(err, &ne) || errors.As(err, &ce) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || pgconn.Timeout(err)
}
