package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgdurable/durable/internal/store"
)

// percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// mean returns the arithmetic mean of ds.
func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// sortedCopy returns ds sorted, leaving ds as it is.
func sortedCopy(ds []time.Duration) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s
}

// ---------------------------------------------------------------------------
// Server-side counters

// dbStats are server counters read by the monitor.
type dbStats struct {
	XactCommit   int64 // pg_stat_database.xact_commit of the current database
	XactRollback int64
	WALRecords   int64 // pg_stat_wal (cluster-wide)
	WALBytes     int64
	WALSync      int64                 // WAL fsyncs (group commit makes these fewer than commits)
	Tables       map[string]tableStats // pg_stat_user_tables of the bench schema
	CPU          cpuTimes              // the machine's CPU time (from /proc/stat)
	own          int64                 // transactions the monitor itself ran to take this snapshot
}

// tableStats are one table's row-level counters.
type tableStats struct{ Ins, Upd, HotUpd, Del int64 }

// monitor reads pg_stat_database and pg_stat_wal between phases.
//
// Postgres (15+) flushes a backend's statistics at most once a second
// while it is busy, and an idle backend's pending statistics may wait ten
// seconds; but a backend always flushes them when it exits. So every phase
// closes its pools, and a snapshot first waits until none of the bench's
// other connections (found by application_name) are left, then reads the
// counters. The monitor counts the transactions it runs itself so that
// deltas can leave them out.
type monitor struct {
	e *env
}

func (m *monitor) snapshot(ctx context.Context) (dbStats, error) {
	var s dbStats
	conn, err := m.e.conn(ctx, "monitor")
	if err != nil {
		return s, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name LIKE $1 || '%' AND pid <> pg_backend_pid()`, m.e.tag).Scan(&n)
		s.own++
		if err != nil {
			return s, fmt.Errorf("monitor: pg_stat_activity: %w", err)
		}
		if n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // an exiting backend flushes just before it disappears
	err = conn.QueryRow(ctx, `SELECT d.xact_commit, d.xact_rollback, w.wal_records, w.wal_bytes::bigint, w.wal_sync
		FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()`).
		Scan(&s.XactCommit, &s.XactRollback, &s.WALRecords, &s.WALBytes, &s.WALSync)
	s.own++
	if err != nil {
		return s, fmt.Errorf("monitor: reading pg_stat_database/pg_stat_wal: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
		FROM pg_stat_user_tables WHERE schemaname = $1`, m.e.schema)
	s.own++
	if err != nil {
		return s, fmt.Errorf("monitor: reading pg_stat_user_tables: %w", err)
	}
	s.Tables = map[string]tableStats{}
	var name string
	var t tableStats
	if _, err := pgx.ForEachRow(rows, []any{&name, &t.Ins, &t.Upd, &t.HotUpd, &t.Del}, func() error {
		s.Tables[name] = t
		return nil
	}); err != nil {
		return s, fmt.Errorf("monitor: reading pg_stat_user_tables: %w", err)
	}
	s.CPU = readCPU()
	return s, nil
}

// tableDelta prints, per table of the bench schema, the rows inserted,
// updated (of which HOT) and deleted between two snapshots, per unit.
func tableDelta(a, b dbStats, units int, unit string) string {
	var names []string
	for n := range b.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	u := float64(max(units, 1))
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-26s %9s %9s %9s %9s   (rows per %s)\n", "table", "inserted", "updated", "HOT", "deleted", unit)
	for _, n := range names {
		x, y := a.Tables[n], b.Tables[n]
		d := tableStats{y.Ins - x.Ins, y.Upd - x.Upd, y.HotUpd - x.HotUpd, y.Del - x.Del}
		if d == (tableStats{}) {
			continue
		}
		fmt.Fprintf(&sb, "%-26s %9.2f %9.2f %9.2f %9.2f\n", n, float64(d.Ins)/u, float64(d.Upd)/u, float64(d.HotUpd)/u, float64(d.Del)/u)
	}
	return sb.String()
}

// cpuTimes are the machine's cumulative CPU times in clock ticks.
type cpuTimes struct{ busy, total int64 }

// readCPU reads the first line of /proc/stat; it returns zeros where
// there is none.
func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}
	}
	var c cpuTimes
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		c.total += n
		if i != 3 && i != 4 { // idle and iowait
			c.busy += n
		}
	}
	return c
}

