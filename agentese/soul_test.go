package agentese_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/agentese"
)

// challengeClose ends every composed challenge of the template engine.
const challengeClose = "What would you tell someone else in this position?"

// TestSoulChallengeIsReal: the flagship example the Python service answered
// with 403 returns K-gent's challenge, with real tokens.
func TestSoulChallengeIsReal(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	res, err := reg.Invoke(ctxAs(t, bob), agentese.Request{Path: "self.soul.challenge",
		Kwargs: kwargs(t, `{"message": "I think we should rewrite the whole service in a weekend"}`)})
	if err != nil {
		t.Fatal(err)
	}
	v := res.Value
	if strField(v, "mode") != "challenge" || !strings.Contains(strField(v, "response"), challengeClose) {
		t.Fatalf("not a challenge: %v", v)
	}
	if res.TokensUsed <= 0 || numField(v, "tokens_used") != float64(res.TokensUsed) {
		t.Fatalf("tokens: result %v, reported %d", field(v, "tokens_used"), res.TokensUsed)
	}
	if strField(v, "budget") != "dialogue" { // PRO's default
		t.Fatalf("budget: %v", field(v, "budget"))
	}
	if ev := field(v, "eigenvectors").GetStructValue().GetFields(); len(ev) != 6 || ev["categorical"].GetNumberValue() <= 0 {
		t.Fatalf("eigenvectors: %v", ev)
	}
	if mode := invokeOK(t, reg, ctxAs(t, bob), "self.soul.mode", "", ""); strField(mode, "mode") != "challenge" {
		t.Fatalf("self.soul.mode after a challenge: %v", mode)
	}
}

func TestSoulModesAndBudgets(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	for _, mode := range []string{"reflect", "advise", "challenge", "explore"} {
		v := invokeOK(t, reg, ctxAs(t, carol), "self.soul."+mode, "", `{"message": "should I take the new job offer in another city"}`)
		if strField(v, "mode") != mode || strField(v, "response") == "" || strField(v, "budget") != "deep" {
			t.Errorf("self.soul.%s: %v", mode, v)
		}
	}
	if v := invokeOK(t, reg, ctxAs(t, bob), "self.soul.dialogue", "", `{"message": "hmm", "mode": "Explore", "budget": "whisper"}`); strField(v, "mode") != "explore" || strField(v, "budget") != "whisper" {
		t.Errorf("dialogue with mode and budget: %v", v)
	}
	if v := invokeOK(t, reg, ctxAs(t, alice), "self.soul.dialogue", "", `{"message": "hello"}`); strField(v, "budget") != "whisper" {
		t.Errorf("FREE default budget: %v", v)
	}
	// The Soul service's budget policy refuses, and its status passes through.
	for key, budget := range map[string]string{alice: "dialogue", bob: "deep"} {
		_, err := reg.Invoke(ctxAs(t, key), agentese.Request{Path: "self.soul.reflect", Kwargs: kwargs(t, `{"message": "hi", "budget": "`+budget+`"}`)})
		if st, ok := status.FromError(err); !ok || st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "not available") {
			t.Errorf("%s with budget %s: %v", key, budget, err)
		}
	}
	if _, err := reg.Invoke(ctxAs(t, bob), agentese.Request{Path: "self.soul.reflect", Kwargs: kwargs(t, `{"message": "`+strings.Repeat("x", 32<<10+1)+`"}`)}); agentese.KindOf(err) != agentese.KindArgument {
		t.Errorf("message over 32 KiB: %v", err)
	}
}

