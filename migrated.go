package durable

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgdurable/durable/migrate"
)

// explain turns the error of a statement on a schema that was never
// migrated (a missing schema, table or function) into one that says what
// to do; other errors pass unchanged.
func (c *Client) explain(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case "42P01", "3F000", "42883": // undefined table, schema, function
			return fmt.Errorf("durable: schema %q is not migrated (%s): run migrate.Up(ctx, pool, %q) first: %w",
				c.schema, pg.Message, c.schema, errors.Join(migrate.ErrNotMigrated, err))
		}
	}
	return err
}

// checkMigrated fails with an error wrapping migrate.ErrNotMigrated, saying
// to run migrate.Up, when the client's schema is not at the current
// version.
func (c *Client) checkMigrated(ctx context.Context) error {
	return migrate.Check(ctx, c.pool, c.schema)
}

// checkMigratedAtBuild is NewClient's check: it fails only when the schema
// is known to be unmigrated. A database that cannot be reached now does not
// fail NewClient (Start, Register and Send report it).
func (c *Client) checkMigratedAtBuild() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.checkMigrated(ctx); errors.Is(err, migrate.ErrNotMigrated) {
		return err
	}
	return nil
}
