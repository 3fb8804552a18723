package durable

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pgdurable/durable/internal/expr"
	"github.com/pgdurable/durable/internal/maintenance"
)

// Trigger starts runs of a function: an event (optionally filtered) or a
// cron schedule.
type Trigger struct {
	Event string // event name, e.g. "order/created"; exclusive with Cron
	If    string // optional CEL filter over `event`, e.g. `event.data.amount > 100`
	Cron  string // "0 9 * * *", "TZ=Europe/Paris 0 12 * * 5", "@hourly", "@every 30s"
}

// Limits on a function's options.
const (
	maxTriggers = 10
	maxCancelOn = 5
	maxConc     = 2
)

// checkFunction validates a function's options, compiling its expressions.
// Every error names the function and the field.
func (c *Client) checkFunction(d *funcDef) error {
	o := d.opts
	var errs []error
	where := fmt.Sprintf("function %q", o.ID)
	if strings.TrimSpace(o.ID) == "" {
		where = fmt.Sprintf("function (name %q)", o.Name)
		errs = append(errs, fmt.Errorf("durable: %s: ID is required", where))
	}
	if len(o.ID) > 200 {
		errs = append(errs, fmt.Errorf("durable: %s: ID is longer than 200 bytes", where))
	}
	if len(o.Triggers) > maxTriggers {
		errs = append(errs, fmt.Errorf("durable: %s: %d triggers, at most %d are allowed", where, len(o.Triggers), maxTriggers))
	}
	for i, t := range o.Triggers {
		field := fmt.Sprintf("Triggers[%d]", i)
		switch {
		case t.Event != "" && t.Cron != "":
			errs = append(errs, fmt.Errorf("durable: %s: %s: Event and Cron are exclusive", where, field))
		case t.Event == "" && t.Cron == "":
			errs = append(errs, fmt.Errorf("durable: %s: %s: one of Event or Cron is required", where, field))
		case t.Cron != "":
			if _, err := maintenance.ParseCron(t.Cron); err != nil {
				errs = append(errs, fmt.Errorf("durable: %s: %s.Cron: %w", where, field, err))
			}
		}
		if t.If != "" {
			if t.Cron != "" {
				errs = append(errs, fmt.Errorf("durable: %s: %s.If applies to event triggers only", where, field))
			}
			if err := c.checkFilter(t.If, expr.EventOnly); err != nil {
				errs = append(errs, fmt.Errorf("durable: %s: %s.If: %w", where, field, err))
			}
		}
	}
	if o.Retries != nil && *o.Retries < 0 {
		errs = append(errs, fmt.Errorf("durable: %s: Retries must not be negative", where))
	}
	errs = append(errs, c.checkFlow(where, o)...)
	if o.Idempotency != "" {
		if _, err := c.exprs.Compile(o.Idempotency, expr.EventOnly); err != nil {
			errs = append(errs, fmt.Errorf("durable: %s: Idempotency: %w", where, err))
		}
	}
	if len(o.CancelOn) > maxCancelOn {
		errs = append(errs, fmt.Errorf("durable: %s: %d CancelOn entries, at most %d are allowed", where, len(o.CancelOn), maxCancelOn))
	}
	for i, co := range o.CancelOn {
		field := fmt.Sprintf("CancelOn[%d]", i)
		if co.Event == "" {
			errs = append(errs, fmt.Errorf("durable: %s: %s.Event is required", where, field))
		}
		if co.Timeout < 0 {
			errs = append(errs, fmt.Errorf("durable: %s: %s.Timeout must not be negative", where, field))
		}
		if co.If != "" {
			if err := c.checkFilter(co.If, expr.EventAndAsync); err != nil {
				errs = append(errs, fmt.Errorf("durable: %s: %s.If: %w", where, field, err))
			}
		}
	}
	if o.Timeouts.Start < 0 || o.Timeouts.Finish < 0 {
		errs = append(errs, fmt.Errorf("durable: %s: Timeouts must not be negative", where))
	}
	return errors.Join(errs...)
}

// checkFilter compiles a boolean filter expression.
func (c *Client) checkFilter(src string, vars expr.Vars) error {
	p, err := c.exprs.Compile(src, vars)
	if err != nil {
		return err
	}
	if !p.OutputIsBoolOrDyn() {
		return fmt.Errorf("expression %q does not evaluate to a bool", src)
	}
	return nil
}