// cpuBusy returns the share of the machine's CPU time spent busy between
// two readings, or -1 when unknown.
func cpuBusy(a, b cpuTimes) float64 {
	if b.total <= a.total {
		return -1
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}

// loadAvg returns the 1-minute load average, or "?" when unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// serverDelta is what the server counted between two snapshots, minus the
// monitor's own transactions and extra (other transactions the bench ran
// itself, such as polling queries).
type serverDelta struct {
	Commits, Rollbacks, WALRecords, WALBytes, WALSync int64
}

func delta(a, b dbStats, extra int64) serverDelta {
	return serverDelta{
		Commits:    b.XactCommit - a.XactCommit - a.own - extra,
		Rollbacks:  b.XactRollback - a.XactRollback,
		WALRecords: b.WALRecords - a.WALRecords,
		WALBytes:   b.WALBytes - a.WALBytes,
		WALSync:    b.WALSync - a.WALSync,
	}
}

// describe prints the delta per unit (a run, a step, an event).
func (d serverDelta) describe(units int, unit string) string {
	u := float64(max(units, 1))
	return fmt.Sprintf("server (pg_stat_database, whole database, incl. client start/stop): %d commits = %.2f per %s, %d rollbacks;\n"+
		"    WAL (pg_stat_wal, cluster): %d records, %.1f KiB, %d fsyncs = %.2f records, %.0f bytes, %.2f fsyncs per %s",
		d.Commits, float64(d.Commits)/u, unit, d.Rollbacks,
		d.WALRecords, float64(d.WALBytes)/1024, d.WALSync, float64(d.WALRecords)/u, float64(d.WALBytes)/u, float64(d.WALSync)/u, unit)
}

// ---------------------------------------------------------------------------
// Client-side tracing

// tracer is a pgx tracer that counts, per statement, the calls and their
// time, and per connection the transactions that end: an autocommit
// statement or a COMMIT that leaves the connection idle (the same events
// pg_stat_database.xact_commit counts, read-only ones included). A
// transaction counts as writing when one of its statements looks like a
// write (INSERT, UPDATE, DELETE, FOR UPDATE, NOTIFY/pg_notify, COPY): a
// heuristic, since a statement may write nothing (calls to the library's
// SQL functions, durable_*, count as writes).
type tracer struct {
	schema string

	mu     sync.Mutex
	stats  map[string]*stmtStat
	dirty  map[*pgx.Conn]bool // connections in a transaction that has written
	labels map[string]label   // SQL text -> label
	known  map[string]string  // the library's statements: normalized SQL -> name
	c      counts
}

// counts are the tracer's running totals.
type counts struct {
	RoundTrips int64 // statements, batches and copies sent (a batch counts once)
	Statements int64 // statements, including each of a batch
	Commits    int64 // transactions ended by commit
	Writing    int64 // of which wrote (heuristic)
	Errors     int64 // statements that failed
}

type stmtStat struct {
	n     int64
	total time.Duration
	write bool
}

type label struct {
	name  string
	write bool
}

type traceStartKey struct{}

func newTracer(schema string) *tracer {
	return &tracer{schema: schema, stats: map[string]*stmtStat{}, dirty: map[*pgx.Conn]bool{},
		labels: map[string]label{}, known: durableQueries(schema)}
}

var (
	sqlcName   = regexp.MustCompile(`--\s*name:\s*(\w+)`)
	spaces     = regexp.MustCompile(`\s+`)
	writeWords = regexp.MustCompile(`(?i)\b(insert|update|delete|pg_notify|notify|copy)\b`)
	schemaFunc = regexp.MustCompile(`\.durable_\w+\(`) // the library's SQL functions, which write
)

// durableQueries name the library's statements (internal/store's
// Queries): the store strips the "-- name:" comments before running them,
// so the tracer recognises them by their text. It maps normalized SQL (see
// normalizeSQL) to "durable.<Name>". Statements it cannot name are shown
// by their first words.
// batchHead names the first statement of the engine's batches, whose
// recorded time is the batch's round trip.
const batchHead = "batch round trip (SET LOCAL, statements)"

func durableQueries(schema string) map[string]string {
	out := map[string]string{}
	for name, sql := range durableSQL(schema) {
		// Tracers may see a statement before or after pgx rewrites its
		// named arguments.
		out[normalizeSQL(sql)] = "durable." + name
		out[normalizeSQL(positional(sql))] = "durable." + name
	}
	// The head of the engine's batches (store.Batcher, store.Generic):
	// pgx's tracer charges the batch's round trip to its first statement.
	out[normalizeSQL(store.SetGenericPlans)] = batchHead
	out[normalizeSQL(store.BeginGeneric.BeginQuery)] = "begin (generic plans)"
	return out
}

// durableSQL returns the library's statements by name, rendered for
// schema; nil when the schema name is invalid.
func durableSQL(schema string) map[string]string {
	q, err := store.Load(schema)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	v := reflect.ValueOf(q).Elem()
	for i := 0; i < v.NumField(); i++ {
		out[v.Type().Field(i).Name] = v.Field(i).String()
	}
	return out
}

// namedArg is a pgx named argument in a statement.
var namedArg = regexp.MustCompile(`@[a-z_][a-z0-9_]*`)

// positional rewrites named arguments as pgx sends them: $1, $2, ... in
// the order the names first appear.
func positional(sql string) string {
	seen := map[string]int{}
	return namedArg.ReplaceAllStringFunc(sql, func(n string) string {
		if _, ok := seen[n]; !ok {
			seen[n] = len(seen) + 1
		}
		return fmt.Sprintf("$%d", seen[n])
	})
}

// normalizeSQL drops comment lines and collapses white space.
func normalizeSQL(sql string) string {
	var b strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		b.WriteString(line)
		b.WriteByte(' ')
	}
	return strings.TrimSpace(spaces.ReplaceAllString(b.String(), " "))
}

