package soul

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

const (
	recApprove  = soulv1.Recommendation_RECOMMENDATION_APPROVE
	recReject   = soulv1.Recommendation_RECOMMENDATION_REJECT
	recEscalate = soulv1.Recommendation_RECOMMENDATION_ESCALATE
)

func TestIsDangerousAction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		action    string
		dangerous bool
	}{
		// Keywords, whole words, any case, punctuation trimmed.
		{"delete temporary files", true},
		{"DELETE FROM users", true},
		{"please remove the old branch", true},
		{"drop the staging table", true},
		{"truncate logs", true},
		{"destroy the cluster", true},
		{"rmdir build", true},
		{"deploy to production, today", true},
		{"deploy to prod.", true},
		{"sudo apt-get upgrade", true},
		{"rotate the password", true},
		{"print the secret", true},
		{"refresh the token", true},
		{"store credentials in vault", true},
		{"set api_key in config", true},
		{"export APIKEY=x", true},
		{"set the API key", true},
		{"read DB_PASSWORD from env", true},
		{"format the disk", true},
		{"wipe the cache", true},
		{"purge the queue", true},
		{"erase history", true},
		{"force the merge", true},
		{"deleted rows should be audited", true},
		// Paths and identifiers are split further.
		{"rm -rf /production/database", true},
		{"backup /production/database", true},
		{"connect to prodDB", true},
		{"restart prod1", true},
		{"cat config/credentials.json", true},
		{"call getToken()", true},
		// Flags match a whole token exactly.
		{"git push -f", true},
		{"git push --force origin main", true},
		{"git push --force-with-lease", true},
		{"git reset --hard HEAD~3", true},
		{"tail -f app.log", true},
		{"cp -rf a b", true},
		// Phrases of consecutive tokens.
		{"rm -r build", true},
		{"rm -fr build", true},
		{"rm build.log", true},
		{"del /f report.txt", true},
		{"git clean -fdx", true},
		{"chmod -R 777 /var/www", true},
		{"chmod 777 script.sh", true},
		// Safe: no whole-word match, however close the substring.
		{"deploy new feature", false},
		{"share information with the team", false}, // "format" inside "information"
		{"reformat the paragraph", false},          // not "format"
		{"update the product page", false},         // not "prod"
		{"reproduce the bug", false},               // not "prod"
		{"improve the tokenizer", false},           // not "token"
		{"check the deleter module docs", false},   // "deleter" is not listed
		{"paint the farm red", false},              // not "rm"
		{"git push origin main", false},            // no force flag
		{"grep -F pattern file", false},            // -F is not -f
		{"git commit -m 'fix typo'", false},        // no dangerous flag
		{"use a pseudonym", false},                 // not "sudo"
		{"write a secretary guide", false},         // not "secret"
		{"add a dropdown menu", false},             // not "drop"
		{"review the forceful argument", false},    // not "force"
		{"document the keyboard shortcuts", false}, // not "key" phrase
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			t.Parallel()
			if got := IsDangerousAction(tt.action); got != tt.dangerous {
				t.Errorf("IsDangerousAction(%q) = %v, want %v", tt.action, got, tt.dangerous)
			}
		})
	}
}

