package soul

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

const (
	reflect   = soulv1.Mode_MODE_REFLECT
	advise    = soulv1.Mode_MODE_ADVISE
	challenge = soulv1.Mode_MODE_CHALLENGE
	explore   = soulv1.Mode_MODE_EXPLORE

	dormant  = soulv1.Budget_BUDGET_DORMANT
	whisper  = soulv1.Budget_BUDGET_WHISPER
	dialogue = soulv1.Budget_BUDGET_DIALOGUE
	deep     = soulv1.Budget_BUDGET_DEEP
)

var bg = context.Background()

// streamTemplate runs the template engine and checks the invariants every
// reply must keep: chunks in order from 0, word by word, concatenating to
// Text; metadata set; referenced lists non-nil.
func streamTemplate(t *testing.T, req Request) Reply {
	t.Helper()
	reply, chunks, err := collect(bg, NewTemplateEngine(), req)
	if err != nil {
		t.Fatalf("Stream(%+v): %v", req, err)
	}
	checkChunks(t, reply.Text, chunks)
	if reply.Chunks != len(chunks) {
		t.Errorf("Chunks = %d, emitted %d", reply.Chunks, len(chunks))
	}
	if reply.Model != TemplateModel || reply.Mode != req.Mode || reply.Budget != req.Budget {
		t.Errorf("reply metadata = %q/%v/%v", reply.Model, reply.Mode, reply.Budget)
	}
	if reply.ReferencedPreferences == nil || reply.ReferencedPatterns == nil {
		t.Error("referenced lists must be empty slices, not nil")
	}
	if len(reply.ReferencedPreferences) > 3 || len(reply.ReferencedPatterns) > 3 {
		t.Errorf("more than 3 referenced: %q %q", reply.ReferencedPreferences, reply.ReferencedPatterns)
	}
	return reply
}

// checkChunks asserts word-by-word chunking of text.
func checkChunks(t *testing.T, text string, chunks []Chunk) {
	t.Helper()
	if joinChunks(chunks) != text {
		t.Fatalf("chunks join to %q, want %q", joinChunks(chunks), text)
	}
	if want := len(strings.Fields(text)); len(chunks) != want {
		t.Errorf("%d chunks for %d words of %q", len(chunks), want, text)
	}
	for i, c := range chunks {
		if c.Index != i {
			t.Errorf("chunk %d has index %d", i, c.Index)
		}
		if strings.TrimSpace(c.Text) == "" {
			t.Errorf("chunk %d is whitespace only: %q", i, c.Text)
		}
		if fields := strings.Fields(c.Text); len(fields) != 1 {
			t.Errorf("chunk %d = %q is not one word", i, c.Text)
		}
		startsWithSpace := unicode.IsSpace([]rune(c.Text)[0])
		if i == 0 && startsWithSpace && !unicode.IsSpace([]rune(text)[0]) {
			t.Errorf("first chunk %q starts with a space", c.Text)
		}
		if i > 0 && !startsWithSpace {
			t.Errorf("chunk %d = %q does not carry its leading space", i, c.Text)
		}
	}
}

func TestTemplateEngineIdentity(t *testing.T) {
	t.Parallel()
	e := NewTemplateEngine()
	if e.Name() != "template" || e.Model() != "kgent-template" {
		t.Errorf("Name/Model = %q/%q", e.Name(), e.Model())
	}
}