func TestSoulGovernanceAndJudgment(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ctx := ctxAs(t, bob)
	v := invokeOK(t, reg, ctx, "self.soul.governance", "", `{"action": "rm -rf /production/database", "context": {"reason": "cleanup", "severity": 0.9}}`)
	if field(v, "approved").GetBoolValue() || strField(v, "recommendation") != "escalate" {
		t.Fatalf("dangerous action: %v", v)
	}
	invokeOK(t, reg, ctx, "self.judgment.evaluate", "", `{"action": "write a haiku about minimal design"}`)
	j := invokeOK(t, reg, ctx, "self.judgment.manifest", "", "")
	verdicts := field(j, "verdicts").GetListValue().GetValues()
	if len(verdicts) != 2 || strField(verdicts[1], "action") != "rm -rf /production/database" || numField(field(j, "counts"), "escalate") < 1 {
		t.Fatalf("judgment log: %v", j)
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "self.soul.governance", Kwargs: kwargs(t, `{"action": "  "}`)}); agentese.KindOf(err) != agentese.KindArgument {
		t.Fatalf("blank action: %v", err)
	}
}

func TestSoulStream(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	sink := &sinkRecorder{}
	res, err := reg.InvokeStream(ctxAs(t, bob), agentese.Request{Path: "self.soul.dialogue",
		Kwargs: kwargs(t, `{"message": "I keep postponing the hard conversation with my cofounder", "mode": "challenge"}`)}, sink)
	if err != nil {
		t.Fatal(err)
	}
	if sink.opens != 1 || len(sink.chunks) < 3 || !res.Streamed {
		t.Fatalf("opens %d, %d chunks, streamed %v", sink.opens, len(sink.chunks), res.Streamed)
	}
	if strings.Join(sink.chunks, "") != strField(res.Value, "response") || numField(res.Value, "chunks") != float64(len(sink.chunks)) {
		t.Fatalf("chunks %q do not make the response %q", sink.chunks, strField(res.Value, "response"))
	}
	if res.TokensUsed <= 0 || numField(res.Value, "tokens_used") != float64(res.TokensUsed) || strField(res.Value, "mode") != "challenge" {
		t.Fatalf("result %v, tokens %d", res.Value, res.TokensUsed)
	}

	// Refused by the Soul service's budget policy: before the sink opens.
	sink = &sinkRecorder{}
	_, err = reg.InvokeStream(ctxAs(t, bob), agentese.Request{Path: "self.soul.dialogue", Kwargs: kwargs(t, `{"message": "hi", "budget": "deep"}`)}, sink)
	if status.Code(err) != codes.PermissionDenied || sink.opens != 0 {
		t.Fatalf("deep for PRO: %v, opened %d times", err, sink.opens)
	}
	// Refused by AGENTESE itself: before the sink opens.
	_, err = reg.InvokeStream(ctxAs(t, bob), agentese.Request{Path: "self.soul.dialogue"}, sink)
	if agentese.KindOf(err) != agentese.KindArgument || sink.opens != 0 {
		t.Fatalf("no message: %v, opened %d times", err, sink.opens)
	}
	// A non-streaming aspect: runs, then opens, no chunks.
	res, err = reg.InvokeStream(ctxAs(t, bob), agentese.Request{Path: "world.house.manifest"}, sink)
	if err != nil || sink.opens != 1 || len(sink.chunks) != 0 || res.Streamed || strField(res.Value, "entity") != "house" {
		t.Fatalf("non-streaming aspect: %v, opens %d, %d chunks", err, sink.opens, len(sink.chunks))
	}
	// A sink that cannot open (the caller left) stops the stream.
	gone := errors.New("gone")
	if _, err := reg.InvokeStream(ctxAs(t, bob), agentese.Request{Path: "self.soul.reflect", Kwargs: kwargs(t, `{"message": "hi"}`)},
		&sinkRecorder{openErr: gone}); !errors.Is(err, gone) {
		t.Fatalf("open failure: %v", err)
	}
}

func TestSoulWithoutBackend(t *testing.T) {
	t.Parallel()
	reg := agentese.DefaultRegistry(nil)
	_, err := reg.Invoke(ctxAs(t, bob), agentese.Request{Path: "self.soul.challenge", Kwargs: kwargs(t, `{"message": "hi"}`)})
	if agentese.KindOf(err) != agentese.KindUnavailable {
		t.Fatalf("no soul: %v", err)
	}
	if m := invokeOK(t, reg, ctxAs(t, bob), "self.soul.manifest", "", ""); field(m, "available").GetBoolValue() {
		t.Fatalf("manifest says available: %v", m)
	}
}
