package apijson_test

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kgents/kgents-go/apijson"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
)

func TestMarshal(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 11, 22, 9, 30, 1, 123456789, time.UTC)
	cases := []struct {
		name string
		msg  proto.Message
		want string
	}{
		{
			name: "session with nulls for unset optionals",
			msg: &sessionsv1.Session{
				Id: "s1", TenantId: "t1", AgentType: "kgent",
				Status: sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE, Mode: soulv1.Mode_MODE_REFLECT,
				CreatedAt: timestamppb.New(created),
			},
			want: `{"id":"s1","tenant_id":"t1","title":null,"agent_type":"kgent","status":"active","mode":"reflect","message_count":0,"tokens_used":0,"created_at":"2026-11-22T09:30:01.123456+00:00","last_message_at":null}`,
		},
		{
			name: "optional set to its zero value is not null",
			msg:  &sessionsv1.Session{Title: proto.String("")},
			want: `{"id":"","tenant_id":"","title":"","agent_type":"","status":"unspecified","mode":"unspecified","message_count":0,"tokens_used":0,"created_at":null,"last_message_at":null}`,
		},
		{
			name: "repeated and nested messages, zero values emitted",
			msg: &soulv1.DialogueResponse{
				Response: "hi", Mode: soulv1.Mode_MODE_CHALLENGE,
				Eigenvectors:          &soulv1.Eigenvectors{Aesthetic: 0.15, Categorical: 0.92},
				ReferencedPreferences: []string{"a"},
			},
			want: `{"response":"hi","mode":"challenge","eigenvectors":{"aesthetic":0.15,"categorical":0.92,"gratitude":0.0,"heterarchy":0.0,"generativity":0.0,"joy":0.0},"tokens_used":0,"referenced_preferences":["a"],"referenced_patterns":[],"budget":"unspecified"}`,
		},
		{
			name: "int64 counters are numbers",
			msg:  &usagev1.GetUsageResponse{TenantId: "t", RequestsToday: 9007199254740991, Limits: &usagev1.Limits{RequestsPerMinute: 60}},
			want: `{"tenant_id":"t","tier":"","period":"","requests_today":9007199254740991,"tokens_today":0,"tokens_month":0,"limits":{"requests_per_minute":60,"requests_per_day":0,"tokens_per_month":0}}`,
		},
		{
			name: "oneof emits only the member that is set",
			msg: &soulv1.StreamDialogueResponse{
				Id:    "3",
				Event: &soulv1.StreamDialogueResponse_Chunk{Chunk: &soulv1.DialogueChunk{Text: " world", Index: 1}},
			},
			want: `{"id":"3","chunk":{"text":" world","index":1}}`,
		},
		{
			name: "struct and value",
			msg: &agentesev1.InvokeResponse{
				Path: "void.entropy.manifest",
				Result: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
					"b": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNullValue(), structpb.NewBoolValue(true)}}),
					"a": structpb.NewNumberValue(100),
				}}),
			},
			want: `{"path":"void.entropy.manifest","result":{"a":100,"b":[null,true]},"tokens_used":0,"cached":false}`,
		},
		{
			name: "unset value is null",
			msg:  &agentesev1.InvokeResponse{Path: "p"},
			want: `{"path":"p","result":null,"tokens_used":0,"cached":false}`,
		},
		{
			name: "string escaping",
			msg:  &soulv1.DialogueChunk{Text: "a\"b\\c\n\t\x01\u2028é\xff"},
			want: `{"text":"a\"b\\c\n\t\u0001\u2028é` + "\uFFFD" + `","index":0}`, // invalid UTF-8 is written as U+FFFD
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := apijson.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("Marshal:\n got %s\nwant %s", got, tc.want)
			}
			if !json.Valid(got) {
				t.Errorf("output is not valid JSON: %s", got)
			}
		})
	}
}

func TestAppendString(t *testing.T) {
	t.Parallel()
	got := string(apijson.AppendString([]byte("x:"), "a\"b\\c\n\x01é\xff<"))
	if want := `x:"a\"b\\c\n\u0001é` + "\uFFFD" + `<"`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestMarshalFloats: a double is always written with a decimal point or an
// exponent, as Python's json writes a float (clients check isinstance(x,
// float)).
func TestMarshalFloats(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   float64
		want string
	}{
		{0, "0.0"}, {1, "1.0"}, {-3, "-3.0"}, {0.7, "0.7"}, {1e21, "1e+21"}, {1e-7, "1e-7"}, {-2.5, "-2.5"},
		{123456789, "123456789.0"}, {1e20, "100000000000000000000.0"}, {math.Copysign(0, -1), "-0.0"},
	} {
		got, _ := apijson.Marshal(&soulv1.GovernanceResponse{Confidence: tc.in})
		var v struct {
			Confidence json.Number `json:"confidence"`
		}
		if err := json.Unmarshal(got, &v); err != nil {
			t.Fatalf("%v: %s", err, got)
		}
		if string(v.Confidence) != tc.want {
			t.Errorf("%v: got %s want %s", tc.in, v.Confidence, tc.want)
		}
	}
}