func TestTemplateExactReplies(t *testing.T) {
	t.Parallel()
	const (
		decide  = "How do I decide between two options for my team?"
		rewrite = "I keep rewriting my framework instead of shipping, what should I do about the complexity?"
	)
	tests := []struct {
		name      string
		req       Request
		want      string
		template  bool
		tokensIn  int
		tokensOut int
	}{
		{"empty", Request{Message: "", Mode: reflect, Budget: dialogue}, "What's on your mind?", true, 0, 0},
		{"whitespace", Request{Message: " \n\t ", Mode: explore, Budget: deep}, "What's on your mind?", true, 0, 0},
		{"whisper without trigger", Request{Message: rewrite, Mode: reflect, Budget: whisper}, "I hear you. Tell me more—or shall we go deeper?", true, 0, 0},
		{"whisper mode word", Request{Message: "can you challenge my plan?", Mode: reflect, Budget: whisper},
			"Entering challenge mode. I'll push back where your reasoning is soft.", true, 0, 0},
		{"whisper thanks", Request{Message: "thanks, that helped", Mode: reflect, Budget: whisper},
			"You're welcome. Come back whenever something's on your mind.", true, 0, 0},
		{"whisper thank you", Request{Message: "Thank you so much!", Mode: advise, Budget: whisper},
			"You're welcome. Come back whenever something's on your mind.", true, 0, 0},
		{"whisper done", Request{Message: "I think I'm done for today", Mode: advise, Budget: whisper},
			"Until next time. Go make something good.", true, 0, 0},
		{"whisper save", Request{Message: "please save this thought", Mode: advise, Budget: whisper},
			"Saved. I'll keep this in mind for next time.", true, 0, 0},
		{"greeting beats mode and session", Request{Message: "hey, explore this then bye", Mode: reflect, Budget: whisper},
			pickFor(greetings[greetPlain], "hey, explore this then bye", reflect, whisper), true, 0, 0},
		{"mode beats session", Request{Message: "let's reflect, then save", Mode: advise, Budget: whisper},
			"Entering reflect mode. I'll mirror back what I hear so you can see it more clearly.", true, 0, 0},
		{"dormant mode word", Request{Message: "explore", Mode: reflect, Budget: dormant},
			"Entering explore mode. Let's map the possibilities before choosing one.", true, 0, 0},
		{"dormant composed is free", Request{Message: decide, Mode: reflect, Budget: dormant},
			"You've expressed before that you value peer collaboration over hierarchy, and you've noticed that you tend to delay decisions to gather more information. What about this situation connects to those?", true, 0, 0},
		{"dialogue reflect", Request{Message: decide, Mode: reflect, Budget: dialogue},
			"You've expressed before that you value peer collaboration over hierarchy, and you've noticed that you tend to delay decisions to gather more information. What about this situation connects to those?", false, 14, 40},
		{"dialogue reflect two preferences", Request{Message: rewrite, Mode: reflect, Budget: dialogue},
			"You've expressed before that you value minimalism and shipping over polishing, and you've noticed that you tend to over-engineer before shipping. What about this situation connects to those?", false, 20, 38},
		{"dialogue reflect pattern only", Request{Message: "I abandoned another side project", Mode: reflect, Budget: dialogue},
			"You've noticed before that you tend to start new projects before finishing old ones. Is that happening here, or is this something different?", false, 7, 31},
		{"dialogue advise pattern", Request{Message: decide, Mode: advise, Budget: dialogue},
			"Knowing that you tend to delay decisions to gather more information, my advice: set a date, decide with what you know by then, and make the decision reversible if you can.", false, 14, 42},
		{"dialogue advise: pattern beats preference", Request{Message: "Should our API be simpler?", Mode: advise, Budget: dialogue},
			"Knowing that you tend to delay decisions to gather more information, my advice: set a date, decide with what you know by then, and make the decision reversible if you can.", false, 7, 42},
		{"dialogue advise preference only", Request{Message: "our API feels bloated", Mode: advise, Budget: dialogue},
			"Since you value minimalism, choose the option with the fewest moving parts and see if it is enough.", false, 6, 24},
		{"dialogue challenge pattern", Request{Message: decide, Mode: challenge, Budget: dialogue},
			"Be honest: you tend to delay decisions to gather more information. Are you doing it again here? What would you tell someone else in this position?", false, 14, 35},
		{"dialogue explore interests", Request{Message: "agents talking over NATS", Mode: explore, Budget: dialogue},
			"Given your interest in distributed systems and agent architectures, " + pickFor(explorePrompts, "agents talking over NATS", explore, dialogue, 16), false, 6, -1},
		{"bare greeting on dialogue", Request{Message: "Good evening!", Mode: reflect, Budget: dialogue},
			pickFor(greetings[greetEvening], "Good evening!", reflect, dialogue), true, 0, 0},
		{"bare thanks on deep", Request{Message: "thanks!", Mode: challenge, Budget: deep},
			"You're welcome. Come back whenever something's on your mind.", true, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := streamTemplate(t, tt.req)
			if r.Text != tt.want {
				t.Errorf("Text = %q\nwant   %q", r.Text, tt.want)
			}
			if r.Template != tt.template || r.TokensEstimated == tt.template {
				t.Errorf("Template = %v, TokensEstimated = %v; want template %v", r.Template, r.TokensEstimated, tt.template)
			}
			wantOut := tt.tokensOut
			if wantOut < 0 {
				wantOut = estimateTokens(countWords(tt.want))
			}
			if r.TokensIn != tt.tokensIn || r.TokensOut != wantOut {
				t.Errorf("tokens = %d/%d, want %d/%d", r.TokensIn, r.TokensOut, tt.tokensIn, wantOut)
			}
			if tt.template && (len(r.ReferencedPreferences) > 0 || len(r.ReferencedPatterns) > 0) && tt.req.Budget != dormant {
				t.Errorf("a fixed template references %q %q", r.ReferencedPreferences, r.ReferencedPatterns)
			}
		})
	}
}

