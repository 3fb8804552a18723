package durable

import (
	"encoding/json"
	"strconv"
)

// funcConfig is the part of a function's options that whoever creates its
// runs needs, stored in durable_function.config when the function's
// process starts (the creator may be a send-only process).
type funcConfig struct {
	Idempotency string           `json:"idempotency,omitempty"`
	CancelOn    []cancelOnConfig `json:"cancel_on,omitempty"`
	StartMS     int64            `json:"start_timeout_ms,omitempty"`
	FinishMS    int64            `json:"finish_timeout_ms,omitempty"`
	// System marks a function only the library triggers (an OnFailure
	// handler): Invoke refuses it.
	System bool `json:"system,omitempty"`
}

type cancelOnConfig struct {
	Event     string `json:"event"`
	If        string `json:"if,omitempty"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

func (d *funcDef) config() funcConfig {
	cfg := funcConfig{
		Idempotency: d.opts.Idempotency,
		StartMS:     d.opts.Timeouts.Start.Milliseconds(),
		FinishMS:    d.opts.Timeouts.Finish.Milliseconds(),
		System:      d.system,
	}
	for _, c := range d.opts.CancelOn {
		cfg.CancelOn = append(cfg.CancelOn, cancelOnConfig{Event: c.Event, If: c.If, TimeoutMS: c.Timeout.Milliseconds()})
	}
	return cfg
}

func decodeConfig(b []byte) funcConfig {
	var cfg funcConfig
	if len(b) > 0 {
		_ = json.Unmarshal(b, &cfg)
	}
	return cfg
}

// interval renders milliseconds as a Postgres interval, or nil.
func interval(ms int64) *string {
	if ms <= 0 {
		return nil
	}
	s := strconv.FormatInt(ms, 10) + " milliseconds"
	return &s
}
