package soul

import (
	"slices"
	"strings"
	"testing"
)

func TestEigenvectors(t *testing.T) {
	t.Parallel()
	ev := Eigenvectors()
	got := []float64{ev.GetAesthetic(), ev.GetCategorical(), ev.GetGratitude(), ev.GetHeterarchy(), ev.GetGenerativity(), ev.GetJoy()}
	want := []float64{0.15, 0.92, 0.78, 0.88, 0.90, 0.75}
	if !slices.Equal(got, want) {
		t.Errorf("Eigenvectors = %v, want %v", got, want)
	}
	ev.Joy = 0 // callers own the message
	if Eigenvectors().GetJoy() != 0.75 {
		t.Error("Eigenvectors returned shared state")
	}
}

func TestMatchPersona(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		msg      string
		prefs    []string
		patterns []string
	}{
		{"nothing", "what a lovely day", nil, nil},
		{"empty", "", nil, nil},
		{"pattern", "I keep rewriting my framework", nil, []string{"tends to over-engineer before shipping"}},
		{"case-insensitive", "SIMPLE is better", []string{"minimalism"}, nil},
		{"punctuation splits words", "simple,clear;modular", []string{"minimalism", "clarity over cleverness", "composability"}, nil},
		{"whole words only: oversimple", "an oversimplified, unclearly modularised thing", nil, nil},
		{"abandoned is its own word", "I abandoned it", nil, []string{"starts new projects before finishing old ones"}},
		{"done is not abandoned", "I am done", nil, nil},
		{
			"at most three, in persona order",
			"simple clear modular ship team grateful fun rewrite projects taxonomy busy decide stuck",
			[]string{"minimalism", "clarity over cleverness", "composability"},
			[]string{"tends to over-engineer before shipping", "starts new projects before finishing old ones", "reaches for structure and categories first"},
		},
		{"unicode words", "Décidé? No: DECIDE!", nil, []string{"delays decisions to gather more information"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			prefs, patterns := MatchPersona(tt.msg)
			if prefs == nil || patterns == nil {
				t.Fatal("MatchPersona returned nil slices")
			}
			if !sameStrings(prefs, tt.prefs) {
				t.Errorf("preferences = %q, want %q", prefs, tt.prefs)
			}
			if !sameStrings(patterns, tt.patterns) {
				t.Errorf("patterns = %q, want %q", patterns, tt.patterns)
			}
		})
	}
}

// sameStrings compares slices, treating nil and empty alike.
func sameStrings(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || slices.Equal(a, b))
}

func TestMatchPersonaReturnsCallerOwnedSlices(t *testing.T) {
	t.Parallel()
	prefs, _ := MatchPersona("simple")
	prefs[0] = "mutated"
	if again, _ := MatchPersona("simple"); again[0] != "minimalism" {
		t.Errorf("persona table was modified through a returned slice: %q", again)
	}
}

func TestPersonaTablesFitMasks(t *testing.T) {
	t.Parallel()
	// Matches are bit masks in a uint32.
	for name, n := range map[string]int{"preferences": len(personaPreferences), "patterns": len(personaPatterns), "interests": len(personaInterests)} {
		if n == 0 || n > 32 {
			t.Errorf("%d %s: must be 1..32", n, name)
		}
	}
	if len(personaInterests) < 2 {
		t.Error("explore replies need at least two interests")
	}
	for _, p := range personaPatterns {
		if p.name == "" || !strings.HasPrefix(p.you, "you ") || !strings.HasSuffix(p.advice, ".") {
			t.Errorf("pattern %q: needs a name, a \"you …\" form and a sentence of advice", p.name)
		}
	}
}

func TestNextWord(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  \t ", nil},
		{"Hello", []string{"hello"}},
		{"What's up?", []string{"what", "s", "up"}},
		{"a1-b2/c3", []string{"a1", "b2", "c3"}},
		{"ÜBER café—Straße", []string{"über", "café", "straße"}},
		{"  trailing  spaces  ", []string{"trailing", "spaces"}},
		{strings.Repeat("x", 100), []string{strings.Repeat("x", 100)}}, // longer than the stack buffer
	}
	for _, tt := range tests {
		var got []string
		var buf [8]byte
		b := buf[:0]
		for i := 0; i < len(tt.in); {
			var w []byte
			w, i = nextWord(tt.in, i, b)
			if len(w) == 0 {
				break
			}
			b = w
			got = append(got, string(w))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("words(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCountWordsAndEstimate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		words    int
		estimate int
	}{
		{"", 0, 0},
		{"one", 1, 2},
		{"  one two\tthree\n", 3, 4},
		{"more—or less", 2, 3},
		{"a b c d e f", 6, 8},
		{"Nine words in this sentence make a typical question", 9, 12},
	}
	for _, tt := range tests {
		if got := countWords(tt.in); got != tt.words {
			t.Errorf("countWords(%q) = %d, want %d (strings.Fields says %d)", tt.in, got, tt.words, len(strings.Fields(tt.in)))
		}
		if got := estimateTokens(countWords(tt.in)); got != tt.estimate {
			t.Errorf("estimateTokens(%q) = %d, want %d", tt.in, got, tt.estimate)
		}
	}
}
