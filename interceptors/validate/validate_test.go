package validate_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
	"github.com/kgents/kgents-go/interceptors/validate"
)

// serve starts the service behind the validator, with kgentsd's codec;
// handled counts the calls that reached a handler.
func serve(t *testing.T, viaGateway bool) (client soulv1.SoulServiceClient, cc *grpc.ClientConn, handled *atomic.Int32) {
	t.Helper()
	v, err := validate.New(&soulv1.DialogueRequest{}, &soulv1.StreamDialogueRequest{}, &soulv1.GovernanceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	handled = &atomic.Int32{}
	soul := &interceptortest.Soul{
		OnDialogue: func(context.Context, *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
			handled.Add(1)
			return &soulv1.DialogueResponse{Response: "ok"}, nil
		},
		OnStream: func(_ *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
			handled.Add(1)
			return ss.Send(&soulv1.StreamDialogueResponse{Id: "1"})
		},
	}
	chain := interceptortest.Chain{Options: []grpc.ServerOption{grpc.ForceServerCodecV2(validate.NewCodec())}}
	if viaGateway {
		u, s := interceptortest.ViaGateway()
		chain.Unary, chain.Stream = append(chain.Unary, u), append(chain.Stream, s)
	}
	chain.Add(v)
	cc = interceptortest.Serve(t, soul, chain)
	return soulv1.NewSoulServiceClient(cc), cc, handled
}

func stream(ctx context.Context, c soulv1.SoulServiceClient, req *soulv1.StreamDialogueRequest) error {
	st, err := c.StreamDialogue(ctx, req)
	for err == nil {
		_, err = st.Recv()
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// TestRulesOfTheProtoFiles: a request breaking the .proto rules is refused
// with InvalidArgument naming each offending field (in the message and as
// BadRequest field violations), before any handler runs; a valid one goes
// through. Unary and streaming alike.
func TestRulesOfTheProtoFiles(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 32<<10+1)
	for _, tc := range []struct {
		name   string
		prompt string
		mode   soulv1.Mode
		fields []string // violations, in order; none: valid
	}{
		{name: "valid", prompt: "hello"},
		{name: "empty prompt is allowed", prompt: ""},
		{name: "prompt too long", prompt: long, fields: []string{"prompt"}},
		{name: "undefined enum", prompt: "hi", mode: 99, fields: []string{"mode"}},
		{name: "two violations", prompt: long, mode: 42, fields: []string{"prompt", "mode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, _, handled := serve(t, false)
			ctx := context.Background()
			errs := map[string]error{}
			_, errs["unary"] = client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: tc.prompt, Mode: tc.mode})
			errs["stream"] = stream(ctx, client, &soulv1.StreamDialogueRequest{Prompt: tc.prompt, Mode: tc.mode})
			for kind, err := range errs {
				if len(tc.fields) == 0 {
					if err != nil {
						t.Errorf("%s: valid request refused: %v", kind, err)
					}
					continue
				}
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument {
					t.Fatalf("%s: %v, want InvalidArgument", kind, err)
				}
				var got []string
				for _, d := range st.Details() {
					if br, ok := d.(*errdetails.BadRequest); ok {
						for _, fv := range br.GetFieldViolations() {
							got = append(got, fv.GetField())
							if fv.GetDescription() == "" {
								t.Errorf("%s: violation of %s without a description", kind, fv.GetField())
							}
						}
					}
				}
				if strings.Join(got, ",") != strings.Join(tc.fields, ",") {
					t.Errorf("%s: field violations %v, want %v", kind, got, tc.fields)
				}
				for _, f := range tc.fields {
					if !strings.Contains(st.Message(), f+": ") {
						t.Errorf("%s: message %q does not name %s", kind, st.Message(), f)
					}
				}
			}
			wantHandled := int32(2)
			if len(tc.fields) > 0 {
				wantHandled = 0
			}
			if got := handled.Load(); got != wantHandled {
				t.Errorf("handlers ran %d times, want %d", got, wantHandled)
			}
		})
	}
}

// TestGatewayRefusal: a call the REST gateway marks as unreadable is
// refused with the gateway's reason; the same mark from a native caller,
// who cannot be the gateway, is ignored.
func TestGatewayRefusal(t *testing.T) {
	t.Parallel()
	const reason = "request body: invalid JSON at offset 7"
	for _, viaGateway := range []bool{true, false} {
		client, _, handled := serve(t, viaGateway)
		ctx := metadata.AppendToOutgoingContext(context.Background(), validate.MDRefused, reason)
		_, uerr := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
		serr := stream(ctx, client, &soulv1.StreamDialogueRequest{Prompt: "hi"})
		for kind, err := range map[string]error{"unary": uerr, "stream": serr} {
			st := status.Convert(err)
			if viaGateway && (st.Code() != codes.InvalidArgument || st.Message() != reason) {
				t.Errorf("gateway %s: %v, want InvalidArgument %q", kind, err, reason)
			}
			if !viaGateway && err != nil {
				t.Errorf("native %s with a forged mark: %v", kind, err)
			}
		}
		if want := map[bool]int32{true: 0, false: 2}[viaGateway]; handled.Load() != want {
			t.Errorf("via gateway %v: handlers ran %d times, want %d", viaGateway, handled.Load(), want)
		}
	}
}

// rawCodec sends bytes as they are, so a test can send what no protobuf
// library would write; it is named "proto" so the server decodes with its
// own codec.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestMalformedRequests: bytes that are not the method's message, or a
// string that is not UTF-8, are the caller's error (InvalidArgument saying
// what is wrong), not grpc-go's Internal, and reach no handler.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"truncated", []byte{0x0a, 0xff}, "the request is not a valid kgents.soul.v1.DialogueRequest message (malformed protobuf)"},
		{"not UTF-8", []byte{0x0a, 0x02, 0xc3, 0x28}, "prompt: not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, cc, handled := serve(t, false)
			var out []byte
			err := cc.Invoke(context.Background(), interceptortest.Dialogue, tc.body, &out, grpc.ForceCodecV2(rawCodec{}))
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != tc.want {
				t.Errorf("%v, want InvalidArgument %q", err, tc.want)
			}
			if handled.Load() != 0 {
				t.Error("a malformed request reached the handler")
			}
		})
	}
	// A caller cannot plant the codec's mark in a valid message.
	_, cc, handled := serve(t, false)
	planted := append([]byte{0x0a, 0x02, 'h', 'i'}, 0xfa, 0xff, 0xff, 0xff, 0x0f, 0x03, 'b', 'a', 'd')
	var out []byte
	if err := cc.Invoke(context.Background(), interceptortest.Dialogue, planted, &out, grpc.ForceCodecV2(rawCodec{})); err != nil || handled.Load() != 1 {
		t.Errorf("a valid request carrying the mark field: %v (handled %d)", err, handled.Load())
	}
}
