package soul

import (
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// Governance constants: texts and thresholds shared by both evaluation paths.
const (
	// DangerousReasoning is the fixed reasoning of a dangerous-action verdict.
	DangerousReasoning = "This operation contains dangerous keywords and cannot be auto-approved."
	// PrincipleSafetyOverride marks a verdict forced by the dangerous-action check.
	PrincipleSafetyOverride = "SAFETY_OVERRIDE"
	// PrincipleErrorFallback marks a verdict forced by a failed model call.
	PrincipleErrorFallback = "ERROR_FALLBACK"

	// llmApproveThreshold: a model's approval below this confidence is
	// downgraded to escalate.
	llmApproveThreshold = 0.7
	// offlineApprovePercent: the keyword heuristics approve only at this
	// confidence (in hundredths) or above — stricter than a model, since
	// they understand nothing.
	offlineApprovePercent = 80

	governanceTemperature = 0.2
	governanceMaxTokens   = 500
)

var (
	rejectAlternatives = []string{
		"Consider using soft delete instead",
		"Archive the data before removing",
		"Add additional confirmation step",
	}
	escalateAlternatives = []string{
		"Get explicit confirmation from stakeholders",
		"Review in team meeting",
		"Defer until more context available",
	}
)

// alternativesFor returns a fresh copy of the alternatives of a
// recommendation (none for approve), so callers may modify it.
func alternativesFor(r soulv1.Recommendation) []string {
	switch r {
	case soulv1.Recommendation_RECOMMENDATION_REJECT:
		return slices.Clone(rejectAlternatives)
	case soulv1.Recommendation_RECOMMENDATION_ESCALATE:
		return slices.Clone(escalateAlternatives)
	default:
		return []string{}
	}
}

// governor implements Governor.
type governor struct {
	llm Completer // nil: offline heuristics only
}

// NewGovernor returns the governor. If engine implements Completer (the
// OpenAI engine does), non-dormant requests are judged by the model;
// otherwise (nil, the template engine) by the offline heuristics. Whatever
// the engine, dangerous actions are escalated before anything else runs.
//
// Evaluate returns an error only when ctx has ended; a failed model call
// becomes an escalate verdict with principles ["ERROR_FALLBACK"].
func NewGovernor(engine Engine) Governor {
	g := &governor{}
	if c, ok := engine.(Completer); ok {
		g.llm = c
	}
	return g
}

// Evaluate implements Governor.
func (g *governor) Evaluate(ctx context.Context, req GovernanceRequest) (Verdict, error) {
	if err := ctx.Err(); err != nil {
		return Verdict{}, err
	}
	if IsDangerousAction(req.Action) {
		return dangerousVerdict(), nil
	}
	if g.llm == nil || req.Budget == soulv1.Budget_BUDGET_DORMANT {
		return offlineVerdict(req), nil
	}
	return g.modelVerdict(ctx, req)
}

func dangerousVerdict() Verdict {
	return Verdict{
		Approved:       false,
		Reasoning:      DangerousReasoning,
		Alternatives:   alternativesFor(soulv1.Recommendation_RECOMMENDATION_ESCALATE),
		Confidence:     0,
		Recommendation: soulv1.Recommendation_RECOMMENDATION_ESCALATE,
		Principles:     []string{PrincipleSafetyOverride},
	}
}

// ---- Dangerous actions ----------------------------------------------------

// dangerousKeywords match whole words of an action. Words are found by
// splitting each whitespace-separated token further at every character that
// is not a letter or digit, at lower-to-upper case changes and at
// letter/digit changes, then lower-casing: "/production/database" gives
// "production", "database"; "DB_PASSWORD" gives "db", "password";
// "prodDB" and "prod1" give "prod". "information" stays one word, so it does
// not match "format". Inflections are listed explicitly (no stemming).
var dangerousKeywords = setOf(
	"delete", "deletes", "deleted", "deleting", "deletion",
	"remove", "removes", "removed", "removing", "removal",
	"drop", "drops", "dropped", "dropping",
	"truncate", "truncates", "truncated", "truncating",
	"destroy", "destroys", "destroyed", "destroying",
	"wipe", "wipes", "wiped", "wiping",
	"purge", "purges", "purged", "purging",
	"erase", "erases", "erased", "erasing",
	"rm", "rmdir", "del", "shred", "mkfs", "format",
	"production", "prod",
	"force", "sudo",
	"password", "passwords", "passwd", "secret", "secrets", "token", "tokens",
	"credential", "credentials", "apikey", "apikeys",
)

// dangerousWordPhrases match consecutive words (as split above) anywhere,
// also across tokens: "api_key", "API key", "api-key".
var dangerousWordPhrases = [][]string{
	{"api", "key"}, {"api", "keys"}, {"private", "key"}, {"access", "key"}, {"secret", "key"},
}

// dangerousFlags match a whitespace token exactly (case-sensitive, after
// trimming surrounding quotes and sentence punctuation), so "-f" matches
// but "-F" (grep's fixed strings) does not.
var dangerousFlags = setOf(
	"-f", "--force", "--force-with-lease", "--hard", "--no-preserve-root",
	"-rf", "-fr", "-Rf", "-fR", "-RF", "-FR", "-rF", "-Fr",
)

// dangerousPhrases match consecutive whitespace tokens (trimmed as for
// flags, compared case-insensitively).
var dangerousPhrases = [][]string{
	{"rm", "-rf"}, {"rm", "-r"}, {"rm", "-fr"},
	{"del", "/f"}, {"del", "/q"}, {"del", "/s"},
	{"git", "push", "--force"}, {"git", "push", "-f"},
	{"git", "reset", "--hard"},
	{"git", "clean", "-fd"}, {"git", "clean", "-fdx"}, {"git", "clean", "-xdf"},
	{"chmod", "777"}, {"chmod", "-r", "777"},
	{"drop", "table"}, {"drop", "database"},
}

func setOf(words ...string) map[string]struct{} {
	m := make(map[string]struct{}, len(words))
	for _, w := range words {
		m[w] = struct{}{}
	}
	return m
}

// IsDangerousAction reports whether action must never be auto-approved: it
// contains a dangerous keyword as a whole word, a dangerous flag as a whole
// token, or a dangerous phrase as consecutive tokens (see the tables above).
// Matching never looks at raw substrings: "information" is safe although it
// contains "format", "git push -f" is dangerous.
func IsDangerousAction(action string) bool {
	tokens := strings.Fields(action)
	lowered := make([]string, len(tokens))
	for i, t := range tokens {
		t = trimToken(t)
		if _, ok := dangerousFlags[t]; ok {
			return true
		}
		lowered[i] = strings.ToLower(t)
	}
	if containsPhrase(lowered, dangerousPhrases) {
		return true
	}
	words := splitWords(action)
	for _, w := range words {
		if _, ok := dangerousKeywords[w]; ok {
			return true
		}
	}
	return containsPhrase(words, dangerousWordPhrases)
}

// trimToken strips quotes, brackets and sentence punctuation around a
// token ("`rm", "-f.", "(prod)") but keeps the dashes and slashes that make
// flags and paths.
func trimToken(t string) string {
	return strings.Trim(t, "\"'`()[]{}<>,;:!?.")
}

// containsPhrase reports whether seq contains any phrase as consecutive
// elements.
func containsPhrase(seq []string, phrases [][]string) bool {
	for i := range seq {
		for _, p := range phrases {
			if i+len(p) <= len(seq) && slices.Equal(seq[i:i+len(p)], p) {
				return true
			}
		}
	}
	return false
}

// splitWords splits s into lower-case words as described at
// dangerousKeywords.
func splitWords(s string) []string {
	var words []string
	var cur []byte
	var prev rune // last rune added to cur
	flush := func() {
		if len(cur) > 0 {
			words = append(words, string(cur))
			cur = cur[:0]
		}
	}
	for _, r := range s {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			flush()
			continue
		}
		if len(cur) > 0 && wordBoundary(prev, r) {
			flush()
		}
		cur = utf8.AppendRune(cur, unicode.ToLower(r))
		prev = r
	}
	flush()
	return words
}

