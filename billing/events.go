package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Source is the CloudEvents source of every usage event kgentsd emits.
// OpenMeter dedupes by id + source, so it must never change.
const Source = "kgents-api"

// The usage event types of SPEC §4.7.
const (
	TypeAPIRequest     = "api.request"
	TypeLLMTokens      = "llm.tokens"
	TypeAgenteseInvoke = "agentese.invoke"
	TypeSessionCreate  = "session.create"
	TypeSessionMessage = "session.message"
)

// EventTypes lists every type this package constructs (metric labels are
// limited to these, plus "other").
func EventTypes() []string {
	return []string{TypeAPIRequest, TypeLLMTokens, TypeAgenteseInvoke, TypeSessionCreate, TypeSessionMessage}
}

// typeLabel bounds the event_type label of the metrics to the known types,
// so a stray publisher cannot create unbounded series.
func typeLabel(eventType string) string {
	switch eventType {
	case TypeAPIRequest, TypeLLMTokens, TypeAgenteseInvoke, TypeSessionCreate, TypeSessionMessage:
		return eventType
	}
	return "other"
}

// JetStream names.
const (
	// StreamName is the metering stream.
	StreamName = "kgent-metering"
	// StreamSubjects is everything the stream stores: events and dead letters.
	StreamSubjects = "kgent.metering.>"
	// EventSubjectPrefix + type is where an event is published.
	EventSubjectPrefix = "kgent.metering.events."
	// EventSubjects is the filter of the OpenMeter sink's consumer.
	EventSubjects = EventSubjectPrefix + ">"
	// DeadSubjectPrefix + type is where an event OpenMeter rejected goes.
	DeadSubjectPrefix = "kgent.metering.dead."
	// StreamMaxAge keeps events (delivered or not) for 30 days: long enough
	// to re-drive a backlog or dead letters after a long OpenMeter outage,
	// and still inside OpenMeter's 32-day dedupe window, so a re-drive of
	// everything the stream holds cannot bill anything twice.
	StreamMaxAge = 30 * 24 * time.Hour
	// StreamDuplicates is JetStream's Nats-Msg-Id dedupe window. The server
	// keeps every id of the window in memory, and this is the busiest stream
	// (one to three events per API call), so the window is kept to what the
	// stream itself must absorb: a publish retried after a lost PubAck
	// (seconds). Events replayed later (after a NATS outage) reach OpenMeter
	// with the same stable ids and OpenMeter's own 32-day dedupe drops the
	// copy; measured, a 10-minute window held ~12 million ids (well over a
	// gigabyte) at 20,000 events/s.
	StreamDuplicates = 30 * time.Second
)

// EventSubject is the subject an event of eventType is published to.
func EventSubject(eventType string) string { return EventSubjectPrefix + eventType }

// DeadLetterSubject is the subject a rejected event of eventType goes to.
func DeadLetterSubject(eventType string) string { return DeadSubjectPrefix + eventType }

// APIRequest is the data of an api.request event: one per authenticated
// tenant call, including those quota rejected.
type APIRequest struct {
	// Route template for REST, gRPC full method otherwise (never a raw path).
	Endpoint string `json:"endpoint"`
	// HTTP verb, or "GRPC" for native gRPC calls.
	Method string `json:"method"`
	// HTTP equivalent of the result (429 for quota rejections).
	StatusCode int `json:"status_code"`
	// Numeric gRPC status code (0 OK, 8 ResourceExhausted, ...).
	GRPCCode int `json:"grpc_code"`
	// Wall time of the call in milliseconds.
	DurationMS float64 `json:"duration_ms"`
}

// LLMTokens is the data of an llm.tokens event: what one dialogue turn cost.
type LLMTokens struct {
	TokensIn  int `json:"tokens_in"`
	TokensOut int `json:"tokens_out"`
	// TokensTotal defaults to TokensIn + TokensOut when zero.
	TokensTotal int    `json:"tokens_total"`
	Model       string `json:"model"`
	SessionID   string `json:"session_id"`
	Mode        string `json:"mode"`
	Budget      string `json:"budget"`
}

