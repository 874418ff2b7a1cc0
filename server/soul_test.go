package server_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kgents/kgents-go/apijson"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/soul"
)

type dialogue struct {
	Response              string             `json:"response"`
	Mode                  string             `json:"mode"`
	Budget                string             `json:"budget"`
	Eigenvectors          map[string]float64 `json:"eigenvectors"`
	TokensUsed            int                `json:"tokens_used"`
	ReferencedPreferences []string           `json:"referenced_preferences"`
	ReferencedPatterns    []string           `json:"referenced_patterns"`
}

type verdict struct {
	Approved       bool     `json:"approved"`
	Reasoning      string   `json:"reasoning"`
	Alternatives   []string `json:"alternatives"`
	Confidence     float64  `json:"confidence"`
	TokensUsed     int      `json:"tokens_used"`
	Recommendation string   `json:"recommendation"`
	Principles     []string `json:"principles"`
}

// TestSoulREST ports the Python test_soul behaviours (status codes per SPEC).
func TestSoulREST(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})

	t.Run("dialogue basic", func(t *testing.T) {
		t.Parallel()
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"I am not sure whether to keep this side project going","mode":"reflect"}`)
		mustStatus(t, resp, b, 200)
		d := decode[dialogue](t, b)
		if d.Response == "" || d.Mode != "reflect" || d.TokensUsed < 0 || len(d.Eigenvectors) != 6 || d.Eigenvectors["categorical"] != 0.92 {
			t.Errorf("dialogue = %+v", d)
		}
		if d.ReferencedPatterns == nil || d.ReferencedPreferences == nil {
			t.Errorf("referenced lists must be arrays, not null: %s", b)
		}
		if !strings.HasSuffix(resp.Header.Get("X-Response-Time"), "ms") {
			t.Errorf("X-Response-Time = %q", resp.Header.Get("X-Response-Time"))
		}
	})
	t.Run("every mode echoes", func(t *testing.T) {
		t.Parallel()
		for _, m := range []string{"reflect", "advise", "challenge", "explore"} {
			resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"help me think about my week","mode":"`+strings.ToUpper(m)+`"}`)
			mustStatus(t, resp, b, 200)
			if d := decode[dialogue](t, b); d.Mode != m {
				t.Errorf("mode %s echoed as %s", m, d.Mode)
			}
		}
	})
	t.Run("invalid mode and budget are 400 naming them", func(t *testing.T) {
		t.Parallel()
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"x","mode":"yell"}`)
		mustStatus(t, resp, b, 400)
		if !strings.Contains(decodeErr(t, b).Detail, "mode") {
			t.Errorf("%s", b)
		}
		resp, b = in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"x","budget":"infinite"}`)
		mustStatus(t, resp, b, 400)
		if !strings.Contains(decodeErr(t, b).Detail, "budget") {
			t.Errorf("%s", b)
		}
	})
	t.Run("budget tiers", func(t *testing.T) {
		t.Parallel()
		cases := []struct {
			key, budget string
			want        int
			applied     string
		}{
			{alice, "", 200, "whisper"}, // FREE defaults to whisper (not dialogue, the Python defect)
			{alice, "dormant", 200, "dormant"},
			{alice, "whisper", 200, "whisper"},
			{alice, "dialogue", 403, ""},
			{alice, "deep", 403, ""},
			{bob, "", 200, "dialogue"},
			{bob, "dormant", 200, "dormant"},
			{bob, "dialogue", 200, "dialogue"},
			{bob, "deep", 403, ""},
			{carol, "", 200, "deep"},
			{carol, "deep", 200, "deep"},
		}
		for _, tc := range cases {
			body := `{"prompt":"what matters most this month?"`
			if tc.budget != "" {
				body += `,"budget":"` + tc.budget + `"`
			}
			resp, b := in.Do(t, "POST", "/v1/soul/dialogue", tc.key, body+"}")
			if resp.StatusCode != tc.want {
				t.Errorf("%s budget %q: %d, want %d: %s", tc.key, tc.budget, resp.StatusCode, tc.want, b)
				continue
			}
			if tc.want == 403 && !strings.Contains(decodeErr(t, b).Detail, "not available") {
				t.Errorf("403 detail: %s", b)
			}
			if tc.want == 200 && decode[dialogue](t, b).Budget != tc.applied {
				t.Errorf("%s budget %q applied %q, want %q", tc.key, tc.budget, decode[dialogue](t, b).Budget, tc.applied)
			}
		}
	})
	t.Run("governance", func(t *testing.T) {
		t.Parallel()
		resp, b := in.Do(t, "POST", "/v1/soul/governance", bob, `{"action":"delete temporary files"}`)
		mustStatus(t, resp, b, 200)
		v := decode[verdict](t, b)
		if v.Approved || v.Recommendation != "escalate" || v.Confidence < 0 || v.Confidence > 1 || v.Reasoning == "" {
			t.Errorf("delete temporary files = %+v", v)
		}
		resp, b = in.Do(t, "POST", "/v1/soul/governance", bob, `{"action":"rm -rf /production/database","context":{"reason":"cleanup","severity":0.9}}`)
		mustStatus(t, resp, b, 200)
		v = decode[verdict](t, b)
		if v.Approved || (v.Recommendation != "reject" && v.Recommendation != "escalate") || len(v.Principles) == 0 || v.Principles[0] != "SAFETY_OVERRIDE" {
			t.Errorf("dangerous action = %+v", v)
		}
		resp, b = in.Do(t, "POST", "/v1/soul/governance", bob, `{"action":"add more information to the README","context":{"reason":"docs"},"budget":"dialogue"}`)
		mustStatus(t, resp, b, 200)
		if v := decode[verdict](t, b); v.Reasoning == "" || v.Alternatives == nil || contains(v.Principles, "SAFETY_OVERRIDE") {
			t.Errorf("'information' must not match 'format': %+v", v)
		}
		for _, tc := range []struct {
			key, body string
			want      int
		}{
			{"", `{"action":"x"}`, 401},
			{"kg_invalid", `{"action":"x"}`, 401},
			{alice, `{"action":"x","budget":"deep"}`, 403},
			{bob, `{"action":""}`, 400},
			{bob, `{"action":"x","context":{"severity":3}}`, 400},
		} {
			resp, b := in.Do(t, "POST", "/v1/soul/governance", tc.key, tc.body)
			if resp.StatusCode != tc.want {
				t.Errorf("governance %s %s: %d, want %d: %s", tc.key, tc.body, resp.StatusCode, tc.want, b)
			}
		}
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestSSEFramingByteForByte compares a streamed dialogue with the exact
// bytes the template engine's reply must produce.
func TestSSEFramingByteForByte(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "SSE_HEARTBEAT": "1h"})
	prompt := "I keep polishing the interface"
	reply, err := soul.NewTemplateEngine().Stream(context.Background(), soul.Request{
		Message: prompt, Mode: soulv1.Mode_MODE_CHALLENGE, Budget: soulv1.Budget_BUDGET_DIALOGUE,
	}, func(soul.Chunk) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	want.WriteString(": ping\n\n")
	id := 0
	_, _ = soul.NewTemplateEngine().Stream(context.Background(), soul.Request{
		Message: prompt, Mode: soulv1.Mode_MODE_CHALLENGE, Budget: soulv1.Budget_BUDGET_DIALOGUE,
	}, func(c soul.Chunk) error {
		id++
		want.WriteString("id: " + strconv.Itoa(id) + "\nevent: chunk\ndata: ")
		want.Write(apijson.AppendMessage(nil, &soulv1.DialogueChunk{Text: c.Text, Index: int32(c.Index)}))
		want.WriteString("\n\n")
		return nil
	})
	id++
	want.WriteString("id: " + strconv.Itoa(id) + "\nevent: complete\ndata: ")
	want.Write(apijson.AppendMessage(nil, &soulv1.DialogueComplete{
		Text: reply.Text, TokensUsed: int32(reply.TokensUsed()), Chunks: int32(reply.Chunks),
		Mode: soulv1.Mode_MODE_CHALLENGE, Budget: soulv1.Budget_BUDGET_DIALOGUE,
	}))
	want.WriteString("\n\n")

	resp := in.Stream(t, "POST", "/v1/soul/dialogue:stream", bob, `{"prompt":"`+prompt+`","mode":"challenge"}`)
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("SSE bytes differ.\n got: %q\nwant: %q", got, want.Bytes())
	}
	if reply.Chunks < 3 {
		t.Errorf("expected a multi-word reply, got %d chunks", reply.Chunks)
	}
}