func TestSplitWords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want []string
	}{
		{"/production/database", []string{"production", "database"}},
		{"DB_PASSWORD", []string{"db", "password"}},
		{"prodDB", []string{"prod", "db"}},
		{"prod1", []string{"prod", "1"}},
		{"information", []string{"information"}},
		{"API-Key", []string{"api", "key"}},
		{"Straße.löschen", []string{"straße", "löschen"}},
	}
	for _, tt := range tests {
		if got := splitWords(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// wantDangerousVerdict is the fixed verdict for dangerous actions.
func wantDangerousVerdict(t *testing.T, v Verdict) {
	t.Helper()
	if v.Approved || v.Recommendation != recEscalate || v.Confidence != 0 ||
		!slices.Equal(v.Principles, []string{"SAFETY_OVERRIDE"}) ||
		v.Reasoning != "This operation contains dangerous keywords and cannot be auto-approved." ||
		!slices.Equal(v.Alternatives, escalateAlternatives) || v.TokensUsed != 0 {
		t.Errorf("verdict = %+v, want the SAFETY_OVERRIDE escalation", v)
	}
}

func TestGovernorDangerousAlwaysEscalated(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
		_, _ = w.Write([]byte(completionJSON("RECOMMENDATION: approve\nCONFIDENCE: 1.0", 1, 1)))
	})
	llm := newTestOpenAI(t, f, 5*time.Second)
	for _, g := range []Governor{NewGovernor(nil), NewGovernor(NewTemplateEngine()), NewGovernor(llm)} {
		for _, action := range []string{"delete temporary files", "rm -rf /production/database", "git push -f"} {
			v, err := g.Evaluate(bg, GovernanceRequest{Action: action, Severity: 0.1, Budget: dialogue})
			if err != nil {
				t.Fatal(err)
			}
			wantDangerousVerdict(t, v)
		}
	}
	if n := len(f.recorded()); n != 0 {
		t.Errorf("the model was asked %d times about dangerous actions", n)
	}
}

func TestGovernorOffline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		req        GovernanceRequest
		approved   bool
		confidence float64
		principles []string
		reasoning  string
	}{
		{
			name:      "no matches",
			req:       GovernanceRequest{Action: "deploy new feature", Severity: 0.5},
			reasoning: "K-gent analysis of: 'deploy new feature'. No strong matches found. Human judgment needed.",
		},
		{
			name:       "below threshold",
			req:        GovernanceRequest{Action: "refactor the module to simplify the interface"},
			confidence: 0.65,
			principles: []string{"Composable", "Curated"},
			reasoning: "K-gent analysis of: 'refactor the module to simplify the interface'. Principles: Composable, Curated. " +
				"Patterns: tends to over-engineer before shipping. Confidence 0.65 is below the 0.80 needed to approve offline. Human judgment needed.",
		},
		{
			name:       "exactly 0.8 approves",
			req:        GovernanceRequest{Action: "simplify the refactor", Reason: "I am overwhelmed"},
			approved:   true,
			confidence: 0.8,
			principles: []string{"Curated", "Composable"},
			reasoning: "K-gent analysis of: 'simplify the refactor'. Principles: Curated, Composable. " +
				"Patterns: tends to over-engineer before shipping; says yes to too many commitments. Strong alignment (confidence 0.80): approved.",
		},
		{
			name:       "0.75 does not",
			req:        GovernanceRequest{Action: "simplify the interface, create a prototype framework"},
			confidence: 0.75,
			principles: []string{"Curated", "Composable", "Generative"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v, err := NewGovernor(nil).Evaluate(bg, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if v.Approved != tt.approved || v.Confidence != tt.confidence || !sameStrings(v.Principles, tt.principles) {
				t.Errorf("verdict = %+v", v)
			}
			wantRec, wantAlt := recEscalate, escalateAlternatives
			if tt.approved {
				wantRec, wantAlt = recApprove, nil
			}
			if v.Recommendation != wantRec || !sameStrings(v.Alternatives, wantAlt) || v.Alternatives == nil || v.Principles == nil {
				t.Errorf("recommendation/alternatives = %v/%q", v.Recommendation, v.Alternatives)
			}
			if tt.reasoning != "" && v.Reasoning != tt.reasoning {
				t.Errorf("reasoning = %q\nwant        %q", v.Reasoning, tt.reasoning)
			}
			if v.TokensUsed != 0 {
				t.Errorf("offline verdict used %d tokens", v.TokensUsed)
			}
		})
	}
}