// TestMarshalFloatKinds: every kind of floating-point field gets the point;
// numbers inside google.protobuf.Value, which JSON gives no type, do not.
func TestMarshalFloatKinds(t *testing.T) {
	t.Parallel()
	result, err := structpb.NewValue(map[string]any{"count": 3, "ratio": 0.5})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		in   proto.Message
		want string
	}{
		{"optional double", &soulv1.GovernanceContext{Severity: proto.Float64(1)}, `{"reason":"","severity":1.0}`},
		{"nested doubles", &soulv1.Eigenvectors{Joy: 1}, `{"aesthetic":0.0,"categorical":0.0,"gratitude":0.0,"heterarchy":0.0,"generativity":0.0,"joy":1.0}`},
		{"double wrapper", wrapperspb.Double(2), `2.0`},
		{"float wrapper", wrapperspb.Float(0), `0.0`},
		{"float wrapper, fraction", wrapperspb.Float(0.1), `0.1`},
		{"Value numbers", &agentesev1.InvokeResponse{Result: result}, `"result":{"count":3,"ratio":0.5}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, _ := apijson.Marshal(tc.in)
			if !strings.Contains(string(got), tc.want) {
				t.Errorf("got %s, want it to contain %s", got, tc.want)
			}
		})
	}
}

func TestUnmarshal(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		body string
		into func() proto.Message
		want proto.Message
	}{
		{
			name: "enums case-insensitive with or without prefix, unknown fields ignored",
			body: `{"prompt":"hi","mode":"CHALLENGE","budget":"budget_whisper","observer":{"name":"x"},"extra":[1,{"a":null}]}`,
			into: func() proto.Message { return &soulv1.DialogueRequest{} },
			want: &soulv1.DialogueRequest{Prompt: "hi", Mode: soulv1.Mode_MODE_CHALLENGE, Budget: soulv1.Budget_BUDGET_WHISPER},
		},
		{
			name: "enum by number, json names accepted",
			body: `{"sessionId":"abc","mode":2,"stream":false}`,
			into: func() proto.Message { return &sessionsv1.SendMessageRequest{} },
			want: &sessionsv1.SendMessageRequest{SessionId: "abc", Mode: soulv1.Mode_MODE_ADVISE, Stream: proto.Bool(false)},
		},
		{
			name: "null leaves a field unset",
			body: `{"title":null,"mode":null}`,
			into: func() proto.Message { return &sessionsv1.CreateSessionRequest{} },
			want: &sessionsv1.CreateSessionRequest{},
		},
		{
			name: "quoted and float-form integers",
			body: `{"limit":"5","offset":2.0}`,
			into: func() proto.Message { return &sessionsv1.ListSessionsRequest{} },
			want: &sessionsv1.ListSessionsRequest{Limit: proto.Int32(5), Offset: 2},
		},
		{
			name: "integers in any exact form",
			body: `{"limit":"1.20e1","offset":-0.0}`,
			into: func() proto.Message { return &sessionsv1.ListSessionsRequest{} },
			want: &sessionsv1.ListSessionsRequest{Limit: proto.Int32(12)},
		},
		{
			name: "oneof member null is not given",
			body: `{"id":"1","chunk":null,"complete":{"tokens_used":3}}`,
			into: func() proto.Message { return &soulv1.StreamDialogueResponse{} },
			want: &soulv1.StreamDialogueResponse{Id: "1", Event: &soulv1.StreamDialogueResponse_Complete{Complete: &soulv1.DialogueComplete{TokensUsed: 3}}},
		},
		{
			name: "invalid UTF-8 and unpaired surrogates become U+FFFD",
			body: "{\"prompt\":\"a\xffb\\ud800c\"}",
			into: func() proto.Message { return &soulv1.DialogueRequest{} },
			want: &soulv1.DialogueRequest{Prompt: "a\uFFFDb\uFFFDc"},
		},
		{
			name: "struct kwargs and escapes",
			body: `{"path":"self.soul.challenge","kwargs":{"message":"caf\u00e9 \ud83d\ude00","n":1.5,"l":[true,null,"x"],"o":{}}}`,
			into: func() proto.Message { return &agentesev1.InvokeRequest{} },
			want: &agentesev1.InvokeRequest{Path: "self.soul.challenge", Kwargs: &structpb.Struct{Fields: map[string]*structpb.Value{
				"message": structpb.NewStringValue("café 😀"),
				"n":       structpb.NewNumberValue(1.5),
				"l": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{
					structpb.NewBoolValue(true), structpb.NewNullValue(), structpb.NewStringValue("x"),
				}}),
				"o": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{}}),
			}}},
		},
		{
			name: "nested message and optional double",
			body: ` {"action":"rm -rf /","context":{"reason":"cleanup","severity":0.9,"other":"ignored"}} `,
			into: func() proto.Message { return &soulv1.GovernanceRequest{} },
			want: &soulv1.GovernanceRequest{Action: "rm -rf /", Context: &soulv1.GovernanceContext{Reason: "cleanup", Severity: proto.Float64(0.9)}},
		},
		{
			name: "empty object and null body",
			body: `null`,
			into: func() proto.Message { return &soulv1.DialogueRequest{} },
			want: &soulv1.DialogueRequest{},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := tc.into()
			if err := apijson.Unmarshal([]byte(tc.body), got); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestUnmarshalErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		body string
		into proto.Message
		want string // substring of the error
	}{
		{"invalid enum names the field and the values", `{"prompt":"x","mode":"shout"}`, &soulv1.DialogueRequest{},
			"mode: Invalid mode 'shout'. Valid modes: reflect, advise, challenge, explore"},
		{"invalid budget", `{"budget":"huge"}`, &soulv1.DialogueRequest{}, "Valid budgets: dormant, whisper, dialogue, deep"},
		{"wrong type names the field", `{"prompt":42}`, &soulv1.DialogueRequest{}, "prompt: expected a string"},
		{"nested field path", `{"context":{"severity":"high"}}`, &soulv1.GovernanceRequest{}, "context.severity: expected a number"},
		{"int32 overflow", `{"limit":3000000000}`, &sessionsv1.ListSessionsRequest{}, "limit: integer out of range"},
		{"fractional integer", `{"limit":1.5}`, &sessionsv1.ListSessionsRequest{}, "limit: expected an integer"},
		{"bool as string", `{"stream":"no"}`, &sessionsv1.SendMessageRequest{}, "stream: expected true or false"},
		{"syntax error", `{"prompt":"x",}`, &soulv1.DialogueRequest{}, "not valid JSON"},
		{"truncated", `{"prompt":"x`, &soulv1.DialogueRequest{}, "not valid JSON"},
		{"trailing garbage", `{} {}`, &soulv1.DialogueRequest{}, "not valid JSON"},
		{"not an object", `["x"]`, &soulv1.DialogueRequest{}, "must be a JSON object"},
		{"control character in string", "{\"prompt\":\"a\x01\"}", &soulv1.DialogueRequest{}, "not valid JSON"},
		{"deep nesting", `{"kwargs":` + strings.Repeat(`{"a":`, 100) + `1` + strings.Repeat(`}`, 100) + `}`, &agentesev1.InvokeRequest{}, "nested deeper than 64"},
		{"deep nesting in unknown field", `{"x":` + strings.Repeat(`[`, 100) + strings.Repeat(`]`, 100) + `}`, &agentesev1.InvokeRequest{}, "nested deeper than 64"},
		{"struct must be an object", `{"kwargs":[1]}`, &agentesev1.InvokeRequest{}, "kwargs: expected an object"},
		{"bad literal", `{"stream":tru}`, &sessionsv1.SendMessageRequest{}, "not valid JSON"},
		{"syntax error says what and where", `{"prompt":"x",}`, &soulv1.DialogueRequest{}, "invalid character ',' at start of value (at byte 13)"},
		{"list element path", `{"messages":[{},{"content":1}]}`, &sessionsv1.ListMessagesResponse{}, "messages[1].content: expected a string"},
		{"field given twice", `{"prompt":"a","prompt":"b"}`, &soulv1.DialogueRequest{}, "prompt: field given more than once"},
		{"field given by both names", `{"session_id":"a","sessionId":"a"}`, &sessionsv1.SendMessageRequest{}, "session_id: field given more than once"},
		{"two members of a oneof", `{"chunk":{},"complete":{}}`, &soulv1.StreamDialogueResponse{}, "complete: only one of"},
		{"kwargs key given twice", `{"kwargs":{"a":1,"a":2}}`, &agentesev1.InvokeRequest{}, `kwargs: key "a" given more than once`},
		{"quoted integer with spaces", `{"limit":" 5"}`, &sessionsv1.ListSessionsRequest{}, "limit: expected an integer"},
		{"quoted integer with a plus", `{"limit":"+5"}`, &sessionsv1.ListSessionsRequest{}, "limit: expected an integer"},
		{"quoted float spelled as Go reads it", `{"context":{"severity":"inf"}}`, &soulv1.GovernanceRequest{}, "context.severity: expected a number"},
		{"timestamp past nanoseconds", `{"created_at":"2026-11-22T09:30:01.1234567891Z"}`, &sessionsv1.Session{}, "created_at: expected an RFC 3339 timestamp"},
		{"timestamp before year 1", `{"created_at":"0000-12-31T23:59:59Z"}`, &sessionsv1.Session{}, "created_at: timestamp out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := apijson.Unmarshal([]byte(tc.body), tc.into)
			if err == nil {
				t.Fatalf("want error containing %q, got nil", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !apijson.IsDecodeError(err) {
				t.Errorf("error %T is not a DecodeError", err)
			}
		})
	}
}

// TestUnmarshalReaderPassesReadErrors: a body over its size limit is the
// reader's error (the gateway answers 413 for it), not a DecodeError.
func TestUnmarshalReaderPassesReadErrors(t *testing.T) {
	t.Parallel()
	body := http.MaxBytesReader(nil, io.NopCloser(strings.NewReader(`{"prompt":"`+strings.Repeat("x", 100)+`"}`)), 50)
	err := apijson.UnmarshalReader(body, &soulv1.DialogueRequest{})
	var mbe *http.MaxBytesError
	if !errors.As(err, &mbe) || apijson.IsDecodeError(err) {
		t.Fatalf("got %v (%T), want the *http.MaxBytesError", err, err)
	}
}

func TestUnmarshalReaderEmptyBodyIsEOF(t *testing.T) {
	t.Parallel()
	err := apijson.UnmarshalReader(strings.NewReader("  \n"), &soulv1.DialogueRequest{})
	if !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want io.EOF", err)
	}
}

// TestUnmarshalRequired: a required field must be in the body with a value;
// given empty it is present.
func TestUnmarshalRequired(t *testing.T) {
	t.Parallel()
	opts := apijson.UnmarshalOptions{Required: []protoreflect.Name{"prompt"}}
	cases := []struct {
		name, body string
		ok         bool
	}{
		{"given", `{"prompt":"hi"}`, true},
		{"given empty", `{"prompt":"","mode":"advise"}`, true},
		{"given with a trailing field", `{"mode":"advise","prompt":"x"}`, true},
		{"empty object", `{}`, false},
		{"null", `{"prompt":null}`, false},
		{"null body", `null`, false},
		{"other fields only", `{"mode":"advise","promptx":"x"}`, false},
		{"empty body", ``, false},
		{"blank body", " \n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, err := range []error{
				opts.Unmarshal([]byte(tc.body), &soulv1.DialogueRequest{}),
				opts.UnmarshalReader(strings.NewReader(tc.body), &soulv1.DialogueRequest{}),
			} {
				if tc.ok {
					if err != nil {
						t.Errorf("got %v, want it accepted", err)
					}
					continue
				}
				var de *apijson.DecodeError
				if !errors.As(err, &de) || de.Field != "prompt" || de.Error() != "prompt: required field missing" {
					t.Errorf("got %v, want a DecodeError naming prompt", err)
				}
			}
		})
	}
	// Without options nothing is required, and an empty body is still io.EOF.
	if err := apijson.Unmarshal([]byte(`{}`), &soulv1.DialogueRequest{}); err != nil {
		t.Errorf("no options: %v", err)
	}
}

