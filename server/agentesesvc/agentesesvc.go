// Package agentesesvc is the AGENTESE gRPC service: it maps the RPCs onto
// an agentese.Registry, turns AGENTESE errors into status codes (syntax and
// arguments 400, unknown paths 404, affordances and archetypes 403), meters
// every invocation as agentese.invoke with its real token count, and decides
// the scope an invocation needs (InvokeScope, for the auth rule table).
package agentesesvc

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/apijson"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/tenancy"
)

// Service implements agentesev1.AgenteseServiceServer.
type Service struct {
	agentesev1.UnimplementedAgenteseServiceServer
	reg *agentese.Registry
	log *slog.Logger
}

// Option configures the service.
type Option func(*Service)

// WithLogger logs failures that end an open stream with an internal error
// (their detail is never sent to the caller). slog.Default otherwise.
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// New returns the service over a registry (agentese.DefaultRegistry).
func New(reg *agentese.Registry, opts ...Option) *Service {
	s := &Service{reg: reg, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Actions named in scope refusals.
const (
	actionRead   = "invoke AGENTESE paths"
	actionMutate = "invoke mutating AGENTESE aspects"
)

// InvokeScope is the auth rule's ScopeFor for Invoke and InvokeStream: write
// for an aspect that mutates, read otherwise (including paths that do not
// parse or resolve: the handler then answers 400 or 404).
func (s *Service) InvokeScope(req any) (tenancy.Scope, string) {
	var path string
	switch r := req.(type) {
	case *agentesev1.InvokeRequest:
		path = r.GetPath()
	case *agentesev1.InvokeStreamRequest:
		path = r.GetPath()
	default:
		return tenancy.ScopeRead, actionRead
	}
	if s.reg.Mutates(path) {
		return tenancy.ScopeWrite, actionMutate
	}
	return tenancy.ScopeRead, actionRead
}

// Invoke performs an aspect.
func (s *Service) Invoke(ctx context.Context, req *agentesev1.InvokeRequest) (*agentesev1.InvokeResponse, error) {
	res, err := s.reg.Invoke(ctx, agentese.Request{
		Path: req.GetPath(), Archetype: req.GetObserver().GetArchetype(), Kwargs: req.GetKwargs(),
	})
	if err != nil {
		return nil, StatusOf(err)
	}
	meter(ctx, res)
	return response(res), nil
}

// InvokeStream performs an aspect as a stream of events: for a streaming
// aspect, chunks as they come; then exactly one complete or error. The
// response headers are sent only once every check has passed (for
// self.soul, after the Soul service's budget check), so anything refused
// before that is an ordinary status error, which the REST layer answers as
// a JSON error instead of an event stream.
func (s *Service) InvokeStream(req *agentesev1.InvokeStreamRequest, stream grpc.ServerStreamingServer[agentesev1.InvokeStreamResponse]) error {
	ctx := stream.Context()
	w := &eventWriter{stream: stream}
	res, err := s.reg.InvokeStream(ctx, agentese.Request{
		Path: req.GetPath(), Archetype: req.GetObserver().GetArchetype(), Kwargs: req.GetKwargs(),
	}, w)
	if !w.opened {
		if err == nil {
			err = status.Error(codes.Internal, "agentese: stream completed without opening")
		}
		return StatusOf(err)
	}
	// Streams are metered at their end, also when they failed or the caller
	// left, with what was really produced.
	meter(ctx, res)
	if err == nil {
		return w.send(&agentesev1.InvokeStreamResponse{Event: &agentesev1.InvokeStreamResponse_Complete{Complete: response(res)}})
	}
	s.endWithError(ctx, w, res.Path, err)
	return nil // the failure travelled as the stream's error event
}

// endWithError ends an open stream that failed: with an error event, unless
// the caller is gone (nobody to tell).
func (s *Service) endWithError(ctx context.Context, w *eventWriter, path string, err error) {
	if ctx.Err() != nil {
		return
	}
	if internal := w.failure(err); internal {
		s.log.ErrorContext(ctx, "AGENTESE stream failed", "path", path, "error", err)
	}
}

// Resolve describes a node.
func (s *Service) Resolve(ctx context.Context, req *agentesev1.ResolveRequest) (*agentesev1.ResolveResponse, error) {
	r, err := s.reg.Resolve(ctx, req.GetPath())
	if err != nil {
		return nil, StatusOf(err)
	}
	return &agentesev1.ResolveResponse{Path: r.Path, Handle: r.Handle, Context: r.Context, Affordances: r.Affordances}, nil
}

// Affordances lists what a node affords an archetype.
func (s *Service) Affordances(ctx context.Context, req *agentesev1.AffordancesRequest) (*agentesev1.AffordancesResponse, error) {
	a, err := s.reg.Affordances(ctx, req.GetPath(), req.GetArchetype())
	if err != nil {
		return nil, StatusOf(err)
	}
	return &agentesev1.AffordancesResponse{Path: a.Path, Affordances: a.Aspects, ObserverArchetype: a.Archetype}, nil
}

func meter(ctx context.Context, res agentese.Result) {
	if res.Path == "" {
		return
	}
	metering.RecordInvoke(ctx, metering.InvokeUsage{Path: res.Path, Aspect: res.Aspect, TokensUsed: res.TokensUsed})
}

func response(res agentese.Result) *agentesev1.InvokeResponse {
	return &agentesev1.InvokeResponse{
		Path: res.Path, Result: res.Value, TokensUsed: clampInt32(res.TokensUsed), Cached: res.Cached,
	}
}

func clampInt32(n int) int32 {
	if n > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(max(n, 0))
}

// CodeOf maps an AGENTESE failure kind to its status code.
func CodeOf(k agentese.Kind) codes.Code {
	switch k {
	case agentese.KindSyntax, agentese.KindArgument, agentese.KindUnknownArchetype:
		return codes.InvalidArgument
	case agentese.KindNotFound:
		return codes.NotFound
	case agentese.KindNotAfforded, agentese.KindArchetypeDenied:
		return codes.PermissionDenied
	case agentese.KindUnauthenticated:
		return codes.Unauthenticated
	case agentese.KindPrecondition:
		return codes.FailedPrecondition
	case agentese.KindUnavailable, agentese.KindStream:
		return codes.Unavailable
	}
	return codes.Internal
}

// StatusOf turns an error from the registry into a status error. AGENTESE
// errors carry a safe message; status errors from backends (the Soul
// service's budget refusal) pass through unchanged; anything else is left
// for the statuserr interceptor to mask.
func StatusOf(err error) error {
	var e *agentese.Error
	if errors.As(err, &e) {
		return status.Error(CodeOf(e.Kind), e.Error())
	}
	return err
}

// eventWriter is the registry's sink for one stream: it sends the headers
// on Open and numbers events "1", "2", ... .
type eventWriter struct {
	stream grpc.ServerStreamingServer[agentesev1.InvokeStreamResponse]
	opened bool
	seq    int
}

func (w *eventWriter) Open() error {
	w.opened = true
	return interceptors.OpenStream(w.stream)
}

func (w *eventWriter) Chunk(text string, index int) error {
	return w.send(&agentesev1.InvokeStreamResponse{Event: &agentesev1.InvokeStreamResponse_Chunk{
		Chunk: &agentesev1.InvokeChunk{Text: text, Index: clampInt32(index)},
	}})
}

func (w *eventWriter) send(ev *agentesev1.InvokeStreamResponse) error {
	w.seq++
	ev.Id = strconv.Itoa(w.seq)
	return w.stream.Send(ev)
}

// failure ends an open stream with an error event and reports whether the
// error was internal. Internal details never leave: only AGENTESE errors
// and non-internal statuses keep their text. A failure to send the event
// means the caller is gone; there is nobody left to tell.
func (w *eventWriter) failure(err error) (internal bool) {
	msg, typ := "internal error", "internal"
	var e *agentese.Error
	switch {
	case errors.As(err, &e):
		msg, typ = e.Error(), e.Kind.String()
		if e.Type != "" {
			typ = e.Type
		}
	default:
		if st, ok := status.FromError(err); ok && st.Code() != codes.Internal && st.Code() != codes.Unknown {
			msg, typ = st.Message(), apijson.CodeName(st.Code())
		}
	}
	_ = w.send(&agentesev1.InvokeStreamResponse{Event: &agentesev1.InvokeStreamResponse_Error{
		Error: &agentesev1.InvokeError{Error: msg, Type: typ},
	}})
	return typ == "internal"
}