func TestOfflineConfidence(t *testing.T) {
	t.Parallel()
	tests := []struct{ principles, patterns, want int }{
		{0, 0, 0}, {1, 0, 25}, {2, 0, 50}, {3, 0, 60}, {7, 0, 60},
		{0, 1, 15}, {0, 3, 40}, {2, 2, 80}, {3, 2, 90}, {3, 3, 100},
	}
	for _, tt := range tests {
		if got := offlineConfidence(tt.principles, tt.patterns); got != tt.want {
			t.Errorf("offlineConfidence(%d, %d) = %d, want %d", tt.principles, tt.patterns, got, tt.want)
		}
	}
}

func TestAlternativesAreCopies(t *testing.T) {
	t.Parallel()
	v, _ := NewGovernor(nil).Evaluate(bg, GovernanceRequest{Action: "drop it"})
	v.Alternatives[0] = "mutated"
	if escalateAlternatives[0] != "Get explicit confirmation from stakeholders" {
		t.Error("a verdict shares the package's alternatives")
	}
}

func TestGovernorContextDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := NewGovernor(nil).Evaluate(ctx, GovernanceRequest{Action: "deploy"}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestGovernorWithModel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		answer     string // model text; "" = server answers 500
		budget     soulv1.Budget
		approved   bool
		rec        soulv1.Recommendation
		confidence float64
		principles []string
		reasoning  string
		tokens     int
		calls      int
	}{
		{
			name:   "approve",
			answer: "RECOMMENDATION: approve\nCONFIDENCE: 0.9\nPRINCIPLES: Composable, Tasteful\nREASONING: Small and reversible.",
			budget: dialogue, approved: true, rec: recApprove, confidence: 0.9,
			principles: []string{"Composable", "Tasteful"}, reasoning: "Small and reversible.", tokens: 120, calls: 1,
		},
		{
			name:   "low-confidence approval escalates",
			answer: "RECOMMENDATION: approve\nCONFIDENCE: 0.6\nPRINCIPLES: Generative\nREASONING: Probably fine.",
			budget: deep, rec: recEscalate, confidence: 0.6, principles: []string{"Generative"}, reasoning: "Probably fine.", tokens: 120, calls: 1,
		},
		{
			name:   "reject",
			answer: "RECOMMENDATION: reject\nCONFIDENCE: 0.8\nPRINCIPLES: Ethical\nREASONING: Harms users.",
			budget: whisper, rec: recReject, confidence: 0.8, principles: []string{"Ethical"}, reasoning: "Harms users.", tokens: 120, calls: 1,
		},
		{
			name:   "unreadable answer escalates",
			answer: "I think this is fine!",
			budget: dialogue, rec: recEscalate, reasoning: "No reasoning provided", tokens: 120, calls: 1,
		},
		{
			name:   "model failure falls back",
			budget: dialogue, rec: recEscalate, principles: []string{"ERROR_FALLBACK"},
			reasoning: "The governance model could not be reached; escalating for human review.", calls: 1,
		},
		{
			name:   "dormant stays offline",
			answer: "RECOMMENDATION: approve\nCONFIDENCE: 1.0",
			budget: dormant, rec: recEscalate,
			reasoning: "K-gent analysis of: 'add a changelog entry'. No strong matches found. Human judgment needed.", calls: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
				if tt.answer == "" {
					http.Error(w, `{"error":{"message":"boom `+testAPIKey+`"}}`, http.StatusInternalServerError)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(completionJSON(tt.answer, 100, 20)))
			})
			g := NewGovernor(newTestOpenAI(t, f, 5*time.Second))
			v, err := g.Evaluate(bg, GovernanceRequest{Action: "add a changelog entry", Reason: "release notes", Severity: 0.3, Budget: tt.budget})
			if err != nil {
				t.Fatal(err)
			}
			if v.Approved != tt.approved || v.Recommendation != tt.rec || v.Confidence != tt.confidence ||
				!sameStrings(v.Principles, tt.principles) || v.Reasoning != tt.reasoning || v.TokensUsed != tt.tokens {
				t.Errorf("verdict = %+v", v)
			}
			if want := alternativesFor(tt.rec); !sameStrings(v.Alternatives, want) {
				t.Errorf("alternatives = %q, want %q", v.Alternatives, want)
			}
			reqs := f.recorded()
			if len(reqs) != tt.calls {
				t.Fatalf("model called %d times, want %d", len(reqs), tt.calls)
			}
			if tt.calls == 0 {
				return
			}
			b := reqs[0].Body
			if b["temperature"] != 0.2 || b["max_tokens"] != 500.0 || b["stream"] == true || b["model"] != "test-model" {
				t.Errorf("request temperature/max_tokens/stream/model = %v/%v/%v/%v", b["temperature"], b["max_tokens"], b["stream"], b["model"])
			}
			msgs := b["messages"].([]any)
			user := msgs[len(msgs)-1].(map[string]any)["content"].(string)
			for _, want := range []string{"Action: add a changelog entry", "Reason: release notes", "Severity: 0.30"} {
				if !strings.Contains(user, want) {
					t.Errorf("prompt %q lacks %q", user, want)
				}
			}
			if system := msgs[0].(map[string]any)["content"].(string); !strings.Contains(system, "RECOMMENDATION:") {
				t.Errorf("system prompt lacks the answer format: %q", system)
			}
		})
	}
}