// AgenteseInvoke is the data of an agentese.invoke event.
type AgenteseInvoke struct {
	Path       string `json:"path"`
	Aspect     string `json:"aspect"`
	TokensUsed int    `json:"tokens_used"`
}

// SessionCreate is the data of a session.create event.
type SessionCreate struct {
	SessionID string `json:"session_id"`
	AgentType string `json:"agent_type"`
}

// SessionMessage is the data of a session.message event.
type SessionMessage struct {
	SessionID string `json:"session_id"`
	// "user" or "assistant".
	Role string `json:"role"`
	// Length of the message in characters.
	MessageLength int `json:"message_length"`
}

// EventID derives a usage event's id from a server-side base, the event type
// and a sequence number (the n-th event of that type for that base). It is
// the first 128 bits of SHA-256(base NUL type NUL seq) in hex (32 chars):
// deterministic, so a retried publish or a replayed delivery carries the
// same id and is deduplicated; opaque, so the base (which may contain a
// tenant's Idempotency-Key) is not revealed to OpenMeter.
//
// base must be generated by the server: the request id, or
// IdempotencyBase(tenant, key) for calls that carry an Idempotency-Key (so
// a replayed call bills once). Never pass client input alone: a client must
// not be able to mint, or collide with, another call's ids. An empty base
// yields an empty id, which the constructors reject.
func EventID(base, eventType string, seq int) string {
	if base == "" {
		return ""
	}
	var buf [128]byte // the input, on the stack for the usual base
	in := append(buf[:0], base...)
	in = append(in, 0)
	in = append(in, eventType...)
	in = append(in, 0)
	in = strconv.AppendInt(in, int64(seq), 10)
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:16])
}

// IdempotencyBase is the EventID base of a call carrying an Idempotency-Key:
// scoped to the tenant (two tenants may pick the same key) and prefixed so it
// can never equal a server request id.
func IdempotencyBase(tenantID, key string) string {
	if tenantID == "" || key == "" {
		return ""
	}
	return "idem\x00" + tenantID + "\x00" + key
}

// NewAPIRequest builds an api.request event for tenantID. A zero at means now.
func NewAPIRequest(id, tenantID string, at time.Time, d APIRequest) (event.Event, error) {
	return newEvent(id, tenantID, TypeAPIRequest, at, d)
}

// NewLLMTokens builds an llm.tokens event.
func NewLLMTokens(id, tenantID string, at time.Time, d LLMTokens) (event.Event, error) {
	if d.TokensTotal == 0 {
		d.TokensTotal = d.TokensIn + d.TokensOut
	}
	return newEvent(id, tenantID, TypeLLMTokens, at, d)
}

// NewAgenteseInvoke builds an agentese.invoke event.
func NewAgenteseInvoke(id, tenantID string, at time.Time, d AgenteseInvoke) (event.Event, error) {
	return newEvent(id, tenantID, TypeAgenteseInvoke, at, d)
}

// NewSessionCreate builds a session.create event.
func NewSessionCreate(id, tenantID string, at time.Time, d SessionCreate) (event.Event, error) {
	return newEvent(id, tenantID, TypeSessionCreate, at, d)
}

// NewSessionMessage builds a session.message event.
func NewSessionMessage(id, tenantID string, at time.Time, d SessionMessage) (event.Event, error) {
	return newEvent(id, tenantID, TypeSessionMessage, at, d)
}

