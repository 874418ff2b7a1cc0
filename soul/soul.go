// Package soul is K-gent's mind: the engines that produce dialogue replies
// (the offline template engine and an OpenAI-compatible LLM engine, behind
// one Engine interface that streams chunks and reports token usage), the
// governance evaluator, and K-gent's persona (eigenvectors, preferences,
// patterns). It knows nothing of tenants, sessions or transports: the Soul
// service applies tier policy and defaults before calling it.
package soul

import (
	"context"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// Request is one dialogue turn to answer. Mode and Budget are always set
// (never UNSPECIFIED): the caller resolves defaults and tier policy first.
type Request struct {
	Message string
	Mode    soulv1.Mode
	Budget  soulv1.Budget
	// History holds earlier messages of the session, oldest first, for
	// engines that use context. Callers bound its length.
	History []Turn
}

// Turn is one earlier message.
type Turn struct {
	Role    string // "user" or "assistant"
	Content string
}

// Chunk is a piece of a streamed reply. Chunks arrive in Index order from 0;
// concatenated they are the reply's Text.
type Chunk struct {
	Text  string
	Index int
}

// Reply is a finished (or, with an error, partial) reply.
type Reply struct {
	Text   string
	Mode   soulv1.Mode
	Budget soulv1.Budget
	// Token usage: the provider's report for model replies, 0 for a template
	// hit, an estimate for composed offline replies.
	TokensIn, TokensOut int
	// TokensEstimated is true when TokensIn/TokensOut are estimates rather
	// than a provider's report: composed offline replies, and model replies
	// whose provider sent no usage (or failed before sending it).
	TokensEstimated bool
	// Model that produced the reply ("kgent-template" offline).
	Model string
	// Template is true when a fixed template answered (zero tokens).
	Template bool
	// Known user preferences and patterns the reply drew on (at most 3 each).
	ReferencedPreferences, ReferencedPatterns []string
	// Chunks is how many chunks were emitted.
	Chunks int
}

// TokensUsed is the reply's total token count.
func (r Reply) TokensUsed() int { return r.TokensIn + r.TokensOut }

// Engine produces replies.
//
// Stream calls emit for every chunk, in order, on the calling goroutine. If
// emit returns an error, Stream stops and returns it. If the engine fails
// part-way (the model errors, the context ends), Stream returns the partial
// Reply — the text and tokens really produced — together with the error, so
// callers can store and bill what was produced.
type Engine interface {
	// Name is "template" or "openai"; /health reports it.
	Name() string
	// Model is the model replies are attributed to.
	Model() string
	Stream(ctx context.Context, req Request, emit func(Chunk) error) (Reply, error)
}

// GovernanceRequest is an action to judge.
type GovernanceRequest struct {
	Action   string
	Reason   string
	Severity float64 // 0..1; callers default it to 0.5
	Budget   soulv1.Budget
}

// Verdict is a governance decision.
type Verdict struct {
	Approved       bool
	Reasoning      string
	Alternatives   []string
	Confidence     float64
	TokensUsed     int
	Recommendation soulv1.Recommendation
	Principles     []string
}

// Governor judges actions. Dangerous actions are always escalated, never
// approved, whatever the engine; approval needs confidence of at least 0.7.
type Governor interface {
	Evaluate(ctx context.Context, req GovernanceRequest) (Verdict, error)
}