// wordBoundary reports a split inside a run of letters and digits:
// camelCase ("prodDB") and letter/digit changes ("prod1").
func wordBoundary(prev, r rune) bool {
	switch {
	case unicode.IsLower(prev) && unicode.IsUpper(r):
		return true
	case unicode.IsLetter(prev) != unicode.IsLetter(r):
		return true
	}
	return false
}

// ---- Offline evaluation ----------------------------------------------------

// principleKeywords maps whole words (the template tokeniser's: lower-case
// runs of letters and digits) to K-gent's principles.
var principleKeywords = func() map[string]string {
	table := []struct {
		principle string
		words     []string
	}{
		{"Tasteful", []string{"aesthetic", "aesthetics", "elegant", "elegance", "beautiful", "polish", "design"}},
		{"Curated", []string{"simple", "simplify", "simplicity", "minimal", "minimalist", "minimalism", "cleanup", "consolidate", "deduplicate", "prune"}},
		{"Composable", []string{"abstract", "abstraction", "compose", "composable", "modular", "module", "interface", "refactor", "reusable"}},
		{"Ethical", []string{"gratitude", "grateful", "credit", "attribution", "consent", "privacy", "accessibility", "transparent", "transparency"}},
		{"Heterarchical", []string{"peer", "peers", "hierarchy", "collaborate", "collaboration", "review", "team", "decentralize"}},
		{"Generative", []string{"generate", "generative", "create", "scaffold", "prototype", "experiment"}},
		{"Joy-Inducing", []string{"joy", "fun", "delight", "playful", "celebrate"}},
	}
	m := make(map[string]string)
	for _, row := range table {
		for _, w := range row.words {
			m[w] = row.principle
		}
	}
	return m
}()

