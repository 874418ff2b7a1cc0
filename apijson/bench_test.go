package apijson_test

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// The hot request and response of the REST surface (POST /v1/soul/dialogue),
// a stored session (every session read), and an AGENTESE call with kwargs
// (google.protobuf.Struct).
var (
	benchDialogueResponse = &soulv1.DialogueResponse{
		Response: "You've expressed before that you value: minimalism. What about this connects?",
		Mode:     soulv1.Mode_MODE_REFLECT, TokensUsed: 44,
		Eigenvectors:          &soulv1.Eigenvectors{Aesthetic: 0.15, Categorical: 0.92, Gratitude: 0.78, Heterarchy: 0.88, Generativity: 0.9, Joy: 0.75},
		ReferencedPreferences: []string{"minimalism", "clarity"},
		Budget:                soulv1.Budget_BUDGET_DIALOGUE,
	}
	benchSession = &sessionsv1.Session{
		Id: "0b9d3c7e-6f0a-4c55-9a43-2f1a3e2d9b10", TenantId: "tenant-1", Title: proto.String("Morning pages"),
		AgentType: "kgent", Status: sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE, Mode: soulv1.Mode_MODE_ADVISE,
		MessageCount: 12, TokensUsed: 3400,
		CreatedAt:     timestamppb.New(time.Date(2026, 11, 22, 9, 30, 1, 123456000, time.UTC)),
		LastMessageAt: timestamppb.New(time.Date(2026, 11, 22, 10, 2, 0, 0, time.UTC)),
	}
	benchBodies = []struct {
		name string
		body string
		into proto.Message
	}{
		{"DialogueRequest", `{"prompt":"What should I focus on this week?","mode":"advise","budget":"dialogue"}`, &soulv1.DialogueRequest{}},
		{"Session", `{"id":"0b9d3c7e-6f0a-4c55-9a43-2f1a3e2d9b10","tenant_id":"tenant-1","title":"Morning pages","agent_type":"kgent","status":"active","mode":"advise","message_count":12,"tokens_used":3400,"created_at":"2026-11-22T09:30:01.123456+00:00","last_message_at":"2026-11-22T10:02:00.000000+00:00"}`, &sessionsv1.Session{}},
		{"InvokeRequest", `{"path":"self.soul.challenge","kwargs":{"message":"I think I should rewrite it all","depth":2,"tags":["a","b"],"strict":true}}`, &agentesev1.InvokeRequest{}},
	}
)

func BenchmarkUnmarshal(b *testing.B) {
	for _, bb := range benchBodies {
		b.Run(bb.name, func(b *testing.B) {
			body := []byte(bb.body)
			b.ReportAllocs()
			for b.Loop() {
				if err := apijson.Unmarshal(body, bb.into); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnmarshalReader is the REST path: grpc-gateway hands the
// decoder the request body as a reader.
func BenchmarkUnmarshalReader(b *testing.B) {
	body := []byte(benchBodies[0].body)
	var req soulv1.DialogueRequest
	var r bytes.Reader
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(body)
		if err := apijson.UnmarshalReader(&r, &req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal(b *testing.B) {
	result, _ := structpb.NewValue(map[string]any{"entropy": 0.42, "seeds": []any{"a", "b"}, "fresh": true})
	for _, bm := range []struct {
		name string
		msg  proto.Message
	}{
		{"DialogueResponse", benchDialogueResponse},
		{"Session", benchSession},
		{"InvokeResponse", &agentesev1.InvokeResponse{Path: "void.entropy.sip", Result: result, TokensUsed: 3}},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := apijson.Marshal(bm.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkProtojson is the reference: protojson with the options closest to
// the API's form, on the hot request and response.
func BenchmarkProtojson(b *testing.B) {
	b.Run("Marshal/DialogueResponse", func(b *testing.B) {
		opts := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := opts.Marshal(benchDialogueResponse); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unmarshal/DialogueRequest", func(b *testing.B) {
		body := []byte(`{"prompt":"What should I focus on this week?","mode":"MODE_ADVISE","budget":"BUDGET_DIALOGUE"}`)
		var req soulv1.DialogueRequest
		b.ReportAllocs()
		for b.Loop() {
			if err := protojson.Unmarshal(body, &req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
