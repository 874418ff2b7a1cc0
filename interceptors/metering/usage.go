package metering

import (
	"context"
	"sync"
)

// TokenUsage is what one model call (or template reply) cost, as the soul
// engine reported it. Services report it with RecordTokens; the metering
// interceptor turns it into an llm.tokens event when the call ends.
type TokenUsage struct {
	TokensIn, TokensOut int
	Model               string
	SessionID           string // empty outside sessions
	Mode, Budget        string // API names ("reflect", "whisper")
}

// InvokeUsage is one AGENTESE invocation, reported for agentese.invoke.
type InvokeUsage struct {
	Path, Aspect string
	TokensUsed   int
}

// SessionUsage is a session event worth billing: a created session
// (Role empty) or a stored message.
type SessionUsage struct {
	SessionID     string
	AgentType     string // session.create
	Role          string // session.message: "user" or "assistant"
	MessageLength int    // session.message: characters
}

// Recorder collects what a call used. The metering interceptor puts one in
// the call's context; without one (metering off, or a call that is not a
// tenant's) recording is a no-op.
type Recorder struct {
	mu       sync.Mutex
	usageID  string // Tags.UsageID, safe to read from the durable loop
	tokens   []TokenUsage
	invokes  []InvokeUsage
	sessions []SessionUsage
}

type recorderKey struct{}

// WithRecorder returns ctx carrying r.
func WithRecorder(ctx context.Context, r *Recorder) context.Context {
	return context.WithValue(ctx, recorderKey{}, r)
}

// RecorderFrom returns the call's recorder, or nil.
func RecorderFrom(ctx context.Context) *Recorder { return recorderFrom(ctx) }

func recorderFrom(ctx context.Context) *Recorder {
	r, _ := ctx.Value(recorderKey{}).(*Recorder)
	return r
}

// RecordTokens reports model usage for the call in ctx. It is safe to call
// from the call's detached turn after the caller has gone.
func RecordTokens(ctx context.Context, u TokenUsage) {
	if r := recorderFrom(ctx); r != nil && (u.TokensIn > 0 || u.TokensOut > 0 || u.Model != "") {
		r.mu.Lock()
		r.tokens = append(r.tokens, u)
		r.mu.Unlock()
	}
}

// RecordInvoke reports an AGENTESE invocation.
func RecordInvoke(ctx context.Context, u InvokeUsage) {
	if r := recorderFrom(ctx); r != nil {
		r.mu.Lock()
		r.invokes = append(r.invokes, u)
		r.mu.Unlock()
	}
}

// RecordSession reports a session creation or a stored message.
func RecordSession(ctx context.Context, u SessionUsage) {
	if r := recorderFrom(ctx); r != nil {
		r.mu.Lock()
		r.sessions = append(r.sessions, u)
		r.mu.Unlock()
	}
}

// Drain returns and clears what was recorded.
func (r *Recorder) Drain() (tokens []TokenUsage, invokes []InvokeUsage, sessions []SessionUsage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tokens, invokes, sessions = r.tokens, r.invokes, r.sessions
	r.tokens, r.invokes, r.sessions = nil, nil, nil
	return tokens, invokes, sessions
}

// TotalTokens sums the recorded model usage (for quota debits). A nil
// recorder has none.
func (r *Recorder) TotalTokens() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.tokens {
		n += t.TokensIn + t.TokensOut
	}
	return n
}

// Snapshot returns a copy of what was recorded so far, leaving it in place
// (for the durable record of a call in flight).
func (r *Recorder) Snapshot() (tokens []TokenUsage, invokes []InvokeUsage, sessions []SessionUsage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]TokenUsage(nil), r.tokens...), append([]InvokeUsage(nil), r.invokes...), append([]SessionUsage(nil), r.sessions...)
}

// SetUsageID notes the usage id the idempotency interceptor gave the call
// (as it sets Tags.UsageID), where metering's own goroutines may read it.
func (r *Recorder) SetUsageID(id string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.usageID = id
	r.mu.Unlock()
}

func (r *Recorder) getUsageID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.usageID
}