// pickFor repeats the engine's hash choice, so tests of hash-picked texts
// are exact. shift selects the derived selector.
func pickFor(choices []string, msg string, mode soulv1.Mode, budget soulv1.Budget, shift ...uint) string {
	h := pickHash(strings.TrimSpace(msg), mode, budget)
	if len(shift) > 0 {
		h >>= shift[0]
	}
	return pick(choices, h)
}

func TestTemplateTokenEstimates(t *testing.T) {
	t.Parallel()
	msg := "How do I decide between two options for my team?" // 10 words
	r := streamTemplate(t, Request{Message: msg, Mode: reflect, Budget: dialogue})
	if r.TokensIn != (4*10+2)/3 {
		t.Errorf("TokensIn = %d, want ceil(10*4/3) = 14", r.TokensIn)
	}
	if want := (4*len(strings.Fields(r.Text)) + 2) / 3; r.TokensOut != want {
		t.Errorf("TokensOut = %d, want ceil(words*4/3) = %d", r.TokensOut, want)
	}
	if r.TokensUsed() != r.TokensIn+r.TokensOut {
		t.Error("TokensUsed is not the sum")
	}
}

func TestTemplateWordBoundaries(t *testing.T) {
	t.Parallel()
	hear := whisperReply
	tests := []struct {
		msg  string
		want string // "" = any greeting
	}{
		{"I abandoned the project", hear},      // not "done"
		{"this is a test of the system", hear}, // not "hi"
		{"the chief architect", hear},          // not "hi"
		{"a machine learning question", hear},  // not "hi"
		{"theyhello", hear},                    // not "hello"
		{"a donut shop", hear},                 // not "done"
		{"unsaved changes", hear},              // not "save"
		{"I'm thankful", hear},                 // not "thanks"
		{"thank goodness", hear},               // "thank" alone is no trigger
		{"I explored it", hear},                // not "explore"
		{"reflection on advisers", hear},       // not "reflect" / "advise"
		{"the bye-law says", sessionLines[sessionFarewell]},
		{"Hi!", ""},
		{"HELLO", ""},
		{"hey, quick question", ""},
		{"good morning", ""},
		{"work is done.", sessionLines[sessionFarewell]},
		{"Goodbye for now", sessionLines[sessionFarewell]},
		{"saved!", sessionLines[sessionSave]},
		{"thank you", sessionLines[sessionThanks]},
		{"ADVISE me", modeLines[1]},
	}
	for _, tt := range tests {
		t.Run(tt.msg, func(t *testing.T) {
			t.Parallel()
			r := streamTemplate(t, Request{Message: tt.msg, Mode: reflect, Budget: whisper})
			if tt.want == "" {
				if !isGreeting(r.Text) {
					t.Errorf("%q → %q, want a greeting", tt.msg, r.Text)
				}
				return
			}
			if r.Text != tt.want {
				t.Errorf("%q → %q, want %q", tt.msg, r.Text, tt.want)
			}
		})
	}
}