// TestRoundTripAgreesWithProtojson checks that what we write, protojson reads
// back to the same message (enums aside, which protojson spells differently).
func TestRoundTripAgreesWithProtojson(t *testing.T) {
	t.Parallel()
	msg := &sessionsv1.ListMessagesResponse{
		SessionId: "s",
		Total:     2,
		Messages: []*sessionsv1.Message{
			{Id: "m1", SessionId: "s", Content: "héllo \"there\"", TokensUsed: 3, CreatedAt: timestamppb.New(time.Unix(1700000000, 5000))},
		},
	}
	b, err := apijson.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	// Replace our enum spelling with protojson's before comparing.
	fixed := strings.ReplaceAll(string(b), `"role":"unspecified"`, `"role":"ROLE_UNSPECIFIED"`)
	var back sessionsv1.ListMessagesResponse
	if err := protojson.Unmarshal([]byte(fixed), &back); err != nil {
		t.Fatalf("protojson cannot read our output %s: %v", b, err)
	}
	if !proto.Equal(msg, &back) {
		t.Errorf("round trip changed the message:\n got %v\nwant %v", &back, msg)
	}
	var ours sessionsv1.ListMessagesResponse
	if err := apijson.Unmarshal(b, &ours); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(msg, &ours) {
		t.Errorf("our own round trip changed the message:\n got %v\nwant %v", &ours, msg)
	}
}
