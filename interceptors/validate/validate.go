// Package validate checks every request against the protovalidate rules in
// the .proto files before it reaches a handler, so bad input is refused with
// InvalidArgument naming each offending field and nothing is half-written.
// Rules that need the service's knowledge (AGENTESE grammar, kwargs depth)
// stay in the services, which can explain them better.
//
// It also refuses, with the same code, the requests that could not be read
// at all: native gRPC requests that are not valid protobuf (see Codec), and
// REST requests the gateway could not turn into a request message (a body
// that does not decode, a query parameter of the wrong type), which the
// gateway sends as a call of their RPC marked with MDRefused. Both are
// refused here, inside the chain, so they are authenticated, metered and
// rate-limited like every other call.
package validate

import (
	"context"
	"errors"
	"strings"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/interceptors"
)

// MDRefused is the metadata key with which the REST gateway marks a call
// whose HTTP request it could not read; its value is the reason, safe to
// show the caller. It is honoured only on the gateway's own connection.
const MDRefused = "x-kgents-refused-bin"

// refusal is the gateway's refusal of the call, or nil.
func refusal(ctx context.Context) error {
	reason := interceptors.FirstValue(ctx, MDRefused)
	if reason == "" || !interceptors.InfoFrom(ctx).ViaGateway {
		return nil
	}
	return status.Error(codes.InvalidArgument, reason)
}

// Validator validates requests.
type Validator struct{ v protovalidate.Validator }

// New builds the validator, compiling the rules of msgs up front so the first
// request does not pay for it.
func New(msgs ...proto.Message) (*Validator, error) {
	v, err := protovalidate.New(protovalidate.WithMessages(msgs...))
	if err != nil {
		return nil, err
	}
	return &Validator{v: v}, nil
}

// Check returns nil or an InvalidArgument status describing every violation.
func (v *Validator) Check(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if reason, bad := malformed(m); bad {
		return status.Error(codes.InvalidArgument, reason)
	}
	err := v.v.Validate(m)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		// A rule failed to evaluate: our bug, not the caller's.
		return status.Error(codes.Internal, "request validation failed: "+err.Error())
	}
	parts := make([]string, 0, len(verr.Violations))
	br := &errdetails.BadRequest{}
	for _, viol := range verr.Violations {
		field := protovalidate.FieldPathString(viol.Proto.GetField())
		msg := viol.Proto.GetMessage()
		if field != "" {
			parts = append(parts, field+": "+msg)
		} else {
			parts = append(parts, msg)
		}
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: field, Description: msg})
	}
	st := status.New(codes.InvalidArgument, strings.Join(parts, "; "))
	if withDetails, derr := st.WithDetails(br); derr == nil {
		st = withDetails
	}
	return st.Err()
}

// Unary is the unary interceptor.
func (v *Validator) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := refusal(ctx); err != nil {
			return nil, err
		}
		if err := v.Check(req); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream is the stream interceptor; it validates each received message.
func (v *Validator) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := refusal(ss.Context()); err != nil {
			return err
		}
		return handler(srv, &stream{ServerStream: ss, v: v})
	}
}

type stream struct {
	grpc.ServerStream
	v *Validator
}

func (s *stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.v.Check(m)
}