func isGreeting(s string) bool {
	for _, g := range greetings {
		if slices.Contains(g, s) {
			return true
		}
	}
	return false
}

func TestTemplateGreetingTimeOfDay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		msg  string
		kind greetingKind
	}{
		{"hello", greetPlain},
		{"good morning", greetMorning},
		{"hi, good afternoon", greetAfternoon},
		{"Evening!", greetEvening},
		{"morning, hey", greetMorning},
	}
	for _, tt := range tests {
		r := streamTemplate(t, Request{Message: tt.msg, Mode: reflect, Budget: whisper})
		if !slices.Contains(greetings[tt.kind], r.Text) {
			t.Errorf("%q → %q, want one of %q", tt.msg, r.Text, greetings[tt.kind])
		}
	}
}

func TestTemplateDialogueUsesTemplatesOnlyForBareTriggers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		msg      string
		template bool
	}{
		{"hello there", true},
		{"hi kgent", true},
		{"ok thanks, bye", true},
		{"let's explore", true},
		{"I am done", true},
		{"hello, can you help me plan my week?", false},
		{"thanks, but I still disagree about the schedule", false},
		{"I want to explore a new career", false},
	}
	for _, tt := range tests {
		for _, budget := range []soulv1.Budget{dialogue, deep} {
			r := streamTemplate(t, Request{Message: tt.msg, Mode: reflect, Budget: budget})
			if r.Template != tt.template {
				t.Errorf("%q on %v: Template = %v (%q), want %v", tt.msg, budget, r.Template, r.Text, tt.template)
			}
		}
	}
}

func TestTemplateDormantShortText(t *testing.T) {
	t.Parallel()
	modes := []soulv1.Mode{reflect, advise, challenge, explore}
	for i, mode := range modes {
		r := streamTemplate(t, Request{Message: "short one", Mode: mode, Budget: dormant})
		if !slices.Contains(shortPrompts[i], r.Text) || !r.Template || r.TokensUsed() != 0 {
			t.Errorf("%v: %q (template %v, %d tokens), want a short prompt", mode, r.Text, r.Template, r.TokensUsed())
		}
		// 20 characters or more is no longer short: the composed reply, still free.
		long := streamTemplate(t, Request{Message: "twenty characters ok", Mode: mode, Budget: dormant})
		if slices.Contains(shortPrompts[i], long.Text) || !long.Template || long.TokensUsed() != 0 {
			t.Errorf("%v long: %q (template %v, %d tokens)", mode, long.Text, long.Template, long.TokensUsed())
		}
	}
}

func TestTemplateModeShapes(t *testing.T) {
	t.Parallel()
	msgs := []string{"what now", "I keep rewriting everything", "my team and my calendar are a mess", "agents", "ΔΣ unicode only"}
	for _, msg := range msgs {
		for _, budget := range []soulv1.Budget{dialogue, deep} {
			c := streamTemplate(t, Request{Message: msg, Mode: challenge, Budget: budget})
			if !strings.HasSuffix(c.Text, " What would you tell someone else in this position?") {
				t.Errorf("challenge %q/%v = %q: must end with the closing question", msg, budget, c.Text)
			}
			e := streamTemplate(t, Request{Message: msg, Mode: explore, Budget: budget})
			if !strings.HasPrefix(e.Text, "Given your interest in ") {
				t.Errorf("explore %q = %q", msg, e.Text)
			}
			d := streamTemplate(t, Request{Message: msg, Mode: reflect, Budget: budget})
			dl := streamTemplate(t, Request{Message: msg, Mode: reflect, Budget: dialogue})
			if budget == deep && (len(d.Text) <= len(dl.Text) || d.TokensOut <= dl.TokensOut) {
				t.Errorf("deep reply %q is not longer than dialogue %q", d.Text, dl.Text)
			}
		}
	}
}

