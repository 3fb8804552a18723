package durable

import "github.com/pgdurable/durable/internal/maintenance"

// PrunerForTest returns the pruner of the client's retention loop (nil
// when the client never sweeps: a negative Retention.Interval).
func PrunerForTest(c *Client) *maintenance.Pruner {
	return c.maint.Pruner()
}
