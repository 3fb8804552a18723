// Package riverbridge holds every convention of River's that pgdurable
// relies on beyond its public API; bridge_test.go pins each one, so a River
// upgrade that changes one fails the tests.
//
// The library writes River's tables with its own SQL (the queries of
// internal/store/sql/river.sql, durable_deliver in migrate/sql), wakes
// River's producers with its own NOTIFY, reads River's bookkeeping of who
// works a job, and records River's migrations itself (migrate.Migrations).
// Each of those leans on something River does not promise; this file names
// each fact once, next to the River source it was read from (River
// v0.51.2: github.com/riverqueue/river, riverdriver, riverdriver/riverpgxv5,
// rivershared; paths below are relative to those modules).
//
// Facts the library relies on that need no Go value here, and are pinned by
// the tests all the same:
//
//   - A worker's river.JobSnooze(d) does not use up an attempt (the row's
//     attempt goes back by one), and JobSnooze(0) makes the job available
//     at once (internal/jobexecutor/job_executor.go, reportResult).
//   - A worker's error records one entry in errors and schedules the retry
//     at the client's ClientRetryPolicy.NextRetry, which sees the job
//     without the error being recorded (reportError).
package riverbridge

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// insertTopic is River's notification topic for job insertions:
// notifier.NotificationTopicInsert in internal/notifier/notifier.go.
const insertTopic = "river_insert"

// MaxSchemaLen is the longest schema name River's Config accepts
// (client.go, Config.validate: 63 - 1 - len(NotificationTopicLongest), the
// longest topic being "river_leadership"): River prefixes the schema and a dot to its
// notification channels, and Postgres identifiers hold 63 bytes. A longer
// schema makes river.NewClient fail; rivermigrate does not check it.
// River also requires ^[a-zA-Z_][a-zA-Z0-9_]*$ (postgresSchemaNameRE).
const MaxSchemaLen = 63 - 1 - len("river_leadership")

// InsertTopic returns the channel River's producers LISTEN on for insert
// notifications when River's Config.Schema is schema: the schema, a dot and
// the topic, unquoted, as one identifier. River builds it in
// riverdriver/riverpgxv5 river_pgx_v5_driver.go, Listener.Connect (prefix
// schema + ".") and Listener.Listen (LISTEN "<prefix><topic>"), and notifies
// it from internal/dbsqlc/pg_misc.sql, PGNotifyMany
// (concat(schema, '.', topic)). LISTEN needs the name quoted (it contains a
// dot); pg_notify takes it as is.
func InsertTopic(schema string) string {
	return schema + "." + insertTopic
}

// InsertPayload returns the payload River sends on InsertTopic when jobs
// are inserted into queue, byte for byte: Client.maybeNotifyInsertForQueues
// in client.go formats it with fmt.Sprintf("{\"queue\": %q}", queue), and
// the producer decodes it into insertPayload{Queue string `json:"queue"`}
// (producer.go, handleInsertNotification), ignoring other queues; any JSON
// of that shape does (the library's SQL sends json_build_object('queue',
// q)). River's queue names are lower-case ASCII letters, digits and
// separators (client.go, validateQueueName), for which %q is valid JSON.
func InsertPayload(queue string) string {
	return fmt.Sprintf("{\"queue\": %q}", queue)
}

// InsertJobSQL returns the shape of the library's raw insert of a run job
// (query InsertRuns): six columns, state 'available' due now, every other
// column of river_job left to its default, which is what River's own
// insert writes there. $1 is the args (jsonb), $2 the kind, $3
// max_attempts, $4 the queue; it returns the job's ID. River's fetch
// (riverpgxv5 internal/dbsqlc/river_job.sql, JobGetAvailable) takes such a
// row like one of its own.
func InsertJobSQL(schema string) string {
	return "INSERT INTO " + quote(schema) + ".river_job (args, kind, max_attempts, queue, state, scheduled_at)" +
		" VALUES ($1::jsonb, $2, $3, $4, 'available', now()) RETURNING id"
}

// CompleteJobSQL returns the shape of the library's completion of a run's
// job in its own transaction (query Commit), while River's worker may
// still be executing it: $1 is the job's ID. River's check constraint
// finalized_or_finalized_at_null (riverpgxv5 migration/main/004) requires
// finalized_at with state completed. When the worker then returns nil,
// River's completer leaves the row alone: JobSetStateIfRunningMany
// (riverpgxv5 internal/dbsqlc/river_job.sql) only updates rows still
// running.
func CompleteJobSQL(schema string) string {
	return "UPDATE " + quote(schema) + ".river_job SET state = 'completed', finalized_at = now() WHERE id = $1"
}

// WakeJobSQL returns the shape of the library's wake-up of a waiting job
// (durable_deliver, query Rescue): $1 is the job's ID. The same transaction
// then sends InsertPayload on InsertTopic, and River's producer fetches the
// job within its FetchCooldown instead of at its next FetchPollInterval
// (producer.go, handleInsertNotification calls fetchLimiter.Call).
func WakeJobSQL(schema string) string {
	return "UPDATE " + quote(schema) + ".river_job SET state = 'available', scheduled_at = now() WHERE id = $1"
}

