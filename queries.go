package durable

import (
	_ "embed"
	"fmt"
	"strings"

	"github.com/pgdurable/durable/internal/pgident"
)

//go:embed sql/queries.sql
var queriesSQL string

// queries holds the library's SQL, rendered for the client's schema.
type queries map[string]string

func loadQueries(schema string) (queries, error) {
	q := queries{}
	var name string
	var body strings.Builder
	flush := func() {
		if name != "" {
			q[name] = strings.TrimSpace(pgident.Render(body.String(), schema))
		}
		body.Reset()
	}
	for _, line := range strings.Split(queriesSQL, "\n") {
		if rest, ok := strings.CutPrefix(line, "-- name: "); ok {
			flush()
			name = strings.TrimSpace(rest)
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
	flush()
	for _, n := range []string{"Commit", "LoadRun", "InsertEvents", "Wake", "Rescue"} {
		if q[n] == "" {
			return nil, fmt.Errorf("durable: query %s missing", n)
		}
	}
	return q, nil
}

func (q queries) get(name string) string {
	s, ok := q[name]
	if !ok {
		panic("durable: unknown query " + name) // a programming error in this package
	}
	return s
}
