package soul

import (
	"context"
	"testing"
)

func discardChunk(Chunk) error { return nil }

// BenchmarkTemplateStream is the hot path of the load test: one typical
// dialogue turn streamed word by word to a no-op sink.
func BenchmarkTemplateStream(b *testing.B) {
	cases := []struct {
		name string
		req  Request
	}{
		{"dialogue/reflect", Request{Message: "How do I decide between two options for my team?", Mode: reflect, Budget: dialogue}},
		{"dialogue/challenge", Request{Message: "I keep rewriting my framework instead of shipping, what should I do?", Mode: challenge, Budget: dialogue}},
		{"deep/explore", Request{Message: "agents talking over NATS to each other all day", Mode: explore, Budget: deep}},
		{"whisper/greeting", Request{Message: "hello there", Mode: reflect, Budget: whisper}},
	}
	e := NewTemplateEngine()
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Stream(ctx, c.req, discardChunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTemplateStreamCancelable measures the same turn under a
// cancelable context, as servers run it.
func BenchmarkTemplateStreamCancelable(b *testing.B) {
	e := NewTemplateEngine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := Request{Message: "How do I decide between two options for my team?", Mode: reflect, Budget: dialogue}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Stream(ctx, req, discardChunk); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGovernance(b *testing.B) {
	cases := []struct {
		name string
		req  GovernanceRequest
	}{
		{"dangerous", GovernanceRequest{Action: "rm -rf /production/database", Severity: 0.9, Budget: dialogue}},
		{"offline", GovernanceRequest{Action: "refactor the module to simplify the interface", Reason: "the team is overwhelmed", Severity: 0.5, Budget: dialogue}},
	}
	g := NewGovernor(nil)
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.Evaluate(ctx, c.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMatchPersona(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		MatchPersona("I keep rewriting my framework instead of shipping, what should I do about the complexity?")
	}
}