func TestTemplateUnsetModeAndBudget(t *testing.T) {
	t.Parallel()
	// Callers always resolve mode and budget; unset values must not crash
	// and read as reflect / dialogue.
	r := streamTemplate(t, Request{Message: "How do I decide between two options for my team?"})
	want := streamTemplate(t, Request{Message: "How do I decide between two options for my team?", Mode: reflect, Budget: dialogue})
	if r.Text != want.Text {
		t.Errorf("unset mode/budget → %q, want the reflect/dialogue reply %q", r.Text, want.Text)
	}
}

func TestTemplateDeterministic(t *testing.T) {
	t.Parallel()
	reqs := []Request{
		{Message: "hello", Mode: reflect, Budget: whisper},
		{Message: "what now", Mode: challenge, Budget: dialogue},
		{Message: "what now", Mode: explore, Budget: deep},
		{Message: "tiny", Mode: advise, Budget: dormant},
	}
	for _, req := range reqs {
		first := streamTemplate(t, req)
		for range 3 {
			again := streamTemplate(t, req)
			if again.Text != first.Text || again.TokensOut != first.TokensOut {
				t.Errorf("%+v: %q then %q", req, first.Text, again.Text)
			}
		}
	}
	// The choice does depend on the input: many greetings use several texts.
	seen := map[string]bool{}
	for _, msg := range []string{"hello", "hi", "hey", "hiya", "howdy", "greetings", "hello!", "hi there", "hey you", "Hello", "HI"} {
		seen[streamTemplate(t, Request{Message: msg, Mode: reflect, Budget: whisper}).Text] = true
	}
	if len(seen) < 2 {
		t.Errorf("11 greetings all got the same reply %v: the pick ignores the input", seen)
	}
}

func TestChunkEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		text string
		want []string
	}{
		{"", nil},
		{"one", []string{"one"}},
		{"What's on your mind?", []string{"What's", " on", " your", " mind?"}},
		{"a  b\n\tc", []string{"a", "  b", "\n\tc"}},
		{"  lead", []string{"  lead"}},
		{"trail  ", []string{"trail  "}},
		{"x y ", []string{"x", " y "}},
		{"more—or less", []string{"more—or", " less"}},
		{"a\u00a0b c", []string{"a", "\u00a0b", " c"}}, // no-break space is whitespace
		{" \t ", []string{" \t "}},                     // whitespace only: one chunk, no word
	}
	for _, tt := range tests {
		var got []string
		words := 0
		for start := 0; start < len(tt.text); {
			end, word := chunkEnd(tt.text, start)
			got = append(got, tt.text[start:end])
			if word {
				words++
			}
			start = end
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("chunks(%q) = %q, want %q", tt.text, got, tt.want)
		}
		// The stream's word count is what it bills: it must be strings.Fields'.
		if want := len(strings.Fields(tt.text)); words != want {
			t.Errorf("chunks(%q) hold %d words, want %d", tt.text, words, want)
		}
	}
}

