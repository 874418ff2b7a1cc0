// Package soulsvc is the Soul gRPC service: one-shot dialogue (unary and
// streamed) and governance verdicts. It owns the budget policy — which
// budgets a caller's tier may use and which one applies when none is named —
// which Sessions and AGENTESE apply through Resolve as well, so the rule
// lives in one place.
package soulsvc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/apijson"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/tenancy"
)

// Service implements soulv1.SoulServiceServer.
type Service struct {
	soulv1.UnimplementedSoulServiceServer
	engine   soul.Engine
	governor soul.Governor
	cutoff   <-chan struct{}
}

// New returns the service.
func New(engine soul.Engine, governor soul.Governor, opts ...Option) *Service {
	s := &Service{engine: engine, governor: governor}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Option configures the service.
type Option func(*Service)

// WithCutoff cuts streamed replies still running when cutoff closes (the
// shutdown deadline is near): each ends with an error event of type
// shutdown instead of a cut stream, and is billed for what it produced.
func WithCutoff(cutoff <-chan struct{}) Option {
	return func(s *Service) { s.cutoff = cutoff }
}

// errShutdown is the cause a streamed reply is cut with at shutdown.
var errShutdown = errors.New("the server is shutting down")

// Engine is the engine in use (for /health).
func (s *Service) Engine() soul.Engine { return s.engine }

// Resolve applies defaults and the budget policy for the caller in ctx: an
// unspecified mode is reflect (or fallback, when given), an unspecified
// budget the tier's default; a budget the tier does not include is
// PermissionDenied.
func Resolve(ctx context.Context, mode soulv1.Mode, budget soulv1.Budget, fallback soulv1.Mode) (soulv1.Mode, soulv1.Budget, error) {
	if mode == soulv1.Mode_MODE_UNSPECIFIED {
		mode = fallback
		if mode == soulv1.Mode_MODE_UNSPECIFIED {
			mode = soulv1.Mode_MODE_REFLECT
		}
	}
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return 0, 0, status.Error(codes.Unauthenticated, "no caller identity")
	}
	if budget == soulv1.Budget_BUDGET_UNSPECIFIED {
		return mode, id.Limits.DefaultBudget, nil
	}
	if !id.Limits.AllowsBudget(budget) {
		return 0, 0, status.Errorf(codes.PermissionDenied,
			"Budget tier '%s' not available for %s tier (allowed: %s)",
			apijson.EnumString(budget), strings.ToUpper(string(id.Tier)), id.Limits.BudgetNames())
	}
	return mode, budget, nil
}

// Dialogue answers one prompt.
func (s *Service) Dialogue(ctx context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
	mode, budget, err := Resolve(ctx, req.GetMode(), req.GetBudget(), 0)
	if err != nil {
		return nil, err
	}
	reply, err := s.engine.Stream(ctx, soul.Request{Message: req.GetPrompt(), Mode: mode, Budget: budget}, func(soul.Chunk) error { return nil })
	RecordReply(ctx, reply, "")
	if err != nil {
		return nil, EngineError(err)
	}
	return DialogueResponse(reply), nil
}