// TestHeartbeats: a comment every SSE_HEARTBEAT while a reply is slow.
func TestHeartbeats(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "SSE_HEARTBEAT": "0.1", "SOUL_CHUNK_DELAY": "150ms"})
	resp := in.Stream(t, "POST", "/v1/soul/dialogue:stream", bob, `{"prompt":"Tell me about the tradeoffs of rewriting this service","mode":"explore"}`)
	r := servertest.NewSSEReader(resp.Body)
	events := r.ReadAll(t)
	if events[len(events)-1].Name != "complete" || r.Comments < 3 {
		t.Errorf("%d events, %d heartbeats (want several)", len(events), r.Comments)
	}
}

// TestLLMEngineFromEnv: with LLM_ENDPOINT set, replies come from the model
// (a real HTTP server speaking the chat-completions stream) with its token usage.
func TestLLMEngineFromEnv(t *testing.T) {
	t.Parallel()
	llm := servertest.StartFakeLLM(t, "Ship the smallest version first.", 0)
	in := servertest.Start(t, map[string]string{
		"NATS_ENABLED": "false", "LLM_ENDPOINT": llm.URL, "LLM_MODEL": "test-model", "LLM_API_KEY": "sk-test",
	})
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"What should I do first?","mode":"advise"}`)
	mustStatus(t, resp, b, 200)
	d := decode[dialogue](t, b)
	if d.Response != "Ship the smallest version first." || d.TokensUsed != 37+5 {
		t.Errorf("dialogue via LLM = %+v", d)
	}
	reqs := llm.Requests()
	if len(reqs) != 1 || reqs[0]["model"] != "test-model" || reqs[0]["stream"] != true {
		t.Fatalf("LLM requests = %v", reqs)
	}
	if temp, _ := reqs[0]["temperature"].(float64); temp != 0.5 {
		t.Errorf("advise temperature = %v, want 0.5", reqs[0]["temperature"])
	}
	_, b = in.Do(t, "GET", "/health", "", "")
	if !strings.Contains(string(b), `"engine":"openai"`) || !strings.Contains(string(b), `"has_llm":true`) {
		t.Errorf("/health = %s", b)
	}
	// The dormant budget never calls the model.
	resp, b = in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"hello","budget":"dormant"}`)
	mustStatus(t, resp, b, http.StatusOK)
	if len(llm.Requests()) != 1 {
		t.Errorf("dormant budget reached the model")
	}
	_ = time.Second
}