func TestTemplateCancellation(t *testing.T) {
	t.Parallel()
	req := Request{Message: "How do I decide between two options for my team?", Mode: reflect, Budget: dialogue}
	full := streamTemplate(t, req)

	t.Run("before start", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(bg)
		cancel()
		r, chunks, err := collect(ctx, NewTemplateEngine(), req)
		if !errors.Is(err, context.Canceled) || len(chunks) != 0 || r.Text != "" || r.Chunks != 0 {
			t.Errorf("got %q, %d chunks, %v", r.Text, len(chunks), err)
		}
		if r.TokensOut != 0 || r.TokensIn != full.TokensIn {
			t.Errorf("tokens = %d/%d: the prompt was read, nothing produced", r.TokensIn, r.TokensOut)
		}
	})
	t.Run("mid-stream", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		var chunks []Chunk
		r, err := NewTemplateEngine().Stream(ctx, req, func(c Chunk) error {
			chunks = append(chunks, c)
			if len(chunks) == 3 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if r.Chunks != 3 || r.Text != joinChunks(chunks) || !strings.HasPrefix(full.Text, r.Text) {
			t.Errorf("partial = %q (%d chunks)", r.Text, r.Chunks)
		}
		if r.TokensOut != estimateTokens(3) {
			t.Errorf("partial TokensOut = %d, want the estimate for 3 words", r.TokensOut)
		}
	})
	t.Run("during delay", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
		defer cancel()
		start := time.Now()
		r, _, err := collect(ctx, &TemplateEngine{ChunkDelay: time.Hour}, req)
		if !errors.Is(err, context.DeadlineExceeded) || r.Chunks != 1 || time.Since(start) > 5*time.Second {
			t.Errorf("err = %v, chunks = %d after %v", err, r.Chunks, time.Since(start))
		}
	})
}

func TestTemplateEmitErrorStops(t *testing.T) {
	t.Parallel()
	stop := errors.New("stop")
	n := 0
	r, err := NewTemplateEngine().Stream(bg, Request{Message: "hello", Mode: reflect, Budget: whisper}, func(Chunk) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("err = %v after %d emits", err, n)
	}
	if r.Chunks != 1 || len(strings.Fields(r.Text)) != 1 {
		t.Errorf("partial reply = %q (%d chunks), want the one delivered word", r.Text, r.Chunks)
	}
}

func TestTemplateChunkDelay(t *testing.T) {
	t.Parallel()
	e := &TemplateEngine{ChunkDelay: 5 * time.Millisecond}
	start := time.Now()
	r, chunks, err := collect(bg, e, Request{Message: "hello", Mode: reflect, Budget: whisper})
	if err != nil {
		t.Fatal(err)
	}
	checkChunks(t, r.Text, chunks)
	if min := time.Duration(len(chunks)-1) * 5 * time.Millisecond; time.Since(start) < min {
		t.Errorf("%d chunks took %v, want at least %v", len(chunks), time.Since(start), min)
	}
}

func TestTemplateConcurrentUse(t *testing.T) {
	t.Parallel()
	e := NewTemplateEngine()
	want, _, _ := collect(bg, e, Request{Message: "my team keeps rewriting things", Mode: advise, Budget: deep})
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for range 32 {
		wg.Go(func() {
			got, _, err := collect(bg, e, Request{Message: "my team keeps rewriting things", Mode: advise, Budget: deep})
			if err != nil || got.Text != want.Text {
				errs <- got.Text
			}
		})
	}
	wg.Wait()
	close(errs)
	for text := range errs {
		t.Errorf("concurrent reply differs: %q", text)
	}
}

// FuzzChunks: for any text, the chunks concatenate to it and hold exactly
// strings.Fields' words (what a composed reply is billed for), at most one
// each.
func FuzzChunks(f *testing.F) {
	for _, s := range []string{"", " ", "one", "a  b\n\tc", "more—or less", "a\u00a0b c", "x\u2028y", "\xff \xfe", "trail  "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		var b strings.Builder
		words := 0
		for start := 0; start < len(text); {
			end, word := chunkEnd(text, start)
			if end <= start {
				t.Fatalf("chunk at %d of %q does not advance", start, text)
			}
			if word {
				words++
			}
			if n := len(strings.Fields(text[start:end])); n > 1 || (n == 1) != word {
				t.Fatalf("chunk %q of %q: %d words, reported %v", text[start:end], text, n, word)
			}
			b.WriteString(text[start:end])
			start = end
		}
		if b.String() != text {
			t.Fatalf("chunks of %q concatenate to %q", text, b.String())
		}
		if want := len(strings.Fields(text)); words != want || countWords(text) != want {
			t.Fatalf("%q: chunks hold %d words, countWords %d, strings.Fields %d", text, words, countWords(text), want)
		}
	})
}