func (t *tracer) label(sql string) label {
	t.mu.Lock()
	l, ok := t.labels[sql]
	t.mu.Unlock()
	if ok {
		return l
	}
	flat := normalizeSQL(sql)
	l.write = writeWords.MatchString(flat) || strings.Contains(strings.ToUpper(flat), "FOR UPDATE") ||
		schemaFunc.MatchString(flat)
	if m := sqlcName.FindStringSubmatch(sql); m != nil {
		l.name = "river." + m[1]
	} else if n, ok := t.known[flat]; ok {
		l.name = n
	} else {
		l.name = strings.ReplaceAll(strings.ReplaceAll(flat, `"`+t.schema+`"`, "<s>"), t.schema, "<s>")
		if len(l.name) > 40 {
			l.name = l.name[:37] + "..."
		}
	}
	t.mu.Lock()
	t.labels[sql] = l
	t.mu.Unlock()
	return l
}

type traceStart struct {
	at time.Time
	l  label
}

// TraceQueryStart implements pgx.QueryTracer.
func (t *tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, traceStartKey{}, traceStart{time.Now(), t.label(d.SQL)})
}

// TraceQueryEnd implements pgx.QueryTracer.
func (t *tracer) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryEndData) {
	s, _ := ctx.Value(traceStartKey{}).(traceStart)
	t.record(conn, s.l, time.Since(s.at), d.Err, true)
}

// TraceBatchStart implements pgx.BatchTracer.
func (t *tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return context.WithValue(ctx, traceStartKey{}, traceStart{at: time.Now()})
}