// LastAttempterSQL is the SQL expression of LastAttempter on a river_job
// row (query Rescue writes it with the alias j).
const LastAttempterSQL = "attempted_by[array_length(attempted_by, 1)]"

// LastAttempter returns the ID of the River client working (or that last
// worked) a job: the last element of its AttemptedBy. River's fetch appends
// the fetching client's Config.ID to attempted_by (riverpgxv5
// internal/dbsqlc/river_job.sql, JobGetAvailable: array_append(...,
// @attempted_by), trimmed from the front beyond 100 entries; producer.go,
// dispatchWork: ClientID is client.go's config.ID).
func LastAttempter(attemptedBy []string) (string, bool) {
	if len(attemptedBy) == 0 {
		return "", false
	}
	return attemptedBy[len(attemptedBy)-1], true
}

// SchedulerInterval is River's default JobScheduler interval
// (internal/maintenance/job_scheduler.go, JobSchedulerIntervalDefault),
// which Config cannot change. A snooze or a retry due within it leaves the
// job 'available' at once with scheduled_at in the future (River's fetch
// waits for scheduled_at); a later one makes it 'scheduled' (a snooze) or
// 'retryable' (an error), which only the scheduler, every
// SchedulerInterval, or the library's waker makes available again
// (internal/jobexecutor/job_executor.go, reportResult and reportError).
const SchedulerInterval = 5 * time.Second

// MinPriority and MaxPriority bound river_job.priority (check constraint
// priority_in_range, migration 002; Client.Insert rejects others): the
// library's Wake query reads one index range per priority in between.
const (
	MinPriority = 1
	MaxPriority = 4
)

// JobColumns returns the river_job columns the library's SQL reads or
// writes, each with its Postgres type as information_schema.columns.udt_name
// gives it (riverpgxv5 migration/main/002_initial_schema.up.sql). state is
// River's enum river_job_state, whose labels available, scheduled, running,
// completed and retryable the library's SQL names.
func JobColumns() map[string]string {
	return map[string]string{
		"id":           "int8",
		"args":         "jsonb",
		"kind":         "text",
		"max_attempts": "int2",
		"queue":        "text",
		"state":        "river_job_state",
		"priority":     "int2",
		"scheduled_at": "timestamptz",
		"finalized_at": "timestamptz",
		"attempted_at": "timestamptz",
		"attempted_by": "_text",
		"errors":       "_jsonb",
	}
}

// MigrationLine is the migration line of River's own tables in
// river_migration (riverdriver river_driver_interface.go,
// MigrationLineMain; rivermigrate/river_migrate.go, versionsInsert).
const MigrationLine = "main"

// MigrationLineVersion is River's migration that adds river_migration.line
// (rivermigrate/river_migrate.go, migrateVersionLineColumnAdded): River
// records earlier versions by version alone.
const MigrationLineVersion = 5

// SchemaTemplate is the marker River's migration SQL
// (rivermigrate.Migration.SQLUp, SQLDown) holds where the schema prefix
// goes; rivermigrate/river_migrate.go, applyMigrations, replaces it with the
// quoted schema and a dot (rivershared/util/dbutil.SafeIdentifier).
const SchemaTemplate = "/* TEMPLATE: schema */"

// RenderMigration renders River migration SQL for schema as rivermigrate
// does.
func RenderMigration(sql, schema string) string {
	return strings.ReplaceAll(sql, SchemaTemplate, quote(schema)+".")
}

// RecordMigrationSQL returns the statement that records River's migration
// version in river_migration as rivermigrate does (versionsInsert), for
// SQL applied without rivermigrate (migrate.Migrations).
func RecordMigrationSQL(schema string, version int) string {
	v := strconv.Itoa(version)
	if version < MigrationLineVersion {
		return "INSERT INTO " + quote(schema) + ".river_migration (version) VALUES (" + v + ") ON CONFLICT DO NOTHING"
	}
	return "INSERT INTO " + quote(schema) + ".river_migration (line, version) VALUES ('" + MigrationLine + "', " + v + ") ON CONFLICT DO NOTHING"
}

// quote quotes an identifier as River does (dbutil.SafeIdentifier).
func quote(ident string) string {
	return `"` + strings.ReplaceAll(ident, `"`, `""`) + `"`
}

// QuietLogger is the logger River gets: the client's, at Warn and above
// only, to keep River's Info logs out of the user's.
func QuietLogger(l *slog.Logger) *slog.Logger {
	return slog.New(levelFilter{min: slog.LevelWarn, h: l.Handler()})
}

// levelFilter drops records below min.
type levelFilter struct {
	min slog.Level
	h   slog.Handler
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.h.Enabled(ctx, l)
}
func (f levelFilter) Handle(ctx context.Context, r slog.Record) error { return f.h.Handle(ctx, r) }
func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{min: f.min, h: f.h.WithAttrs(a)}
}
func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{min: f.min, h: f.h.WithGroup(n)}
}
