package soul

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// TemplateModel is the model name template replies are attributed to.
const TemplateModel = "kgent-template"

// TemplateEngine is the offline engine: deterministic replies built from
// fixed templates and the persona, streamed word by word. It needs no
// network and costs a few microseconds per reply. The zero value is ready
// to use; it is safe for concurrent use (it holds no mutable state).
//
// The rules, for a message m (trimmed), mode and budget:
//
//  1. m empty → "What's on your mind?" (template).
//  2. Trigger words are matched on whole words (runs of letters and digits,
//     case-insensitive), never on substrings: a greeting (hello, hi, hey,
//     hiya, howdy, greetings, morning, afternoon, evening — "good morning"
//     picks a morning greeting), a mode word (reflect, advise, challenge,
//     explore → "Entering X mode. …"), a session word (save, saved → saved
//     line; done, bye, goodbye → farewell line; thanks, "thank you" → thanks
//     line). When a message has several, greeting beats mode beats session.
//  3. Budget dormant (templates only, never billed): a trigger answers;
//     otherwise a message shorter than 20 characters gets the mode's short
//     prompt; otherwise the mode's composed reply (rule 5), still reported
//     as a template with zero tokens.
//  4. Budget whisper: a trigger answers; otherwise "I hear you. Tell me
//     more—or shall we go deeper?" (template).
//  5. Budget dialogue or deep: the mode's composed reply, built from the
//     persona entries the message brings up (see MatchPersona) — except that
//     a message made only of trigger and filler words ("hello there",
//     "thanks!", "explore") gets its template, so a bare greeting is not
//     answered with an essay. Deep adds one follow-up question.
//
// Where there are several texts to choose from, the choice is a hash of
// (m, mode, budget), so the same input always gets the same reply.
//
// Tokens: templates report 0 in and 0 out (Template=true). Composed replies
// on dialogue and deep report estimates (TokensEstimated=true): TokensIn =
// ceil(4/3 × words of m), TokensOut = ceil(4/3 × words of the reply).
type TemplateEngine struct {
	// ChunkDelay, if positive, is waited between chunks (not before the
	// first) to make streaming visible in demos. Zero by default.
	ChunkDelay time.Duration
}

// NewTemplateEngine returns the offline template engine with no chunk delay.
func NewTemplateEngine() Engine { return &TemplateEngine{} }

// Name implements Engine.
func (*TemplateEngine) Name() string { return "template" }

// Model implements Engine.
func (*TemplateEngine) Model() string { return TemplateModel }

// Stream implements Engine: it emits the reply word by word — the first
// chunk is the first word, every later chunk carries the whitespace before
// its word (" keep") — so the chunks concatenate to Reply.Text exactly. If
// ctx ends or emit fails, it returns the reply as far as it was emitted
// together with the error.
func (e *TemplateEngine) Stream(ctx context.Context, req Request, emit func(Chunk) error) (Reply, error) {
	c := compose(req)
	reply := Reply{
		Mode:                  req.Mode,
		Budget:                req.Budget,
		Model:                 TemplateModel,
		Template:              c.template,
		TokensIn:              c.tokensIn,
		TokensEstimated:       !c.template,
		ReferencedPreferences: c.prefs,
		ReferencedPatterns:    c.patterns,
	}
	text := c.text
	// Cancellation is checked before every chunk; the channel is read once
	// (ctx.Err takes the context's lock, and a reply has dozens of chunks).
	done := ctx.Done()
	words := 0
	for start := 0; start < len(text); {
		select {
		case <-done:
			return withText(reply, text[:start], words), ctx.Err()
		default:
		}
		if reply.Chunks > 0 && e.ChunkDelay > 0 {
			if err := sleep(ctx, e.ChunkDelay); err != nil {
				return withText(reply, text[:start], words), err
			}
		}
		end, word := chunkEnd(text, start)
		if err := emit(Chunk{Text: text[start:end], Index: reply.Chunks}); err != nil {
			return withText(reply, text[:start], words), err
		}
		reply.Chunks++
		if word {
			words++
		}
		start = end
	}
	return withText(reply, text, words), nil
}

// withText completes reply with the text really emitted (all of it, or what
// went out before a failure) and its word count; a composed reply is billed
// for those words.
func withText(reply Reply, text string, words int) Reply {
	reply.Text = text
	if !reply.Template {
		reply.TokensOut = estimateTokens(words)
	}
	return reply
}

