// Package store holds pgdurable's SQL (the .sql files beside it) and what
// is stored: run and step statuses, the owner of a run's attempt, and the
// typed writes of the hot path. Queries are fields of [Queries]: a
// misspelt name does not compile, and a field without its SQL (or SQL
// without its field) fails Load.
package store

import (
	"embed"
	"fmt"
	"io/fs"
	"reflect"
	"sort"
	"strings"

	"github.com/pgdurable/durable/internal/pgident"
)

//go:embed sql/*.sql
var sqlFS embed.FS

// Run statuses, as stored.
const (
	RunQueued    = "queued"
	RunRunning   = "running" // includes sleeping and waiting
	RunCompleted = "completed"
	RunFailed    = "failed"
	RunCancelled = "cancelled"
	RunSkipped   = "skipped" // turned away by flow control (RateLimit, Singleton): ended, never executed
)

// Step statuses, as stored.
const (
	StepCompleted = "completed"
	StepFailed    = "failed"
	StepRetrying  = "retrying"
	StepSleeping  = "sleeping"
	StepWaiting   = "waiting"
	StepTimedOut  = "timed_out"
	StepCancelled = "cancelled" // left sleeping, waiting or retrying when its run ended
)

// Queries is the library's SQL rendered for one schema, a field per
// "-- name: X" block of the .sql files.
type Queries struct {
	// functions.sql
	LockRegistry, UpsertFunction, DeleteTriggers, InsertTriggers, FunctionConfig, MatchTriggers,
	RecordFunctionWorkers, ListFunctions, UnregisterFunction, PruneFunctionWorkers string
	// events.sql
	InsertEvents, ClaimIdempotencyKeys, LockEventName, LockEventNameShared, ListenName,
	UnroutedEvents, MarkRouted, EventsSince, WaitBegins string
	// waits.sql
	InsertWaits, MatchWaits, TakeWait, ClaimTimeout, DeliveredSince, GetStep string
	// runs.sql
	ClaimLoad, ClaimRun, Admit, ReapSlots, ClaimedEvents, CommitStep, CommitSteps, RunStatus, LockRun, CheckJSON,
	GetRun, GetSteps, RunsForEvent, RunExists, CancelCandidates string
	// upkeep.sql
	Heartbeat, DeleteWorker, PruneWorkers, ClaimCronTick, SetCronTickRun string
	// river.sql: River's ground (see internal/riverbridge)
	InsertRuns, NotifyInsert, CancelRun, Rescue, Wake, Commit, ExpiredRuns, Backlog string
	// retention.sql
	RetentionLock, RetentionUnlock, RetentionTimeout, PruneRuns, PruneEvents,
	PruneIdempotencyKeys, PruneCronTicks, PruneFlowState string
	// flow.sql
	RateLimitTake, InsertSkippedRun, SingletonHolder, SingletonTake, CollectLock, CollectRead, CollectBatch,
	CollectDebounce, NoteRunEvent, CollectSet, CollectDone, ScheduleJob, Enqueue string
	// list.sql
	ListRuns, ListFunctionRuns, RerunSource, MarkRerun, CopyRerunSteps string
	// browse.sql
	ListEvents, ListEventsByName, CountRunsExact, CountRunsSample, RunTableSize, CountTimeout, RunEvents string
}

// Load reads the SQL files and renders them for schema.
func Load(schema string) (*Queries, error) {
	blocks := map[string]string{}
	files, err := fs.Glob(sqlFS, "sql/*.sql")
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		body, err := sqlFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if err := parse(string(body), f, blocks); err != nil {
			return nil, err
		}
	}
	q := &Queries{}
	v := reflect.ValueOf(q).Elem()
	var missing []string
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		sql, ok := blocks[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		v.Field(i).SetString(pgident.Render(sql, schema))
		delete(blocks, name)
	}
	if len(missing) > 0 || len(blocks) > 0 {
		var extra []string
		for n := range blocks {
			extra = append(extra, n)
		}
		sort.Strings(extra)
		return nil, fmt.Errorf("durable: store: queries without SQL %v, SQL without a Queries field %v", missing, extra)
	}
	return q, nil
}

// parse adds the named blocks of one file to blocks; comment lines are
// dropped.
func parse(src, file string, blocks map[string]string) error {
	var name string
	var body strings.Builder
	flush := func() error {
		if name == "" {
			return nil
		}
		if _, dup := blocks[name]; dup {
			return fmt.Errorf("durable: store: query %s defined twice (%s)", name, file)
		}
		blocks[name] = strings.TrimSpace(body.String())
		body.Reset()
		return nil
	}
	for _, line := range strings.Split(src, "\n") {
		if rest, ok := strings.CutPrefix(line, "-- name: "); ok {
			if err := flush(); err != nil {
				return err
			}
			name = strings.TrimSpace(rest)
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
	return flush()
}
