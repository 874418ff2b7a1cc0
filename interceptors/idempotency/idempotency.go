// Package idempotency honours the Idempotency-Key header on the calls that
// create things (SPEC §4.1): the first successful response is kept for 24 h
// per tenant and key and replayed for a repeat, which is neither re-executed
// nor re-billed; a repeat with a different request, or while the first still
// runs, is refused with a conflict. A failed request keeps nothing, so a
// retry after a failure runs afresh. Streams are kept and replayed message by
// message.
package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/tenancy"
)

// MaxKeyLength is the longest accepted key (Stripe's limit).
const MaxKeyLength = 255

// maxKept bounds what is kept of one response, as stored: each message is
// base64 in the entry's JSON, so it counts 4/3 of its size. The entry must
// stay below NATS's 1 MiB payload limit (and the bucket's MaxValueSize).
const maxKept = 900 << 10

// ReplayHeader marks a replayed response (HTTP: Idempotent-Replayed: true).
const ReplayHeader = "idempotent-replayed"

// Interceptor applies idempotency to the listed methods.
type Interceptor struct {
	store      Store
	methods    interceptors.Methods
	staleAfter time.Duration
	log        *slog.Logger
}

// New returns the interceptor for methods (full names). A running entry
// older than staleAfter is presumed abandoned by a dead replica.
func New(store Store, methods []string, staleAfter time.Duration, log *slog.Logger) *Interceptor {
	return &Interceptor{store: store, methods: interceptors.MethodSet(methods...), staleAfter: staleAfter, log: log}
}

// keyFor reads and checks the call's key; "" when there is none.
func keyFor(ctx context.Context) (string, error) {
	k := interceptors.FirstValue(ctx, "idempotency-key")
	if k == "" {
		return "", nil
	}
	if len(k) > MaxKeyLength {
		return "", status.Errorf(codes.InvalidArgument, "Idempotency-Key must be at most %d characters", MaxKeyLength)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return "", status.Error(codes.InvalidArgument, "Idempotency-Key must be printable ASCII without spaces")
		}
	}
	return k, nil
}

// storeKey scopes a key to its tenant.
func storeKey(tenantID, key string) string {
	h := sha256.Sum256([]byte(tenantID + "\x00" + key))
	return hex.EncodeToString(h[:])
}

func requestHash(method string, req proto.Message) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte{0})
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// run is a keyed call that claimed its key and runs.
type run struct {
	key, reqHash string // the store's key (tenant-scoped) and the request's hash
	// usageID is what its usage events are billed under (Tags.UsageID),
	// kept with the response so its replays carry it.
	usageID string
}

// claim decides what to do with a keyed call: run it (a non-nil run), answer
// with a stored entry (replay), or refuse with a conflict. With neither a
// run nor a replay nor an error, the call has no key to honour.
//
// A run that claims the key gets a fresh usage id, a replay the stored
// run's; either goes into the call's Tags for metering. A key reused after
// its entry expired (or was released) is a new run with a new usage id, so
// work that really runs again is billed again.
func (i *Interceptor) claim(ctx context.Context, method string, req proto.Message) (*run, *Entry, error) {
	key, err := keyFor(ctx)
	if err != nil || key == "" {
		return nil, nil, err
	}
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return nil, nil, nil
	}
	reqHash, err := requestHash(method, req)
	if err != nil {
		return nil, nil, status.Error(codes.Internal, "hashing the request: "+err.Error())
	}
	r := &run{key: storeKey(id.TenantID, key), reqHash: reqHash, usageID: uuid.NewString()}
	existing, claimed, err := i.store.Claim(ctx, r.key, Entry{RequestHash: reqHash, Started: time.Now(), UsageID: r.usageID}, i.staleAfter)
	if err != nil {
		return nil, nil, status.Error(codes.Unavailable, "Idempotency-Key cannot be honoured right now; retry shortly")
	}
	if claimed {
		setUsageID(ctx, r.usageID)
		return r, nil, nil
	}
	switch {
	case existing.RequestHash != reqHash:
		return nil, nil, status.Error(codes.AlreadyExists, "Idempotency-Key was already used with a different request")
	case !existing.Done:
		return nil, nil, status.Error(codes.Aborted, "A request with this Idempotency-Key is still in progress")
	case existing.TooLarge:
		return nil, nil, status.Error(codes.FailedPrecondition, "The response to this Idempotency-Key was too large to keep; use a new key")
	}
	setUsageID(ctx, existing.UsageID)
	return nil, existing, nil
}

func setUsageID(ctx context.Context, id string) {
	if t := interceptors.TagsFrom(ctx); t != nil {
		t.UsageID = id
	}
	// Also where metering's durable records read it, off the call's goroutine.
	metering.RecorderFrom(ctx).SetUsageID(id)
}

// finish keeps a successful outcome or forgets a failed one.
func (i *Interceptor) finish(ctx context.Context, r *run, msgs []proto.Message, callErr error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if callErr != nil {
		if err := i.store.Release(ctx, r.key); err != nil {
			i.log.WarnContext(ctx, "could not release an idempotency key; it stays in progress until it goes stale", "error", err)
		}
		return
	}
	e := Entry{Done: true, RequestHash: r.reqHash, Started: time.Now(), UsageID: r.usageID}
	size := 0
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			e.TooLarge = true
			break
		}
		b, _ := proto.Marshal(a)
		if size += base64.StdEncoding.EncodedLen(len(b)) + 3; size > maxKept { // "…",
			e.TooLarge, e.Messages = true, nil
			break
		}
		e.Messages = append(e.Messages, b)
	}
	if err := i.store.Complete(ctx, r.key, e); err != nil {
		i.log.WarnContext(ctx, "could not keep an idempotent response; a repeat will run again", "error", err)
		_ = i.store.Release(ctx, r.key)
	}
}

