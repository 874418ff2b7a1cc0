package agentese

import (
	"context"
	"time"
)

// self.vitals: how the tenant's agent is doing: activity, error rate,
// tokens, entropy, and how long this process has been up.
func init() { registerBuiltin(newSelfVitals) }

func newSelfVitals(Deps) *Node {
	return &Node{
		Path:    "self.vitals",
		Handle:  "self.vitals",
		Summary: "Activity, error rate, tokens and entropy of the tenant's agent.",
		Common:  []string{"pulse"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Invocations in the last minute and hour (of the recent trace), error rate, tokens, entropy, uptime.", Run: vitalsManifest},
			{Name: "pulse", Doc: "A heartbeat: alive, now, and invocations in the last minute.", Run: vitalsPulse},
		},
	}
}

func vitalsValue(c *Call) obj {
	now := c.Now()
	tl := traceOf(c)
	t := tl.totals()
	lastMinute := len(tl.recent(TraceCapacity, func(e traceEntry) bool { return now.Sub(e.At) <= time.Minute }))
	lastHour := len(tl.recent(TraceCapacity, func(e traceEntry) bool { return now.Sub(e.At) <= time.Hour }))
	errorRate := 0.0
	if t.Total > 0 {
		errorRate = round(float64(t.Errors)/float64(t.Total), 4)
	}
	entropy := entropyInitial
	if p := peekSlot[entropyPool](c.tenant(), entropySlot); p != nil {
		p.mu.Lock()
		p.refill(now)
		entropy = round(p.remaining, 2)
		p.mu.Unlock()
	}
	return obj{
		"alive":                   boolean(true),
		"invocations_last_minute": integer(lastMinute),
		"invocations_last_hour":   integer(lastHour),
		"counted_from_last":       integer(TraceCapacity),
		"invocations":             integer(t.Total),
		"error_rate":              num(errorRate),
		"tokens_used":             integer(t.Tokens),
		"entropy_remaining":       num(entropy),
		"uptime_seconds":          integer(int(now.Sub(c.reg.started).Seconds())),
	}
}

func vitalsManifest(_ context.Context, c *Call) (Outcome, error) {
	return Outcome{Value: vitalsValue(c).V()}, nil
}

func vitalsPulse(_ context.Context, c *Call) (Outcome, error) {
	v := vitalsValue(c)
	return Outcome{Value: obj{"alive": boolean(true), "at": ts(c.Now()), "invocations_last_minute": v["invocations_last_minute"]}.V()}, nil
}