func TestGovernorModelTimeoutFallsBack(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, func(_ http.ResponseWriter, r *http.Request, f *fakeLLM) {
		select {
		case <-r.Context().Done():
		case <-f.release:
		}
	})
	g := NewGovernor(newTestOpenAI(t, f, 100*time.Millisecond))
	v, err := g.Evaluate(bg, GovernanceRequest{Action: "add a changelog entry", Budget: dialogue})
	if err != nil {
		t.Fatal(err)
	}
	if v.Approved || !slices.Equal(v.Principles, []string{PrincipleErrorFallback}) || v.Recommendation != recEscalate {
		t.Errorf("verdict = %+v, want ERROR_FALLBACK escalation", v)
	}
}

func TestParseModelVerdict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		text       string
		rec        soulv1.Recommendation
		confidence float64
		principles []string
		reasoning  string
	}{
		{"empty", "", recEscalate, 0, nil, "No reasoning provided"},
		{"markdown", "**RECOMMENDATION:** Approve\n**CONFIDENCE:** 0.85\n- PRINCIPLES: Curated, Joy-Inducing\n**REASONING:** Fine.",
			recApprove, 0.85, []string{"Curated", "Joy-Inducing"}, "Fine."},
		{"percent and multi-line reasoning", "recommendation: reject\nconfidence: 95%\nprinciples: none\nreasoning: First line.\nSecond line.\n",
			recReject, 0.95, nil, "First line. Second line."},
		{"clamped", "RECOMMENDATION: approve\nCONFIDENCE: 7", recApprove, 1, nil, "No reasoning provided"},
		{"negative", "RECOMMENDATION: approve\nCONFIDENCE: -1", recEscalate, 0, nil, "No reasoning provided"},
		{"nan", "RECOMMENDATION: approve\nCONFIDENCE: NaN", recEscalate, 0, nil, "No reasoning provided"},
		{"review is escalate", "RECOMMENDATION: review\nCONFIDENCE: 0.9", recEscalate, 0.9, nil, "No reasoning provided"},
		{"approve at 0.7", "RECOMMENDATION: approved.\nCONFIDENCE: 0.7", recApprove, 0.7, nil, "No reasoning provided"},
		{"approve below 0.7", "RECOMMENDATION: approve\nCONFIDENCE: 0.69", recEscalate, 0.69, nil, "No reasoning provided"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := parseModelVerdict(tt.text)
			if v.Recommendation != tt.rec || v.Confidence != tt.confidence || !sameStrings(v.Principles, tt.principles) ||
				v.Reasoning != tt.reasoning || v.Approved != (tt.rec == recApprove) {
				t.Errorf("parse(%q) = %+v", tt.text, v)
			}
			if v.Principles == nil || v.Alternatives == nil {
				t.Error("nil slices in verdict")
			}
		})
	}
}
