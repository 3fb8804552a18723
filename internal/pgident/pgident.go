// Package pgident validates and quotes the Postgres schema name that the
// library's SQL is rendered with, so that no user input is ever spliced into
// SQL unchecked.
package pgident

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/pgdurable/durable/internal/riverbridge"
)

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// DefaultSchema is the schema used when none is configured.
const DefaultSchema = "durable"

// Schema validates a schema name (lower-case letters, digits and
// underscores, starting with a letter or underscore, at most 63 bytes) and
// returns it, or DefaultSchema when empty.
func Schema(name string) (string, error) {
	if name == "" {
		return DefaultSchema, nil
	}
	if !schemaRE.MatchString(name) {
		return "", fmt.Errorf("invalid schema name %q: use lower-case letters, digits and underscores, starting with a letter or underscore", name)
	}
	if len(name) > riverbridge.MaxSchemaLen {
		// River prefixes its notification channels with the schema.
		return "", fmt.Errorf("invalid schema name %q: %d bytes, at most %d (River's limit)", name, len(name), riverbridge.MaxSchemaLen)
	}
	return name, nil
}

// Quote returns the schema name as a quoted identifier.
func Quote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// Render replaces every {{schema}} placeholder in sql by the quoted schema.
func Render(sql, schema string) string {
	return strings.ReplaceAll(sql, "{{schema}}", Quote(schema))
}
