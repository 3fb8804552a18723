package durable

import (
	"github.com/pgdurable/durable/internal/store"
)

type funcConfig = store.FunctionConfig

func (d *funcDef) config() funcConfig {
	cfg := funcConfig{
		Idempotency: d.opts.Idempotency,
		StartMS:     d.opts.Timeouts.Start.Milliseconds(),
		FinishMS:    d.opts.Timeouts.Finish.Milliseconds(),
		System:      d.system,
	}
	for _, c := range d.opts.CancelOn {
		cfg.CancelOn = append(cfg.CancelOn, store.CancelOnConfig{Event: c.Event, If: c.If, TimeoutMS: c.Timeout.Milliseconds()})
	}
	return cfg
}