// TraceBatchQuery implements pgx.BatchTracer.
func (t *tracer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, d pgx.TraceBatchQueryData) {
	t.record(conn, t.label(d.SQL), time.Since(d.ReadStartTime), d.Err, false)
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t *tracer) TraceBatchEnd(_ context.Context, conn *pgx.Conn, d pgx.TraceBatchEndData) {
	t.endTrip(conn, d.Err)
}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (t *tracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceCopyFromStartData) context.Context {
	name := "COPY " + strings.ReplaceAll(d.TableName.Sanitize(), `"`+t.schema+`"`, "<s>")
	return context.WithValue(ctx, traceStartKey{}, traceStart{time.Now(), label{name: name, write: true}})
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (t *tracer) TraceCopyFromEnd(ctx context.Context, conn *pgx.Conn, d pgx.TraceCopyFromEndData) {
	s, _ := ctx.Value(traceStartKey{}).(traceStart)
	t.record(conn, s.l, time.Since(s.at), d.Err, true)
}

// record counts one statement; trip says it was a round trip of its own
// (not part of a batch).
func (t *tracer) record(conn *pgx.Conn, l label, d time.Duration, err error, trip bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stats[l.name]
	if st == nil {
		st = &stmtStat{write: l.write}
		t.stats[l.name] = st
	}
	st.n++
	st.total += d
	t.c.Statements++
	if err != nil {
		t.c.Errors++
	}
	if l.write && err == nil {
		t.dirty[conn] = true
	}
	if trip {
		t.endTripLocked(conn, l.name, err)
	}
}

func (t *tracer) endTrip(conn *pgx.Conn, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endTripLocked(conn, "", err)
}

func (t *tracer) endTripLocked(conn *pgx.Conn, name string, err error) {
	t.c.RoundTrips++
	if conn.PgConn().TxStatus() != 'I' {
		return // inside a transaction block
	}
	if err == nil && !strings.EqualFold(name, "rollback") {
		t.c.Commits++
		if t.dirty[conn] {
			t.c.Writing++
		}
	}
	delete(t.dirty, conn)
}

// traceSnap is a copy of the tracer's totals at one moment.
type traceSnap struct {
	c     counts
	stats map[string]stmtStat
}

func (t *tracer) snap() traceSnap {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := traceSnap{c: t.c, stats: make(map[string]stmtStat, len(t.stats))}
	for k, v := range t.stats {
		s.stats[k] = *v
	}
	return s
}

// traceDelta is what the engine's pool did between two snapshots.
type traceDelta struct {
	c     counts
	stmts []stmtRow
}

type stmtRow struct {
	name  string
	n     int64
	total time.Duration
	write bool
}

func diffTrace(a, b traceSnap) traceDelta {
	d := traceDelta{c: counts{
		RoundTrips: b.c.RoundTrips - a.c.RoundTrips,
		Statements: b.c.Statements - a.c.Statements,
		Commits:    b.c.Commits - a.c.Commits,
		Writing:    b.c.Writing - a.c.Writing,
		Errors:     b.c.Errors - a.c.Errors,
	}}
	for name, s := range b.stats {
		p := a.stats[name]
		if n := s.n - p.n; n > 0 {
			d.stmts = append(d.stmts, stmtRow{name: name, n: n, total: s.total - p.total, write: s.write})
		}
	}
	sort.Slice(d.stmts, func(i, j int) bool {
		if d.stmts[i].n != d.stmts[j].n {
			return d.stmts[i].n > d.stmts[j].n
		}
		return d.stmts[i].name < d.stmts[j].name
	})
	return d
}

// describe prints the totals per unit.
func (d traceDelta) describe(units int, unit string) string {
	u := float64(max(units, 1))
	return fmt.Sprintf("client (pgx tracer on the engine's pool, measured window): %.2f round trips, %.2f transactions (%.2f writing) per %s; %d statement errors",
		float64(d.c.RoundTrips)/u, float64(d.c.Commits)/u, float64(d.c.Writing)/u, unit, d.c.Errors)
}

// table prints the top statements per unit.
func (d traceDelta) table(units int, unit string, top int) string {
	var b strings.Builder
	u := float64(max(units, 1))
	fmt.Fprintf(&b, "%-40s %9s %9s %10s  %s\n", "statement", "calls", "per "+unit, "avg", "")
	for i, s := range d.stmts {
		if i == top {
			fmt.Fprintf(&b, "... %d more\n", len(d.stmts)-top)
			break
		}
		w := ""
		if s.write {
			w = "writes"
		}
		fmt.Fprintf(&b, "%-40s %9d %9.3f %10s  %s\n", s.name, s.n, float64(s.n)/u, ms(s.total/time.Duration(s.n)), w)
	}
	return b.String()
}

// stmt returns the average time of the named statement.
func (d traceDelta) stmt(name string) (time.Duration, bool) {
	for _, s := range d.stmts {
		if s.name == name {
			return s.total / time.Duration(s.n), true
		}
	}
	return 0, false
}

// pct formats a share as a percentage, or "?" when unknown.
func pct(f float64) string {
	if f < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f%%", f*100)
}

// backendCPU is the CPU time of Postgres backends, by process ID.
type backendCPU map[int32]time.Duration

// backendCPU reads, from /proc, the CPU time (user and system) of the
// Postgres backends serving the bench's connections of one role. It works
// only when Postgres runs on this machine and its processes are readable;
// otherwise it returns nil. /proc counts in clock ticks of 10 ms (USER_HZ
// 100), so figures are coarse over short windows.
func (e *env) backendCPU(ctx context.Context, role string) backendCPU {
	conn, err := e.conn(ctx, "cpu")
	if err != nil {
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, e.tag+"-"+role)
	if err != nil {
		return nil
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil
	}
	out := backendCPU{}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil // not on this machine, or not readable
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "postgres") {
			return nil
		}
		f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime and stime are fields 14 and 15
		if len(f) < 13 {
			return nil
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[pid] = time.Duration(ut+st) * 10 * time.Millisecond
	}
	return out
}

// cpuSince returns the CPU time b's backends used since a was read (a
// backend absent from a is new and counts in full), or -1 when unknown.
func cpuSince(a, b backendCPU) time.Duration {
	if a == nil || b == nil {
		return -1
	}
	var d time.Duration
	for pid, t := range b {
		d += t - a[pid]
	}
	return d
}

// perUnit formats a CPU time per unit, or "unknown".
func perUnit(d time.Duration, units int64) string {
	if d < 0 {
		return "unknown (Postgres is not on this machine?)"
	}
	return fmt.Sprintf("%s in all = %.3f ms", d.Round(time.Millisecond), float64(d)/float64(time.Millisecond)/float64(max(units, 1)))
}