func decode(raw []byte) (proto.Message, error) {
	a := &anypb.Any{}
	if err := proto.Unmarshal(raw, a); err != nil {
		return nil, err
	}
	return a.UnmarshalNew()
}

// Unary is the unary interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(i.unary, i.methods)
}

func (i *Interceptor) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	pm, ok := req.(proto.Message)
	if !ok {
		return handler(ctx, req)
	}
	r, replay, err := i.claim(ctx, info.FullMethod, pm)
	switch {
	case err != nil:
		return nil, err
	case replay != nil:
		if len(replay.Messages) != 1 {
			return nil, status.Error(codes.Internal, "stored idempotent response is malformed")
		}
		resp, err := decode(replay.Messages[0])
		if err != nil {
			return nil, status.Error(codes.Internal, "stored idempotent response is unreadable")
		}
		_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayHeader, "true"))
		return resp, nil
	case r == nil:
		return handler(ctx, req)
	}
	resp, err := handler(ctx, req)
	var kept []proto.Message
	if m, ok := resp.(proto.Message); ok && err == nil {
		kept = []proto.Message{m}
	}
	i.finish(ctx, r, kept, err)
	return resp, err
}

// Stream is the stream interceptor for server-streaming methods: it
// receives the request itself (to hash it) and hands it to the handler.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(i.stream, i.methods)
}

func (i *Interceptor) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !info.IsServerStream || info.IsClientStream {
		return handler(srv, ss) // only a server stream's one request can be hashed
	}
	if k, err := keyFor(ss.Context()); err != nil {
		return err
	} else if k == "" {
		return handler(srv, ss)
	}
	req, err := newRequest(info.FullMethod)
	if err != nil {
		return handler(srv, ss)
	}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	r, replay, err := i.claim(ss.Context(), info.FullMethod, req)
	switch {
	case err != nil:
		return err
	case replay != nil:
		if err := ss.SendHeader(metadata.Pairs(ReplayHeader, "true", interceptors.MDStreamOpen, "open")); err != nil {
			return err
		}
		for _, raw := range replay.Messages {
			m, err := decode(raw)
			if err != nil {
				return status.Error(codes.Internal, "stored idempotent response is unreadable")
			}
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
		return nil
	}
	w := &recordingStream{ServerStream: ss, req: req, record: r != nil}
	err = handler(srv, w)
	if r != nil {
		i.finish(ss.Context(), r, w.sent, keepErr(ss.Context(), err, w))
	}
	return err
}

// keepErr is the outcome finish judges a stream by. A caller that left
// mid-stream (cancelled, or its deadline passed) did not stop the work — a
// turn runs to its end, and its handler keeps sending into the recording
// stream — so its error is the caller's, not the run's: what was produced is
// kept, and the retry replays it instead of running the turn twice. A run
// that failed while its caller was still there is forgotten as usual.
func keepErr(ctx context.Context, err error, w *recordingStream) error {
	if callerLeft(ctx, err, w) {
		return nil
	}
	return err
}

// callerLeft reports whether a stream ended in error only because its
// caller had gone while it produced its messages.
func callerLeft(ctx context.Context, err error, w *recordingStream) bool {
	if err == nil || len(w.sent) == 0 {
		return false
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
		return w.sendErr != nil || ctx.Err() != nil
	}
	return false
}

// newRequest makes an empty request message for a method, from the
// descriptors the generated code registered.
func newRequest(fullMethod string) (proto.Message, error) {
	// "/pkg.Service/Method" -> "pkg.Service.Method"
	name := fullMethod
	if len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	for j := len(name) - 1; j >= 0; j-- {
		if name[j] == '/' {
			name = name[:j] + "." + name[j+1:]
			break
		}
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, err
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, status.Errorf(codes.Internal, "%s is not a method", name)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}

// recordingStream hands the already-received request to the handler and
// records what it sends — also what it could not deliver because the caller
// had gone: once a send failed, the rest is recorded without being sent
// (the first failure is returned for every later message).
type recordingStream struct {
	grpc.ServerStream
	req     proto.Message
	given   bool
	record  bool
	sent    []proto.Message
	sendErr error
}

func (s *recordingStream) RecvMsg(m any) error {
	if !s.given {
		s.given = true
		if pm, ok := m.(proto.Message); ok {
			proto.Merge(pm, s.req)
			return nil
		}
	}
	return s.ServerStream.RecvMsg(m)
}

func (s *recordingStream) SendMsg(m any) error {
	if s.record {
		if pm, ok := m.(proto.Message); ok {
			s.sent = append(s.sent, proto.Clone(pm))
		}
	}
	if s.sendErr != nil {
		return s.sendErr
	}
	if err := s.ServerStream.SendMsg(m); err != nil {
		s.sendErr = err
		return err
	}
	return nil
}
