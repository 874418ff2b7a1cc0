package soul

import (
	"strings"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// K-gent's personality coordinates, constants carried over from the Python
// soul (each in 0..1).
const (
	eigenAesthetic    = 0.15
	eigenCategorical  = 0.92
	eigenGratitude    = 0.78
	eigenHeterarchy   = 0.88
	eigenGenerativity = 0.90
	eigenJoy          = 0.75
)

// Eigenvectors returns K-gent's personality coordinates. It returns a new
// message on every call because protobuf messages are mutable and callers
// put them into responses.
func Eigenvectors() *soulv1.Eigenvectors {
	return &soulv1.Eigenvectors{
		Aesthetic:    eigenAesthetic,
		Categorical:  eigenCategorical,
		Gratitude:    eigenGratitude,
		Heterarchy:   eigenHeterarchy,
		Generativity: eigenGenerativity,
		Joy:          eigenJoy,
	}
}

// maxReferenced bounds the preferences and the patterns a reply reports.
const maxReferenced = 3

// preference is something the user values.
type preference struct {
	name     string   // as it reads after "you value …"
	advice   string   // a suggestion in its spirit, completing "Since you value X, …"
	keywords []string // whole lower-case words that bring it up
}

// pattern is a habit the user has noticed in themself.
type pattern struct {
	name     string // third person, as reported: "tends to …"
	you      string // second person, for replies: "you tend to …"
	advice   string // a counter-move, completing "Knowing that you tend to X, …"
	keywords []string
}

// interest is a topic the user is drawn to.
type interest struct {
	name     string
	keywords []string
}

// The persona seed: a hard-coded portrait in the spirit of the Python soul.
// Order matters: matches are reported in table order, which keeps replies
// deterministic. The tables are never modified after initialisation.
var (
	personaPreferences = []preference{
		{
			name:   "minimalism",
			advice: "choose the option with the fewest moving parts and see if it is enough.",
			keywords: []string{"simple", "simpler", "simplest", "simplicity", "simplify", "minimal", "minimalism",
				"minimalist", "lean", "clutter", "cluttered", "bloat", "bloated", "complex", "complexity", "complicated"},
		},
		{
			name:   "clarity over cleverness",
			advice: "write down the plain-language version first; if it is hard to explain, it is not ready.",
			keywords: []string{"clear", "clarity", "clever", "confusing", "confused", "unclear", "readable",
				"readability", "explain", "naming", "docs", "documentation", "understand"},
		},
		{
			name:   "composability",
			advice: "build the smallest piece that is useful on its own and make sure it fits with the next one.",
			keywords: []string{"compose", "composable", "composability", "modular", "module", "modules", "interface",
				"interfaces", "component", "components", "reuse", "reusable", "api", "pieces", "architecture", "design"},
		},
		{
			name:   "shipping over polishing",
			advice: "put a working version in front of someone this week and let their use decide what comes next.",
			keywords: []string{"ship", "shipping", "release", "launch", "deploy", "deadline", "mvp", "prototype",
				"polish", "polishing", "perfect", "perfection"},
		},
		{
			name:   "peer collaboration over hierarchy",
			advice: "bring it to the people involved as an open question rather than a decision handed down.",
			keywords: []string{"team", "teams", "manager", "boss", "hierarchy", "peer", "peers", "colleague",
				"colleagues", "collaborate", "collaboration", "leadership", "meeting", "meetings", "org"},
		},
		{
			name:   "gratitude for what you build on",
			advice: "name who and what made this possible before deciding what to change.",
			keywords: []string{"grateful", "gratitude", "appreciate", "appreciated", "mentor", "mentors",
				"community", "credit", "acknowledge", "lucky"},
		},
		{
			name:   "joy in the work",
			advice: "pick the version of this you would enjoy doing; energy is a resource too.",
			keywords: []string{"fun", "joy", "play", "playful", "enjoy", "enjoying", "boring", "bored", "burnout",
				"tired", "exhausted", "motivation", "motivated", "love"},
		},
	}

	personaPatterns = []pattern{
		{
			name:   "tends to over-engineer before shipping",
			you:    "you tend to over-engineer before shipping",
			advice: "ship the smallest version that works and let real use tell you what to build next.",
			keywords: []string{"engineer", "engineering", "overengineer", "overengineering", "framework",
				"frameworks", "refactor", "refactoring", "rewrite", "abstraction", "abstractions", "generic",
				"scale", "scalable", "scaling", "perfect"},
		},
		{
			name:   "starts new projects before finishing old ones",
			you:    "you tend to start new projects before finishing old ones",
			advice: "finish or explicitly drop one open project before you start this one.",
			keywords: []string{"project", "projects", "idea", "ideas", "start", "starting", "side",
				"finish", "finishing", "unfinished", "abandoned"},
		},
		{
			name:   "reaches for structure and categories first",
			you:    "you tend to reach for structure and categories first",
			advice: "try one concrete example end to end before designing the taxonomy.",
			keywords: []string{"category", "categories", "structure", "structures", "taxonomy", "model", "models",
				"theory", "organize", "organizing", "system", "systems", "types"},
		},
		{
			name:   "says yes to too many commitments",
			you:    "you tend to say yes to too many commitments",
			advice: "decide what you will stop doing to make room for this, and say so out loud.",
			keywords: []string{"busy", "overwhelmed", "commitment", "commitments", "schedule", "calendar",
				"priorities", "priority", "prioritize", "distracted", "overcommitted"},
		},
		{
			name:   "delays decisions to gather more information",
			you:    "you tend to delay decisions to gather more information",
			advice: "set a date, decide with what you know by then, and make the decision reversible if you can.",
			keywords: []string{"decide", "decision", "decisions", "choose", "choice", "option", "options",
				"unsure", "uncertain", "research", "information", "should"},
		},
		{
			name:     "goes quiet when stuck instead of asking for help",
			you:      "you tend to go quiet when stuck instead of asking for help",
			advice:   "write to one person today with the exact place you are stuck.",
			keywords: []string{"stuck", "blocked", "alone", "struggling", "lonely", "isolated"},
		},
	}

	personaInterests = []interest{
		{name: "category theory", keywords: []string{"category", "categories", "functor", "functors", "monad", "morphism", "composition"}},
		{name: "distributed systems", keywords: []string{"distributed", "consensus", "replication", "cluster", "nats", "streaming", "network"}},
		{name: "language design", keywords: []string{"language", "languages", "compiler", "parser", "syntax", "grammar"}},
		{name: "agent architectures", keywords: []string{"agent", "agents", "llm", "ai", "prompt", "prompts", "autonomy"}},
		{name: "developer tools", keywords: []string{"tool", "tools", "tooling", "cli", "editor", "workflow", "developer"}},
		{name: "generative art", keywords: []string{"art", "generative", "music", "creative", "drawing", "visual"}},
	}
)

// wordClass is what a word means to the template engine's trigger rules.
type wordClass uint8

const (
	classNone      wordClass = iota // not a trigger word
	classFiller                     // harmless in an otherwise trigger-only message ("there", "you", "good")
	classGreeting                   // hello, hi, hey…
	classMorning                    // greetings with a time of day
	classAfternoon                  //
	classEvening                    //
	classMode                       // reflect, advise, challenge, explore
	classSave                       // save, saved
	classFarewell                   // done, bye, goodbye
	classThanks                     // thanks (and "thank you", detected as a pair)
)

// vocabEntry is everything one word can trigger: its class for the template
// rules and the persona entries it brings up (bit i = table index i).
type vocabEntry struct {
	class     wordClass
	mode      soulv1.Mode // for classMode
	prefs     uint32
	patterns  uint32
	interests uint32
}

// vocabulary maps each known lower-case word to its entry, so analysing a
// message costs one map lookup per word. Built once at start-up and never
// written afterwards.
var vocabulary = buildVocabulary()

func buildVocabulary() map[string]vocabEntry {
	v := make(map[string]vocabEntry, 256)
	setClass := func(class wordClass, words ...string) {
		for _, w := range words {
			e := v[w]
			e.class = class
			v[w] = e
		}
	}
	setClass(classFiller, "there", "you", "good", "so", "much", "very", "ok", "okay", "all", "for", "now",
		"again", "a", "lot", "and", "mode", "please", "let", "lets", "s", "i", "m", "am", "me", "to", "we",
		"thank", "kgent", "k", "gent", "friend", "everyone", "folks", "oh", "well")
	setClass(classGreeting, "hello", "hi", "hey", "hiya", "howdy", "greetings")
	setClass(classMorning, "morning")
	setClass(classAfternoon, "afternoon")
	setClass(classEvening, "evening")
	setClass(classSave, "save", "saved")
	setClass(classFarewell, "done", "bye", "goodbye")
	setClass(classThanks, "thanks")
	for word, mode := range map[string]soulv1.Mode{
		"reflect": soulv1.Mode_MODE_REFLECT, "advise": soulv1.Mode_MODE_ADVISE,
		"challenge": soulv1.Mode_MODE_CHALLENGE, "explore": soulv1.Mode_MODE_EXPLORE,
	} {
		e := v[word]
		e.class, e.mode = classMode, mode
		v[word] = e
	}
	for i, p := range personaPreferences {
		for _, w := range p.keywords {
			e := v[w]
			e.prefs |= 1 << i
			v[w] = e
		}
	}
	for i, p := range personaPatterns {
		for _, w := range p.keywords {
			e := v[w]
			e.patterns |= 1 << i
			v[w] = e
		}
	}
	for i, in := range personaInterests {
		for _, w := range in.keywords {
			e := v[w]
			e.interests |= 1 << i
			v[w] = e
		}
	}
	return v
}

// greetingKind is which greeting a message opened with.
type greetingKind uint8

const (
	greetNone greetingKind = iota
	greetPlain
	greetMorning
	greetAfternoon
	greetEvening
)

// sessionKind is which session word a message used.
type sessionKind uint8

const (
	sessionNone sessionKind = iota
	sessionSave
	sessionFarewell
	sessionThanks
)

// analysis is what one pass over a message's words found.
type analysis struct {
	greeting greetingKind
	mode     soulv1.Mode // first mode word, MODE_UNSPECIFIED if none
	session  sessionKind
	// triggersOnly: the message has at least one trigger word and nothing
	// but trigger and filler words ("hello there", "thanks!", "explore").
	triggersOnly bool
	prefs        uint32
	patterns     uint32
	interests    uint32
}

func (a analysis) hasTrigger() bool {
	return a.greeting != greetNone || a.mode != soulv1.Mode_MODE_UNSPECIFIED || a.session != sessionNone
}

// analyze tokenises message once, matching whole words against the trigger
// vocabulary and the persona.
func analyze(message string) analysis {
	var a analysis
	var stack [48]byte
	buf := stack[:0]
	onlyKnown := true
	prevThank := false
	for i := 0; i < len(message); {
		var word []byte
		word, i = nextWord(message, i, buf)
		if len(word) == 0 {
			break
		}
		buf = word
		e, ok := vocabulary[string(word)] // no allocation: the compiler special-cases this lookup
		if !ok || e.class == classNone {
			onlyKnown = false
		}
		a.prefs |= e.prefs
		a.patterns |= e.patterns
		a.interests |= e.interests
		a.note(e, prevThank && string(word) == "you")
		prevThank = string(word) == "thank"
	}
	a.triggersOnly = onlyKnown && a.hasTrigger()
	return a
}

// note records the trigger a word carries. thankYou is true for the "you"
// of "thank you".
func (a *analysis) note(e vocabEntry, thankYou bool) {
	switch e.class {
	case classGreeting:
		if a.greeting == greetNone {
			a.greeting = greetPlain
		}
	case classMorning, classAfternoon, classEvening:
		// A time of day refines a plain greeting ("hi, good morning").
		if a.greeting == greetNone || a.greeting == greetPlain {
			a.greeting = greetingKind(e.class-classMorning) + greetMorning
		}
	case classMode:
		if a.mode == soulv1.Mode_MODE_UNSPECIFIED {
			a.mode = e.mode
		}
	case classSave:
		a.setSession(sessionSave)
	case classFarewell:
		a.setSession(sessionFarewell)
	case classThanks:
		a.setSession(sessionThanks)
	}
	if thankYou {
		a.setSession(sessionThanks)
	}
}

// setSession keeps the first session word seen.
func (a *analysis) setSession(k sessionKind) {
	if a.session == sessionNone {
		a.session = k
	}
}

// MatchPersona returns the known preferences and patterns (at most three
// each, in persona order) that message brings up. A preference or pattern
// matches when one of its keywords occurs in message as a whole word
// (case-insensitive; words are runs of letters and digits), so "abandoned"
// brings up "abandoned" but never "done". The slices are empty, not nil,
// when nothing matches, and are the caller's to keep.
func MatchPersona(message string) (preferences, patterns []string) {
	a := analyze(message)
	return preferenceNames(a.prefs), patternNames(a.patterns)
}

func preferenceNames(mask uint32) []string {
	out := make([]string, 0, min(bitCount(mask), maxReferenced))
	for i := 0; i < len(personaPreferences) && len(out) < maxReferenced; i++ {
		if mask&(1<<i) != 0 {
			out = append(out, personaPreferences[i].name)
		}
	}
	return out
}

func patternNames(mask uint32) []string {
	out := make([]string, 0, min(bitCount(mask), maxReferenced))
	for i := 0; i < len(personaPatterns) && len(out) < maxReferenced; i++ {
		if mask&(1<<i) != 0 {
			out = append(out, personaPatterns[i].name)
		}
	}
	return out
}

// firstSet returns the index of the lowest set bit of mask, or -1.
func firstSet(mask uint32) int {
	for i := 0; i < 32; i++ {
		if mask&(1<<i) != 0 {
			return i
		}
	}
	return -1
}

func bitCount(mask uint32) int {
	n := 0
	for ; mask != 0; mask &= mask - 1 {
		n++
	}
	return n
}

// personaSummary describes the persona for a model's system prompt.
func personaSummary() string {
	var b strings.Builder
	b.WriteString("Eigenvectors (0 to 1): aesthetic 0.15 (minimal, unornamented), categorical 0.92 " +
		"(thinks in structures and categories), gratitude 0.78, heterarchy 0.88 (peers over hierarchy), " +
		"generativity 0.90 (creates rather than curates), joy 0.75 (playful).\n")
	b.WriteString("They value: ")
	for i, p := range personaPreferences {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.name)
	}
	b.WriteString(".\nPatterns they have noticed in themselves: ")
	for i, p := range personaPatterns {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.name)
	}
	b.WriteString(".\nInterests: ")
	for i, in := range personaInterests {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(in.name)
	}
	b.WriteString(".\n")
	return b.String()
}