func newEvent(id, tenantID, eventType string, at time.Time, data jsonData) (event.Event, error) {
	if strings.TrimSpace(id) == "" {
		return event.Event{}, fmt.Errorf("billing: %s event without an id", eventType)
	}
	if strings.TrimSpace(tenantID) == "" {
		return event.Event{}, fmt.Errorf("billing: %s event without a tenant", eventType)
	}
	if at.IsZero() {
		at = time.Now()
	}
	// The context is filled in directly rather than through the SDK's
	// setters (an allocation each, on every metered call); the fields are
	// the ones they would set, checked by TestNewEventAsTheSDKBuildsIt.
	ctx := &eventContext{
		ctx: event.EventContextV1{ID: id, Source: sourceRef, Type: eventType, DataContentType: &applicationJSON},
		sub: tenantID,
		at:  types.Timestamp{Time: at.UTC()},
	}
	ctx.ctx.Subject, ctx.ctx.Time = &ctx.sub, &ctx.at
	// The data is already JSON: set as the SDK's encoded (not base64)
	// data, which it writes verbatim as "data".
	return event.Event{Context: &ctx.ctx, DataEncoded: encodeData(data)}, nil
}

// eventContext holds an event's context and the values its pointers point
// to, in one allocation.
type eventContext struct {
	ctx event.EventContextV1
	sub string
	at  types.Timestamp
}

// sourceRef is Source as a CloudEvents URI-reference, parsed once.
var sourceRef = func() types.URIRef {
	u, err := url.Parse(Source)
	if err != nil {
		panic(err)
	}
	return types.URIRef{URL: *u}
}()

var applicationJSON = event.ApplicationJSON

// Marshal encodes ev as a structured-mode JSON CloudEvent, the form it is
// stored in on the stream and posted to OpenMeter in (the sink copies these
// bytes into its batches without re-encoding them).
func Marshal(ev event.Event) ([]byte, error) {
	if err := validate(&ev); err != nil {
		return nil, err
	}
	b, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("billing: marshal event %s: %w", ev.ID(), err)
	}
	return b, nil
}

// validate checks what OpenMeter needs beyond the CloudEvents rules: version
// 1.0 and a subject (the billed tenant).
func validate(ev *event.Event) error {
	if ev.SpecVersion() != event.CloudEventsVersionV1 {
		return fmt.Errorf("billing: specversion %q, want %q", ev.SpecVersion(), event.CloudEventsVersionV1)
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("billing: invalid CloudEvent: %w", err)
	}
	if strings.TrimSpace(ev.Subject()) == "" {
		return errors.New("billing: invalid CloudEvent: subject (tenant) is required")
	}
	if !validSubjectToken(ev.Type()) {
		return fmt.Errorf("billing: invalid CloudEvent: type %q cannot be a NATS subject", ev.Type())
	}
	return nil
}

// validSubjectToken reports whether s can follow a subject prefix: dotted
// tokens, none empty, no wildcards or whitespace.
func validSubjectToken(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	return !strings.ContainsAny(s, "*> \t\r\n")
}

// NewMsg is the NATS message that publishes ev: its subject, its JSON, and
// Nats-Msg-Id = its id, so JetStream drops a re-publish within
// StreamDuplicates. The streaming spool stores and replays these.
func NewMsg(ev event.Event) (*nats.Msg, error) {
	data, err := Marshal(ev)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(EventSubject(ev.Type()))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, ev.ID())
	return m, nil
}

// Publish publishes ev to the metering stream and waits for JetStream to
// store it. A duplicate (same id within the window) is not an error.
func Publish(ctx context.Context, js jetstream.JetStream, ev event.Event) error {
	m, err := NewMsg(ev)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("billing: publish %s: %w", ev.Type(), err)
	}
	return nil
}

// StreamConfig is the metering stream's configuration for the given number
// of replicas (NATS_REPLICAS). Retention is by limits, not work queue, so an
// event stays after the sink acknowledged it: operators can re-drive a range
// (a replay is deduplicated by OpenMeter) and inspect dead letters.
func StreamConfig(replicas int) jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "kgentsd usage events (CloudEvents) on their way to OpenMeter, and dead letters",
		Subjects:    []string{StreamSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		Replicas:    replicas,
		MaxAge:      StreamMaxAge,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		Duplicates:  StreamDuplicates,
		// The usage rollup reads it by sequence with direct gets.
		AllowDirect: true,
	}
}

// EnsureStream creates the metering stream, or updates it to StreamConfig.
// Every replica calls it at start; it is idempotent.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("billing: ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}
