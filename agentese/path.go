package agentese

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Grammar limits.
const (
	// MaxSegments is the most segments a path may have.
	MaxSegments = 8
	// MaxPathLen is the longest path, in bytes (all of them ASCII).
	MaxPathLen = 256
)

// The five contexts, in their documented order.
const (
	ContextWorld   = "world"
	ContextSelf    = "self"
	ContextConcept = "concept"
	ContextVoid    = "void"
	ContextTime    = "time"
)

// contexts is immutable: read it through Contexts or isContext.
var contexts = [...]string{ContextWorld, ContextSelf, ContextConcept, ContextVoid, ContextTime}

// Contexts lists the five contexts.
func Contexts() []string { return append([]string(nil), contexts[:]...) }

func isContext(s string) bool {
	for _, c := range contexts {
		if c == s {
			return true
		}
	}
	return false
}

// The grammar, restated in every syntax error so a caller can fix the path
// without the docs.
const (
	grammarHelp = "AGENTESE paths are lowercase segments [a-z][a-z0-9_]* joined by dots, " +
		"at most 8 segments and 256 characters, starting with a context (world, self, concept, void, time)"
	nodeHelp   = "a node path is context.holon, for example world.house"
	aspectHelp = "an aspect path is context.holon.aspect, for example world.house.manifest"
)

// Path is a parsed, valid AGENTESE path. Its segments share the input's
// memory; parsing allocates nothing.
type Path struct {
	raw string
	n   int
	seg [MaxSegments]string
}

// String is the path as written (it is already canonical).
func (p Path) String() string { return p.raw }

// Len is the number of segments.
func (p Path) Len() int { return p.n }

// Segment returns segment i (0 is the context), or "" out of range.
func (p Path) Segment(i int) string {
	if i < 0 || i >= p.n {
		return ""
	}
	return p.seg[i]
}

// Segments returns a copy of the segments.
func (p Path) Segments() []string { return append([]string(nil), p.seg[:p.n]...) }

// Context is the first segment.
func (p Path) Context() string { return p.seg[0] }

// Holon is the second segment ("" for a bare context).
func (p Path) Holon() string { return p.Segment(1) }

// Aspect is the last segment of an aspect path.
func (p Path) Aspect() string { return p.Segment(p.n - 1) }

// Node is the node path of an aspect path: every segment but the last.
func (p Path) Node() Path {
	if p.n <= 1 {
		return p
	}
	q := p
	q.n--
	q.seg[q.n] = ""
	q.raw = p.raw[:len(p.raw)-len(p.seg[p.n-1])-1]
	return q
}

// Parse parses any path of at least one segment: the grammar, then the context.
func Parse(s string) (Path, error) { return parse(s, 1) }

// ParseNode parses a node path (context.holon[.more]).
func ParseNode(s string) (Path, error) { return parse(s, 2) }

// ParseAspect parses an aspect path (context.holon[.more].aspect).
func ParseAspect(s string) (Path, error) { return parse(s, 3) }

// parse checks the grammar in one pass over at most MaxPathLen bytes (the
// length is checked first, so a huge input costs nothing), then the segment
// count, then the context. minSegs is 1, 2 or 3.
func parse(s string, minSegs int) (Path, error) {
	var p Path
	if s == "" {
		return p, syntaxError(s, "the path is empty", minSegs)
	}
	if len(s) > MaxPathLen {
		return p, syntaxError(s, fmt.Sprintf("it is %d bytes long; the limit is %d", len(s), MaxPathLen), minSegs)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			if msg := checkByte(s, i, i == start); msg != "" {
				return p, syntaxError(s, msg, minSegs)
			}
			continue
		}
		if i == start {
			return p, syntaxError(s, fmt.Sprintf("segment %d is empty (a leading or trailing dot, or two dots in a row)", p.n+1), minSegs)
		}
		if p.n == MaxSegments {
			return p, syntaxError(s, fmt.Sprintf("it has more than %d segments", MaxSegments), minSegs)
		}
		p.seg[p.n] = s[start:i]
		p.n++
		start = i + 1
	}
	p.raw = s
	if p.n < minSegs {
		return Path{}, tooShort(p, minSegs)
	}
	if !isContext(p.seg[0]) {
		e := newError(KindNotFound, fmt.Sprintf("Path not found: unknown context %s in %s.", quote(p.seg[0]), quote(s)))
		e.Options, e.OptionsLabel = Contexts(), "valid contexts"
		return Path{}, e
	}
	return p, nil
}

// checkByte returns what is wrong with s[i] inside a segment ("" if nothing).
func checkByte(s string, i int, first bool) string {
	c := s[i]
	switch {
	case c >= 'a' && c <= 'z':
		return ""
	case (c >= '0' && c <= '9') || c == '_':
		if first {
			return fmt.Sprintf("a segment must start with a letter a-z, not %s (position %d)", describeChar(s, i), i+1)
		}
		return ""
	}
	hint := ""
	if c >= utf8.RuneSelf {
		hint = "; look-alike letters from other alphabets are not accepted"
	}
	return fmt.Sprintf("%s at position %d is not allowed (only a-z, 0-9, '_' and '.'%s)", describeChar(s, i), i+1, hint)
}

// describeChar names the character at byte i safely: printable ASCII as
// itself, everything else (NUL, controls, look-alike letters such as
// Cyrillic 'а') by code point.
func describeChar(s string, i int) string {
	c := s[i]
	switch {
	case c >= 'A' && c <= 'Z':
		return fmt.Sprintf("uppercase %q", c)
	case c >= 0x21 && c < 0x7f:
		return fmt.Sprintf("character %q", c)
	case c == ' ':
		return "a space"
	case c < utf8.RuneSelf:
		return fmt.Sprintf("control character U+%04X", c)
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError {
		return "an invalid UTF-8 byte"
	}
	return fmt.Sprintf("non-ASCII character U+%04X", r)
}

func syntaxError(s, why string, minSegs int) *Error {
	help := grammarHelp
	switch minSegs {
	case 2:
		help += "; " + nodeHelp
	case 3:
		help += "; " + aspectHelp
	}
	return newError(KindSyntax, fmt.Sprintf("Invalid path %s: %s. %s.", quote(s), why, help))
}

func tooShort(p Path, minSegs int) *Error {
	var why string
	switch {
	case minSegs == 3 && p.n == 2:
		why = fmt.Sprintf("Path must include aspect: %s names a node; add the aspect to perform, for example %s.manifest", quote(p.raw), p.raw)
	case minSegs == 3:
		why = fmt.Sprintf("Path must include aspect: %s names only a context; %s", quote(p.raw), aspectHelp)
	default:
		why = fmt.Sprintf("Invalid path %s: it names only a context; %s", quote(p.raw), nodeHelp)
	}
	e := newError(KindSyntax, why+".")
	return e
}

// normalize is the path a caller probably meant: trimmed, lowercased, with
// '/' and ':' read as dots and stray dots removed. Used only for suggestions.
func normalize(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.NewReplacer("/", ".", ":", ".", " ", "", "-", "_").Replace(s)
	for strings.Contains(s, "..") {
		s = strings.ReplaceAll(s, "..", ".")
	}
	return strings.Trim(s, ".")
}