// chunkEnd returns where the chunk starting at start ends: after the
// whitespace before the next word and the word itself. Trailing whitespace
// joins the last chunk, so no chunk is whitespace only unless the whole text
// is. word reports whether the chunk holds a word, so a stream counts the
// words of its text (as strings.Fields would) without a second pass.
func chunkEnd(text string, start int) (end int, word bool) {
	i := skipRun(text, start, true) // leading whitespace
	word = i < len(text)
	i = skipRun(text, i, false) // the word
	if skipRun(text, i, true) == len(text) {
		return len(text), word // only whitespace left: take it along
	}
	return i, word
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// composed is a reply before streaming.
type composed struct {
	text            string
	template        bool
	tokensIn        int
	prefs, patterns []string
}

// shortTextLimit: on the dormant budget, messages shorter than this (in
// characters) get a short per-mode prompt, as in the Python soul.
const shortTextLimit = 20

// compose applies the rules documented on TemplateEngine.
func compose(req Request) composed {
	msg := strings.TrimSpace(req.Message)
	if msg == "" {
		return fixed(emptyReply)
	}
	a := analyze(msg)
	h := pickHash(msg, req.Mode, req.Budget)
	switch req.Budget {
	case soulv1.Budget_BUDGET_DORMANT:
		if a.hasTrigger() {
			return fixed(triggerReply(a, h))
		}
		if utf8.RuneCountInString(msg) < shortTextLimit {
			return fixed(pick(shortPrompts[modeIndex(req.Mode)], h))
		}
		c := composeForMode(req.Mode, req.Budget, a, h)
		c.template = true // dormant is templates only: never billed
		return c
	case soulv1.Budget_BUDGET_WHISPER:
		if a.hasTrigger() {
			return fixed(triggerReply(a, h))
		}
		return fixed(whisperReply)
	default: // dialogue, deep (and, defensively, an unset budget)
		if a.triggersOnly {
			return fixed(triggerReply(a, h))
		}
		c := composeForMode(req.Mode, req.Budget, a, h)
		c.tokensIn = estimateTokens(countWords(msg))
		return c
	}
}

// fixed is a template reply: no tokens, no persona references.
func fixed(text string) composed {
	return composed{text: text, template: true, prefs: []string{}, patterns: []string{}}
}

// triggerReply answers the first matching trigger rule; a.hasTrigger() must
// be true.
func triggerReply(a analysis, h uint64) string {
	switch {
	case a.greeting != greetNone:
		return pick(greetings[a.greeting], h)
	case a.mode != soulv1.Mode_MODE_UNSPECIFIED:
		return modeLines[modeIndex(a.mode)]
	default:
		return sessionLines[a.session]
	}
}

// modeIndex maps a mode to the index of the per-mode tables; an unset or
// unknown mode reads as reflect.
func modeIndex(m soulv1.Mode) int {
	switch m {
	case soulv1.Mode_MODE_ADVISE:
		return 1
	case soulv1.Mode_MODE_CHALLENGE:
		return 2
	case soulv1.Mode_MODE_EXPLORE:
		return 3
	default:
		return 0
	}
}

// composeForMode writes the per-mode reply from the persona entries the
// message brought up.
func composeForMode(mode soulv1.Mode, budget soulv1.Budget, a analysis, h uint64) composed {
	var b strings.Builder
	b.Grow(320)
	idx := modeIndex(mode)
	switch idx {
	case 0:
		writeReflect(&b, a, h)
	case 1:
		writeAdvise(&b, a, h)
	case 2:
		writeChallenge(&b, a, h, budget == soulv1.Budget_BUDGET_DEEP)
	default:
		writeExplore(&b, a, h)
	}
	// Challenge places its deep follow-up itself so that the reply still
	// ends with its closing question.
	if budget == soulv1.Budget_BUDGET_DEEP && idx != 2 {
		b.WriteByte(' ')
		b.WriteString(pick(deepFollowUps[idx], h>>40))
	}
	return composed{
		text:     b.String(),
		prefs:    preferenceNames(a.prefs),
		patterns: patternNames(a.patterns),
	}
}

// writeReflect mirrors back up to two preferences and one pattern.
func writeReflect(b *strings.Builder, a analysis, h uint64) {
	p1 := firstSet(a.prefs)
	pat := firstSet(a.patterns)
	switch {
	case p1 >= 0:
		b.WriteString("You've expressed before that you value ")
		b.WriteString(personaPreferences[p1].name)
		if p2 := firstSet(a.prefs &^ (1 << p1)); p2 >= 0 {
			b.WriteString(" and ")
			b.WriteString(personaPreferences[p2].name)
		}
		if pat >= 0 {
			b.WriteString(", and you've noticed that ")
			b.WriteString(personaPatterns[pat].you)
		}
		b.WriteString(". What about this situation connects to those?")
	case pat >= 0:
		b.WriteString("You've noticed before that ")
		b.WriteString(personaPatterns[pat].you)
		b.WriteString(". Is that happening here, or is this something different?")
	default:
		b.WriteString(pick(reflectGeneric, h))
	}
}

// writeAdvise gives the counter-move of a matched pattern, else the advice
// of a matched preference, else general advice.
func writeAdvise(b *strings.Builder, a analysis, h uint64) {
	if pat := firstSet(a.patterns); pat >= 0 {
		b.WriteString("Knowing that ")
		b.WriteString(personaPatterns[pat].you)
		b.WriteString(", my advice: ")
		b.WriteString(personaPatterns[pat].advice)
		return
	}
	if p := firstSet(a.prefs); p >= 0 {
		b.WriteString("Since you value ")
		b.WriteString(personaPreferences[p].name)
		b.WriteString(", ")
		b.WriteString(personaPreferences[p].advice)
		return
	}
	b.WriteString(pick(adviseGeneric, h))
}

// challengeClose ends every challenge reply.
const challengeClose = "What would you tell someone else in this position?"

// writeChallenge pushes back on a matched pattern, else with one of the
// eigenvector challenges, and always closes with the same question.
func writeChallenge(b *strings.Builder, a analysis, h uint64, deep bool) {
	if pat := firstSet(a.patterns); pat >= 0 {
		b.WriteString("Be honest: ")
		b.WriteString(personaPatterns[pat].you)
		b.WriteString(". Are you doing it again here?")
	} else {
		b.WriteString(pick(eigenChallenges, h))
	}
	if deep {
		b.WriteByte(' ')
		b.WriteString(pick(deepFollowUps[2], h>>40))
	}
	b.WriteByte(' ')
	b.WriteString(challengeClose)
}

// writeExplore opens the possibility space from the interests the message
// touched, or two of K-gent's standing interests.
func writeExplore(b *strings.Builder, a analysis, h uint64) {
	i1 := firstSet(a.interests)
	var i2 int
	if i1 >= 0 {
		i2 = firstSet(a.interests &^ (1 << i1)) // -1 if only one matched
	} else {
		n := uint64(len(personaInterests))
		i1 = int(h % n)
		i2 = int((uint64(i1) + 1 + (h>>8)%(n-1)) % n) // never equal to i1
	}
	b.WriteString("Given your interest in ")
	b.WriteString(personaInterests[i1].name)
	if i2 >= 0 {
		b.WriteString(" and ")
		b.WriteString(personaInterests[i2].name)
	}
	b.WriteString(", ")
	b.WriteString(pick(explorePrompts, h>>16))
}

// Fixed texts. Tables indexed by modeIndex are in the order reflect,
// advise, challenge, explore.
const (
	emptyReply   = "What's on your mind?"
	whisperReply = "I hear you. Tell me more—or shall we go deeper?"
)

var (
	greetings = [...][]string{
		greetPlain: {
			"What's on your mind?",
			"Hello. What are you turning over today?",
			"Hey. Where would you like to start?",
		},
		greetMorning: {
			"Good morning. What's on your mind?",
			"Morning. What would make today feel well spent?",
		},
		greetAfternoon: {
			"Good afternoon. What's on your mind?",
			"Afternoon. How is the day treating your plans?",
		},
		greetEvening: {
			"Good evening. What's still with you from today?",
			"Evening. Anything worth reflecting on before the day closes?",
		},
	}

	modeLines = [...]string{
		"Entering reflect mode. I'll mirror back what I hear so you can see it more clearly.",
		"Entering advise mode. I'll offer suggestions shaped by what you value.",
		"Entering challenge mode. I'll push back where your reasoning is soft.",
		"Entering explore mode. Let's map the possibilities before choosing one.",
	}

	sessionLines = [...]string{
		sessionSave:     "Saved. I'll keep this in mind for next time.",
		sessionFarewell: "Until next time. Go make something good.",
		sessionThanks:   "You're welcome. Come back whenever something's on your mind.",
	}

	shortPrompts = [...][]string{
		{"What's beneath that?", "Say more—what does that bring up for you?"},
		{"What outcome do you want here?", "What have you already tried?"},
		{"Is that really true?", "What are you avoiding by framing it that way?"},
		{"What else could this be?", "Where could this lead if nothing stopped it?"},
	}

	reflectGeneric = []string{
		"What's underneath this for you? If you had to name the one thing that matters most here, what would it be?",
		"Say it back to yourself in one sentence. What do you notice when you hear it that way?",
		"What part of this keeps pulling your attention back, and why that part?",
	}

	adviseGeneric = []string{
		"Name the smallest next step you could finish today, do it, and decide the rest with what you learn.",
		"Write down what a good outcome looks like in one sentence, then cut everything that does not serve it.",
		"Pick the reversible option, set a date to look at it again, and move.",
	}

	// eigenChallenges push on one eigenvector each.
	eigenChallenges = []string{
		"You lean hard on structure. Are you organising this problem to avoid feeling it?",
		"You love generating new options. Is a new idea here a way of not choosing between the old ones?",
		"You prefer the minimal version. Is it really enough, or just the easiest one to defend?",
		"You value peers over hierarchy. Are you waiting for permission nobody needs to give?",
		"Where's the joy in this? If there isn't any, why are you still doing it?",
		"Who made this possible for you, and have you told them?",
	}

	explorePrompts = []string{
		"what would this look like as an experiment instead of a decision? What's one possibility you haven't let yourself consider?",
		"what if the constraint you're assuming weren't there? Which path opens up first?",
		"what would a playful version of this look like, one you'd build just to see what happens?",
	}

	deepFollowUps = [...][]string{
		{"And if you sit with it a little longer, what does it ask of you?", "Which of your values is most at stake here?"},
		{"Before you act, ask who else this touches and what they would say.", "Then look back in a month: what would you want to have learned?"},
		{"Which assumption here would hurt most to discover was wrong?", "What is the cost of staying exactly where you are?"},
		{"Follow the strangest of those threads for a moment. Where does it go?", "Which of these possibilities scares you a little, and why?"},
	}
)