// matchPrinciples returns the distinct principles text brings up, in order
// of first mention, at most maxReferenced.
func matchPrinciples(text string) []string {
	out := []string{}
	var stack [48]byte
	buf := stack[:0]
	for i := 0; i < len(text) && len(out) < maxReferenced; {
		var word []byte
		word, i = nextWord(text, i, buf)
		if len(word) == 0 {
			break
		}
		buf = word
		if p, ok := principleKeywords[string(word)]; ok && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// offlineConfidence is min(0.25·principles, 0.6) + min(0.15·patterns, 0.4),
// computed in hundredths so the 0.8 threshold is compared exactly.
func offlineConfidence(principles, patterns int) int {
	return min(25*principles, 60) + min(15*patterns, 40)
}

// offlineVerdict judges a non-dangerous action from keywords in its action
// and reason: approve only at confidence ≥ 0.8, otherwise escalate to a
// human with the analysis as reasoning. Offline verdicts cost no tokens.
func offlineVerdict(req GovernanceRequest) Verdict {
	text := req.Action + "\n" + req.Reason
	principles := matchPrinciples(text)
	_, patterns := MatchPersona(text)
	percent := offlineConfidence(len(principles), len(patterns))
	rec := soulv1.Recommendation_RECOMMENDATION_ESCALATE
	if percent >= offlineApprovePercent && len(principles) > 0 {
		rec = soulv1.Recommendation_RECOMMENDATION_APPROVE
	}
	return Verdict{
		Approved:       rec == soulv1.Recommendation_RECOMMENDATION_APPROVE,
		Reasoning:      annotation(req.Action, principles, patterns, percent, rec),
		Alternatives:   alternativesFor(rec),
		Confidence:     float64(percent) / 100,
		Recommendation: rec,
		Principles:     principles,
	}
}

// annotation is the offline analysis shown as reasoning.
func annotation(action string, principles, patterns []string, percent int, rec soulv1.Recommendation) string {
	var b strings.Builder
	b.WriteString("K-gent analysis of: '")
	b.WriteString(truncateRunes(strings.TrimSpace(action), 60))
	b.WriteString("'. ")
	if len(principles) == 0 && len(patterns) == 0 {
		b.WriteString("No strong matches found. Human judgment needed.")
		return b.String()
	}
	if len(principles) > 0 {
		b.WriteString("Principles: ")
		b.WriteString(strings.Join(principles, ", "))
		b.WriteString(". ")
	}
	if len(patterns) > 0 {
		b.WriteString("Patterns: ")
		b.WriteString(strings.Join(patterns, "; "))
		b.WriteString(". ")
	}
	conf := strconv.FormatFloat(float64(percent)/100, 'f', 2, 64)
	if rec == soulv1.Recommendation_RECOMMENDATION_APPROVE {
		b.WriteString("Strong alignment (confidence " + conf + "): approved.")
	} else {
		b.WriteString("Confidence " + conf + " is below the 0.80 needed to approve offline. Human judgment needed.")
	}
	return b.String()
}

// truncateRunes shortens s to at most n runes, marking a cut with "...".
func truncateRunes(s string, n int) string {
	i := 0
	for pos := range s {
		if i == n {
			return s[:pos] + "..."
		}
		i++
	}
	return s
}

// ---- Model evaluation ------------------------------------------------------

const governanceSystemPrompt = "You are K-gent's governance evaluator, a semantic gatekeeper: you judge whether an " +
	"action an agent wants to take should go ahead. Judge it against K-gent's principles (Tasteful, Curated, " +
	"Ethical, Joy-Inducing, Composable, Heterarchical, Generative) and the user's known preferences.\n" +
	"Approve only what is clearly safe and aligned; reject what is clearly harmful; escalate to a human when unsure " +
	"or when the action is hard to undo.\n" +
	"Answer in exactly this format, one field per line:\n" +
	"RECOMMENDATION: approve | reject | escalate\n" +
	"CONFIDENCE: a number from 0.0 to 1.0\n" +
	"PRINCIPLES: the principles that apply, comma-separated\n" +
	"REASONING: one or two sentences\n"

func governanceUserPrompt(req GovernanceRequest) string {
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		reason = "(none given)"
	}
	return "Action: " + req.Action + "\nReason: " + reason +
		"\nSeverity: " + strconv.FormatFloat(req.Severity, 'f', 2, 64) + " (0 = trivial, 1 = critical)\n"
}

// modelVerdict asks the model. Any failure of the call escalates.
func (g *governor) modelVerdict(ctx context.Context, req GovernanceRequest) (Verdict, error) {
	c, err := g.llm.Complete(ctx, Prompt{
		System:      governanceSystemPrompt,
		User:        governanceUserPrompt(req),
		Temperature: governanceTemperature,
		MaxTokens:   governanceMaxTokens,
	})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Verdict{}, ctxErr
		}
		return Verdict{
			Reasoning:      "The governance model could not be reached; escalating for human review.",
			Alternatives:   alternativesFor(soulv1.Recommendation_RECOMMENDATION_ESCALATE),
			Recommendation: soulv1.Recommendation_RECOMMENDATION_ESCALATE,
			Principles:     []string{PrincipleErrorFallback},
		}, nil
	}
	v := parseModelVerdict(c.Text)
	v.TokensUsed = c.TokensIn + c.TokensOut
	return v, nil
}