// DialogueResponse renders a reply.
func DialogueResponse(r soul.Reply) *soulv1.DialogueResponse {
	return &soulv1.DialogueResponse{
		Response:              r.Text,
		Mode:                  r.Mode,
		Eigenvectors:          soul.Eigenvectors(),
		TokensUsed:            int32(r.TokensUsed()),
		ReferencedPreferences: nonNil(r.ReferencedPreferences),
		ReferencedPatterns:    nonNil(r.ReferencedPatterns),
		Budget:                r.Budget,
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// StreamDialogue streams a reply. Nothing is stored, so a caller that goes
// away stops the reply (no point paying for tokens nobody reads); what was
// produced is still metered.
func (s *Service) StreamDialogue(req *soulv1.StreamDialogueRequest, stream grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
	return s.Stream(stream.Context(), req, func(ev *soulv1.StreamDialogueResponse) error {
		return stream.Send(ev)
	}, func() error { return interceptors.OpenStream(stream) })
}

// Stream runs a streamed reply, calling open once every check has passed
// (the SSE layer answers 200 from then on) and emit for each event: chunks,
// then exactly one complete or error. It returns an error only for failures
// before open; after it, failures travel as the error event. AGENTESE's
// self.soul.dialogue streams through this too.
func (s *Service) Stream(ctx context.Context, req *soulv1.StreamDialogueRequest, emit func(*soulv1.StreamDialogueResponse) error, open func() error) error {
	mode, budget, err := Resolve(ctx, req.GetMode(), req.GetBudget(), 0)
	if err != nil {
		return err
	}
	if open != nil {
		if err := open(); err != nil {
			return err
		}
	}
	seq := 0
	next := func() string { seq++; return strconv.Itoa(seq) }
	callerCtx := ctx
	if s.cutoff != nil {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-s.cutoff:
				cancel(errShutdown)
			case <-ctx.Done():
			}
		}()
	}
	reply, err := s.engine.Stream(ctx, soul.Request{Message: req.GetPrompt(), Mode: mode, Budget: budget}, func(c soul.Chunk) error {
		return emit(&soulv1.StreamDialogueResponse{Id: next(), Event: &soulv1.StreamDialogueResponse_Chunk{
			Chunk: &soulv1.DialogueChunk{Text: c.Text, Index: int32(c.Index)},
		}})
	})
	RecordReply(callerCtx, reply, "")
	if err != nil {
		if errors.Is(context.Cause(ctx), errShutdown) && callerCtx.Err() == nil {
			return emit(&soulv1.StreamDialogueResponse{Id: next(), Event: &soulv1.StreamDialogueResponse_Error{
				Error: &soulv1.DialogueError{Error: "the server is shutting down; send the request again", Type: "shutdown"},
			}})
		}
		if ctx.Err() != nil {
			// The caller is gone: nobody to tell, but say so in logs and metering.
			return status.FromContextError(ctx.Err()).Err()
		}
		st := status.Convert(EngineError(err))
		return emit(&soulv1.StreamDialogueResponse{Id: next(), Event: &soulv1.StreamDialogueResponse_Error{
			Error: &soulv1.DialogueError{Error: st.Message(), Type: ErrorType(err)},
		}})
	}
	return emit(&soulv1.StreamDialogueResponse{Id: next(), Event: &soulv1.StreamDialogueResponse_Complete{
		Complete: &soulv1.DialogueComplete{
			Text: reply.Text, TokensUsed: int32(reply.TokensUsed()), Chunks: int32(reply.Chunks),
			Mode: reply.Mode, Budget: reply.Budget,
		},
	}})
}

// RecordReply reports a reply's token usage for metering.
func RecordReply(ctx context.Context, r soul.Reply, sessionID string) {
	metering.RecordTokens(ctx, metering.TokenUsage{
		TokensIn: r.TokensIn, TokensOut: r.TokensOut, Model: r.Model, SessionID: sessionID,
		Mode: apijson.EnumString(r.Mode), Budget: apijson.EnumString(r.Budget),
	})
}

// EngineError maps an engine failure to a status. Engines return errors
// whose text is safe to show.
func EngineError(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the reply was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "K-gent took too long to answer")
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("K-gent could not answer: %v", err))
}

// ErrorType names a failure for error events: timeout, canceled, llm_error.
func ErrorType(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var typed interface{ ErrorKind() string }
	if errors.As(err, &typed) {
		return typed.ErrorKind()
	}
	return "llm_error"
}

// Governance judges an action.
func (s *Service) Governance(ctx context.Context, req *soulv1.GovernanceRequest) (*soulv1.GovernanceResponse, error) {
	_, budget, err := Resolve(ctx, soulv1.Mode_MODE_REFLECT, req.GetBudget(), 0)
	if err != nil {
		return nil, err
	}
	severity := 0.5
	if req.GetContext() != nil && req.GetContext().Severity != nil {
		severity = req.GetContext().GetSeverity()
	}
	v, err := s.governor.Evaluate(ctx, soul.GovernanceRequest{
		Action: req.GetAction(), Reason: req.GetContext().GetReason(), Severity: severity, Budget: budget,
	})
	if err != nil {
		return nil, EngineError(err)
	}
	if v.TokensUsed > 0 {
		metering.RecordTokens(ctx, metering.TokenUsage{TokensOut: v.TokensUsed, Model: s.engine.Model(), Budget: apijson.EnumString(budget)})
	}
	return &soulv1.GovernanceResponse{
		Approved:       v.Approved,
		Reasoning:      v.Reasoning,
		Alternatives:   nonNil(v.Alternatives),
		Confidence:     v.Confidence,
		TokensUsed:     int32(v.TokensUsed),
		Recommendation: v.Recommendation,
		Principles:     nonNil(v.Principles),
	}, nil
}
