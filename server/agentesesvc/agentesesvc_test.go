package agentesesvc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/agentese"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/server/agentesesvc"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/tenancy"
)

const (
	alice     = "kg_dev_alice" // FREE, read, [developer]
	bob       = "kg_dev_bob"   // PRO, read+write, [developer, architect]
	carol     = "kg_dev_carol" // ENTERPRISE, read+write+admin, every archetype
	writeOnly = "kg_test_write_only"
)

// meterLog collects what the handlers recorded for metering, as the
// metering interceptor would (a Recorder in the call's context, drained
// when the call ends).
type meterLog struct {
	mu      sync.Mutex
	invokes []metering.InvokeUsage
	tokens  []metering.TokenUsage
}

func (m *meterLog) drain(r *metering.Recorder) {
	tokens, invokes, _ := r.Drain()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.invokes = append(m.invokes, invokes...)
	m.tokens = append(m.tokens, tokens...)
}

func (m *meterLog) take() ([]metering.InvokeUsage, []metering.TokenUsage) {
	m.mu.Lock()
	defer m.mu.Unlock()
	inv, tok := m.invokes, m.tokens
	m.invokes, m.tokens = nil, nil
	return inv, tok
}

func (m *meterLog) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	r := &metering.Recorder{}
	defer m.drain(r)
	return h(metering.WithRecorder(ctx, r), req)
}

func (m *meterLog) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	r := &metering.Recorder{}
	defer m.drain(r)
	return h(srv, interceptors.WithContext(ss, metering.WithRecorder(ss.Context(), r)))
}