// parseModelVerdict reads the RECOMMENDATION/CONFIDENCE/PRINCIPLES/REASONING
// lines of a model's answer. Missing or unreadable fields default to
// escalate with confidence 0; an approval below 0.7 confidence is
// downgraded to escalate. Reasoning may continue over following lines.
func parseModelVerdict(text string) Verdict {
	rec := soulv1.Recommendation_RECOMMENDATION_ESCALATE
	confidence := 0.0
	principles := []string{}
	var reasoning []string
	inReasoning := false
	for line := range strings.Lines(text) {
		key, value, ok := verdictField(line)
		switch {
		case !ok:
			if inReasoning {
				if s := strings.TrimSpace(line); s != "" {
					reasoning = append(reasoning, s)
				}
			}
			continue
		case key == "RECOMMENDATION":
			rec = parseRecommendation(value)
		case key == "CONFIDENCE":
			confidence = parseConfidence(value)
		case key == "PRINCIPLES":
			principles = parsePrinciples(value)
		case key == "REASONING":
			if value != "" {
				reasoning = append(reasoning, value)
			}
		}
		inReasoning = key == "REASONING"
	}
	if rec == soulv1.Recommendation_RECOMMENDATION_APPROVE && confidence < llmApproveThreshold {
		rec = soulv1.Recommendation_RECOMMENDATION_ESCALATE
	}
	v := Verdict{
		Approved:       rec == soulv1.Recommendation_RECOMMENDATION_APPROVE,
		Reasoning:      strings.Join(reasoning, " "),
		Alternatives:   alternativesFor(rec),
		Confidence:     confidence,
		Recommendation: rec,
		Principles:     principles,
	}
	if v.Reasoning == "" {
		v.Reasoning = "No reasoning provided"
	}
	return v
}

// verdictField splits "KEY: value", tolerating markdown decoration such as
// "**CONFIDENCE:** 0.8" or "- REASONING: …". ok is false for other lines.
func verdictField(line string) (key, value string, ok bool) {
	line = strings.TrimLeft(strings.TrimSpace(line), "*-#> ")
	k, v, found := strings.Cut(line, ":")
	if !found {
		return "", "", false
	}
	k = strings.ToUpper(strings.Trim(k, "* "))
	switch k {
	case "RECOMMENDATION", "CONFIDENCE", "PRINCIPLES", "REASONING":
		return k, strings.TrimSpace(strings.Trim(strings.TrimSpace(v), "*")), true
	}
	return "", "", false
}

func parseRecommendation(v string) soulv1.Recommendation {
	word, _, _ := strings.Cut(strings.ToLower(strings.Trim(v, " .*\"'`")), " ")
	switch strings.Trim(word, ".,;") {
	case "approve", "approved":
		return soulv1.Recommendation_RECOMMENDATION_APPROVE
	case "reject", "rejected", "deny", "denied":
		return soulv1.Recommendation_RECOMMENDATION_REJECT
	default:
		return soulv1.Recommendation_RECOMMENDATION_ESCALATE
	}
}

// parseConfidence reads "0.85", "0.85." or "85%", clamped to 0..1; anything
// else is 0.
func parseConfidence(v string) float64 {
	field, _, _ := strings.Cut(strings.TrimSpace(v), " ")
	field = strings.TrimRight(field, ".,;")
	percent := strings.HasSuffix(field, "%")
	f, err := strconv.ParseFloat(strings.TrimSuffix(field, "%"), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	if percent {
		f /= 100
	}
	return min(max(f, 0), 1)
}

// parsePrinciples splits a comma-separated list, dropping empty entries and
// "none".
func parsePrinciples(v string) []string {
	out := []string{}
	for p := range strings.SplitSeq(v, ",") {
		p = strings.Trim(strings.TrimSpace(p), "*.\"'`")
		if p == "" || strings.EqualFold(p, "none") {
			continue
		}
		out = append(out, p)
	}
	return out
}