// keyring is the dev keys plus a key with the write scope only.
func keyring(t *testing.T) *tenancy.Keyring {
	t.Helper()
	h := tenancy.HashKey(writeOnly)
	file := filepath.Join(t.TempDir(), "keys.json")
	js := `{"tenants": [{"id": "00000000-0000-0000-0000-0000000000aa", "name": "t", "tier": "pro"}],
		"keys": [{"sha256": "` + hexOf(h[:]) + `", "tenant_id": "00000000-0000-0000-0000-0000000000aa",
		"user_id": "u", "scopes": ["write"]}]}`
	if err := os.WriteFile(file, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true, KeysFile: file,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// harness is the real service behind the real auth interceptor, with the
// real Soul service over the template engine, on an in-memory listener.
type harness struct {
	client agentesev1.AgenteseServiceClient
	meter  *meterLog
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, agentese.DefaultRegistry(soulsvc.New(soul.NewTemplateEngine(), soul.NewGovernor(nil))))
}

func newHarnessWith(t *testing.T, reg *agentese.Registry) *harness {
	t.Helper()
	svc := agentesesvc.New(reg, agentesesvc.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	read := func(action string) auth.Rule { return auth.Rule{Scope: tenancy.ScopeRead, Action: action} }
	invoke := read("invoke AGENTESE paths")
	invoke.ScopeFor = svc.InvokeScope
	a := auth.New(keyring(t), auth.Rules{Methods: map[string]auth.Rule{
		agentesev1.AgenteseService_Resolve_FullMethodName:      read("resolve AGENTESE paths"),
		agentesev1.AgenteseService_Affordances_FullMethodName:  read("list AGENTESE affordances"),
		agentesev1.AgenteseService_Invoke_FullMethodName:       invoke,
		agentesev1.AgenteseService_InvokeStream_FullMethodName: invoke,
	}})
	m := &meterLog{}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(a.Unary(), m.unary),
		grpc.ChainStreamInterceptor(a.Stream(), m.stream),
	)
	agentesev1.RegisterAgenteseServiceServer(srv, svc)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///agentese",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &harness{client: agentesev1.NewAgenteseServiceClient(conn), meter: m}
}

func as(key string) context.Context {
	if key == "" {
		return context.Background()
	}
	return metadata.AppendToOutgoingContext(context.Background(), "x-api-key", key)
}

func kw(t *testing.T, js string) *structpb.Struct {
	t.Helper()
	if js == "" {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal([]byte(js), s); err != nil {
		t.Fatal(err)
	}
	return s
}

func invokeReq(t *testing.T, path, archetype, js string) *agentesev1.InvokeRequest {
	return &agentesev1.InvokeRequest{Path: path, Observer: &agentesev1.Observer{Archetype: archetype}, Kwargs: kw(t, js)}
}

func field(v *structpb.Value, name string) *structpb.Value {
	return v.GetStructValue().GetFields()[name]
}

// TestChallengeIsReal: the flagship example returns K-gent's challenge, and
// the invocation is metered with the tokens really used.
func TestChallengeIsReal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	resp, err := h.client.Invoke(as(bob), invokeReq(t, "self.soul.challenge", "", `{"message": "We should skip code review to ship faster"}`))
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetResult()
	if resp.GetPath() != "self.soul.challenge" || field(r, "mode").GetStringValue() != "challenge" ||
		!strings.Contains(field(r, "response").GetStringValue(), "What would you tell someone else in this position?") {
		t.Fatalf("not a challenge: %v", resp)
	}
	if resp.GetTokensUsed() <= 0 || float64(resp.GetTokensUsed()) != field(r, "tokens_used").GetNumberValue() || resp.GetCached() {
		t.Fatalf("tokens_used %d, result %v", resp.GetTokensUsed(), field(r, "tokens_used"))
	}
	invokes, tokens := h.meter.take()
	want := metering.InvokeUsage{Path: "self.soul.challenge", Aspect: "challenge", TokensUsed: int(resp.GetTokensUsed())}
	if len(invokes) != 1 || invokes[0] != want {
		t.Fatalf("metered %+v, want %+v", invokes, want)
	}
	if len(tokens) != 1 || tokens[0].TokensIn+tokens[0].TokensOut != int(resp.GetTokensUsed()) || tokens[0].Mode != "challenge" {
		t.Fatalf("llm.tokens recorded by the Soul service: %+v", tokens)
	}
}

func TestStatusCodes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	big := strings.Repeat("x", 70<<10)
	cases := []struct {
		name, key, path, archetype, kw string
		code                           codes.Code
		msg                            string
	}{
		{"mutating aspect without write scope", alice, "world.house.build", "", "", codes.PermissionDenied,
			"API key requires 'write' scope to invoke mutating AGENTESE aspects"},
		{"reading aspect with read scope", alice, "world.house.manifest", "", "", codes.OK, ""},
		{"mutating aspect with write scope", bob, "world.house.build", "", "", codes.OK, ""},
		{"no read scope", writeOnly, "world.house.manifest", "", "", codes.PermissionDenied, "'read' scope"},
		{"archetype the key lacks", alice, "world.house.manifest", "architect", "", codes.PermissionDenied,
			"Archetypes of this key: developer"},
		{"unknown archetype", carol, "world.house.manifest", "wizard", "", codes.InvalidArgument, "Known archetypes"},
		{"not afforded", bob, "world.house.demolish", "", "", codes.PermissionDenied, "Affordances for developer: manifest"},
		{"afforded to the other archetype", bob, "world.house.demolish", "architect", `{"confirm": true}`, codes.OK, ""},
		{"empty path", bob, "", "", "", codes.InvalidArgument, "empty"},
		{"single segment", bob, "world", "", "", codes.InvalidArgument, "Path must include aspect"},
		{"unknown context", bob, "invalid.house.manifest", "", "", codes.NotFound, "Valid contexts: world, self, concept, void, time"},
		{"unknown holon", bob, "world.castle.manifest", "", "", codes.NotFound, "Holons of world: document, house, purgatory"},
		{"injection", bob, "world.house; rm -rf /", "", "", codes.InvalidArgument, "character ';'"},
		{"traversal", bob, "world.house.../../etc/passwd", "", "", codes.InvalidArgument, "segment 3 is empty"},
		{"unknown kwarg", bob, "world.house.manifest", "", `{"x": 1}`, codes.InvalidArgument, "takes no kwargs"},
		{"kwargs too big", bob, "world.house.manifest", "", `{"x": "` + big + `"}`, codes.InvalidArgument, "64 KiB"},
		{"precondition", bob, "world.purgatory.deploy", "", "", codes.FailedPrecondition, "Invoke world.purgatory.build first"},
		{"budget above the tier", bob, "self.soul.reflect", "", `{"message": "hi", "budget": "deep"}`, codes.PermissionDenied, "not available"},
		{"missing key", "", "world.house.manifest", "", "", codes.Unauthenticated, "API key required"},
		{"unknown key", "kg_nobody", "world.house.manifest", "", "", codes.Unauthenticated, "Invalid API key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := h.client.Invoke(as(tc.key), invokeReq(t, tc.path, tc.archetype, tc.kw))
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("Invoke(%q) = %v %q, want %v containing %q", tc.path, st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestResolveAndAffordances(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, err := h.client.Resolve(as(alice), &agentesev1.ResolveRequest{Path: "self.soul"})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetHandle() != "self.soul" || r.GetContext() != "self" || !slices.Contains(r.GetAffordances(), "challenge") {
		t.Fatalf("resolve self.soul: %v", r)
	}
	for archetype, want := range map[string][]string{
		"":          {"manifest", "witness", "affordances", "define", "relate", "transform", "build", "deploy", "debug", "test", "refactor"},
		"developer": {"manifest", "witness", "affordances", "define", "relate", "transform", "build", "deploy", "debug", "test", "refactor"},
		"architect": {"manifest", "witness", "affordances", "define", "relate", "transform", "renovate", "measure", "blueprint", "demolish", "design"},
		"poet":      {"manifest", "witness", "affordances", "define", "relate", "transform", "describe", "metaphor", "compose"},
	} {
		a, err := h.client.Affordances(as(bob), &agentesev1.AffordancesRequest{Path: "world.house", Archetype: archetype})
		if err != nil {
			t.Fatalf("%s: %v", archetype, err)
		}
		wantArchetype := archetype
		if wantArchetype == "" {
			wantArchetype = "developer"
		}
		if a.GetPath() != "world.house" || a.GetObserverArchetype() != wantArchetype || !slices.Equal(a.GetAffordances(), want) {
			t.Errorf("affordances for %q: %v", archetype, a)
		}
	}
	for path, code := range map[string]codes.Code{"invalid.context": codes.NotFound, "world": codes.InvalidArgument, "world.nonexistent_entity": codes.NotFound} {
		if _, err := h.client.Resolve(as(bob), &agentesev1.ResolveRequest{Path: path}); status.Code(err) != code {
			t.Errorf("resolve %q: %v, want %v", path, err, code)
		}
		if _, err := h.client.Affordances(as(bob), &agentesev1.AffordancesRequest{Path: path}); status.Code(err) != code {
			t.Errorf("affordances %q: %v, want %v", path, err, code)
		}
	}
	if _, err := h.client.Resolve(as(writeOnly), &agentesev1.ResolveRequest{Path: "world.house"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("resolve without read scope: %v", err)
	}
}

// readStream opens an InvokeStream and reads it to the end.
func readStream(t *testing.T, h *harness, key string, req *agentesev1.InvokeStreamRequest) (metadata.MD, []*agentesev1.InvokeStreamResponse, error) {
	t.Helper()
	stream, err := h.client.InvokeStream(as(key), req)
	if err != nil {
		t.Fatal(err)
	}
	md, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	var events []*agentesev1.InvokeStreamResponse
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return md, events, nil
		}
		if err != nil {
			return md, events, err
		}
		events = append(events, ev)
	}
}

func streamReq(t *testing.T, path, archetype, js string) *agentesev1.InvokeStreamRequest {
	return &agentesev1.InvokeStreamRequest{Path: path, Observer: &agentesev1.Observer{Archetype: archetype}, Kwargs: kw(t, js)}
}

// TestInvokeStreamDialogue: header, then chunks, then exactly one complete
// carrying the tokens; ids count from 1; metered at the end.
func TestInvokeStreamDialogue(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	md, events, err := readStream(t, h, bob, streamReq(t, "self.soul.dialogue", "", `{"message": "Help me decide whether to quit my job and start a company"}`))
	if err != nil {
		t.Fatal(err)
	}
	if md == nil {
		t.Fatal("no response header: the stream never opened")
	}
	if len(events) < 3 {
		t.Fatalf("%d events", len(events))
	}
	var text strings.Builder
	for i, ev := range events {
		if ev.GetId() != strconv.Itoa(i+1) {
			t.Fatalf("event %d has id %q", i, ev.GetId())
		}
		if i < len(events)-1 {
			c := ev.GetChunk()
			if c == nil || int(c.GetIndex()) != i {
				t.Fatalf("event %d is not chunk %d: %v", i, i, ev)
			}
			text.WriteString(c.GetText())
		}
	}
	done := events[len(events)-1].GetComplete()
	if done == nil || done.GetPath() != "self.soul.dialogue" || done.GetTokensUsed() <= 0 {
		t.Fatalf("last event: %v", events[len(events)-1])
	}
	if got := field(done.GetResult(), "response").GetStringValue(); got != text.String() {
		t.Fatalf("complete response %q, chunks %q", got, text.String())
	}
	invokes, _ := h.meter.take()
	if len(invokes) != 1 || invokes[0].Aspect != "dialogue" || invokes[0].TokensUsed != int(done.GetTokensUsed()) {
		t.Fatalf("metered %+v", invokes)
	}
}

// TestInvokeStreamRefusedBeforeHeader: everything refused before the
// stream opens is a plain status (the REST layer's JSON error), with no
// header sent and no event.
func TestInvokeStreamRefusedBeforeHeader(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cases := []struct {
		name, key, path, archetype, kw string
		code                           codes.Code
	}{
		{"budget above the tier (Soul service)", bob, "self.soul.dialogue", "", `{"message": "hi", "budget": "deep"}`, codes.PermissionDenied},
		{"archetype the key lacks", alice, "self.soul.dialogue", "architect", `{"message": "hi"}`, codes.PermissionDenied},
		{"mutating aspect without write scope", alice, "world.house.build", "", "", codes.PermissionDenied},
		{"missing message", bob, "self.soul.dialogue", "", "", codes.InvalidArgument},
		{"syntax", bob, "self.soul.", "", "", codes.InvalidArgument},
		{"unknown holon", bob, "self.sole.dialogue", "", "", codes.NotFound},
		{"precondition of a non-streaming aspect", bob, "world.house.deploy", "", "", codes.FailedPrecondition},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			md, events, err := readStream(t, h, tc.key, streamReq(t, tc.path, tc.archetype, tc.kw))
			if status.Code(err) != tc.code || md != nil || len(events) != 0 {
				t.Fatalf("%v (header %v, %d events), want %v before any header", err, md, len(events), tc.code)
			}
		})
	}
	if invokes, _ := h.meter.take(); len(invokes) != 0 {
		t.Fatalf("refused calls were metered as invocations: %+v", invokes)
	}
}

// TestInvokeStreamNonStreaming: a non-streaming aspect sends the header and
// one complete.
func TestInvokeStreamNonStreaming(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	md, events, err := readStream(t, h, bob, streamReq(t, "world.house.build", "", ""))
	if err != nil || md == nil {
		t.Fatalf("%v, header %v", err, md)
	}
	if len(events) != 1 || events[0].GetId() != "1" || events[0].GetComplete() == nil ||
		field(events[0].GetComplete().GetResult(), "build_status").GetStringValue() != "passing" {
		t.Fatalf("events: %v", events)
	}
}

// TestInvokeStreamErrorAfterOpen: a failure after the stream opened ends it
// with one error event; internal detail never leaves.
func TestInvokeStreamErrorAfterOpen(t *testing.T) {
	t.Parallel()
	pour := func(fail error) agentese.StreamFunc {
		return func(_ context.Context, _ *agentese.Call, s agentese.Sink) (agentese.Outcome, error) {
			if err := s.Open(); err != nil {
				return agentese.Outcome{}, err
			}
			if err := s.Chunk("drip", 0); err != nil {
				return agentese.Outcome{}, err
			}
			return agentese.Outcome{}, fail
		}
	}
	run := func(context.Context, *agentese.Call) (agentese.Outcome, error) {
		return agentese.Outcome{Value: structpb.NewStringValue("ok")}, nil
	}
	reg, err := agentese.NewRegistry([]*agentese.Node{{
		Path:   "world.pipe",
		Common: []string{"burst", "leak"},
		Aspects: []*agentese.Aspect{
			{Name: "manifest", Run: run},
			{Name: "burst", Run: run, Stream: pour(&agentese.Error{Kind: agentese.KindStream, Msg: "the pipe burst", Type: "llm_error"})},
			{Name: "leak", Run: run, Stream: pour(errors.New("secret internal detail"))},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, reg)
	for aspect, want := range map[string]*agentesev1.InvokeError{
		"burst": {Error: "the pipe burst", Type: "llm_error"},
		"leak":  {Error: "internal error", Type: "internal"},
	} {
		md, events, err := readStream(t, h, bob, streamReq(t, "world.pipe."+aspect, "", ""))
		if err != nil || md == nil || len(events) != 2 {
			t.Fatalf("%s: %v, header %v, %d events", aspect, err, md, len(events))
		}
		got := events[1].GetError()
		if events[0].GetChunk().GetText() != "drip" || events[1].GetId() != "2" || got.GetError() != want.GetError() || got.GetType() != want.GetType() {
			t.Fatalf("%s: events %v", aspect, events)
		}
	}
}

func TestInvokeScope(t *testing.T) {
	t.Parallel()
	svc := agentesesvc.New(agentese.DefaultRegistry(nil))
	for _, tc := range []struct {
		req   any
		scope tenancy.Scope
	}{
		{&agentesev1.InvokeRequest{Path: "world.house.build"}, tenancy.ScopeWrite},
		{&agentesev1.InvokeStreamRequest{Path: "self.memory.engram"}, tenancy.ScopeWrite},
		{&agentesev1.InvokeRequest{Path: "world.house.manifest"}, tenancy.ScopeRead},
		{&agentesev1.InvokeStreamRequest{Path: "self.soul.dialogue"}, tenancy.ScopeRead},
		{&agentesev1.InvokeRequest{Path: "world.house; rm -rf /"}, tenancy.ScopeRead},
		{&agentesev1.InvokeRequest{Path: "world.castle.build"}, tenancy.ScopeRead},
		{&agentesev1.ResolveRequest{Path: "world.house.build"}, tenancy.ScopeRead},
		{nil, tenancy.ScopeRead},
	} {
		scope, action := svc.InvokeScope(tc.req)
		wantAction := "invoke AGENTESE paths"
		if tc.scope == tenancy.ScopeWrite {
			wantAction = "invoke mutating AGENTESE aspects"
		}
		if scope != tc.scope || action != wantAction {
			t.Errorf("InvokeScope(%v) = %v, %q", tc.req, scope, action)
		}
	}
}

func TestCodeOf(t *testing.T) {
	t.Parallel()
	for kind, code := range map[agentese.Kind]codes.Code{
		agentese.KindSyntax: codes.InvalidArgument, agentese.KindArgument: codes.InvalidArgument,
		agentese.KindUnknownArchetype: codes.InvalidArgument, agentese.KindNotFound: codes.NotFound,
		agentese.KindNotAfforded: codes.PermissionDenied, agentese.KindArchetypeDenied: codes.PermissionDenied,
		agentese.KindUnauthenticated: codes.Unauthenticated, agentese.KindPrecondition: codes.FailedPrecondition,
		agentese.KindUnavailable: codes.Unavailable, agentese.KindStream: codes.Unavailable, 0: codes.Internal,
	} {
		if got := agentesesvc.CodeOf(kind); got != code {
			t.Errorf("CodeOf(%v) = %v, want %v", kind, got, code)
		}
	}
	passthrough := status.Error(codes.PermissionDenied, "budget")
	if !errors.Is(agentesesvc.StatusOf(passthrough), passthrough) {
		t.Error("a status error is not passed through")
	}
}
