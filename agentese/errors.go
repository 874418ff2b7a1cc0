package agentese

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Kind is the class of an AGENTESE failure; the transport maps it to a
// status code (see Kind.String for the names used in stream error events).
type Kind uint8

// The kinds of failure.
const (
	// KindSyntax: the path breaks the grammar (400).
	KindSyntax Kind = iota + 1
	// KindArgument: bad kwargs, or a kwargs envelope over its limits (400).
	KindArgument
	// KindUnknownArchetype: the observer archetype is not one AGENTESE knows (400).
	KindUnknownArchetype
	// KindNotFound: unknown context or holon (404).
	KindNotFound
	// KindNotAfforded: the aspect is not afforded to the observer's archetype (403).
	KindNotAfforded
	// KindArchetypeDenied: the API key was not given the observer's archetype (403).
	KindArchetypeDenied
	// KindUnauthenticated: no caller identity in the context (401).
	KindUnauthenticated
	// KindPrecondition: the node's state does not allow the aspect now, for
	// example deploying what was never built (400).
	KindPrecondition
	// KindUnavailable: a backend the node needs is not configured (503).
	KindUnavailable
	// KindStream: a streamed aspect failed after its stream opened; Type
	// says how (from the backend, e.g. "llm_error", "timeout").
	KindStream
)

// String names a kind ("syntax", "not_found", ...).
func (k Kind) String() string {
	switch k {
	case KindSyntax:
		return "syntax"
	case KindArgument:
		return "invalid_argument"
	case KindUnknownArchetype:
		return "unknown_archetype"
	case KindNotFound:
		return "not_found"
	case KindNotAfforded:
		return "not_afforded"
	case KindArchetypeDenied:
		return "archetype_denied"
	case KindUnauthenticated:
		return "unauthenticated"
	case KindPrecondition:
		return "failed_precondition"
	case KindUnavailable:
		return "unavailable"
	case KindStream:
		return "stream"
	}
	return "unknown"
}

// Error is an AGENTESE failure. Its text is safe to return to the caller:
// input is echoed only through quote (escaped and truncated).
type Error struct {
	Kind Kind
	// Msg says what is wrong and, for syntax errors, restates the grammar.
	Msg string
	// Suggestion is the closest valid path, when there is one.
	Suggestion string
	// Options lists what exists or is allowed (contexts, holons,
	// affordances, archetypes), in a stable order.
	Options []string
	// OptionsLabel introduces Options in the text ("affordances for developer").
	OptionsLabel string
	// Type is a machine-readable failure type for stream error events
	// (KindStream only).
	Type string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Msg)
	if len(e.Options) > 0 {
		b.WriteString(" ")
		label := e.OptionsLabel
		if label == "" {
			label = "Available"
		}
		b.WriteString(strings.ToUpper(label[:1]) + label[1:])
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Options, ", "))
		b.WriteString(".")
	}
	if e.Suggestion != "" {
		b.WriteString(" Did you mean ")
		b.WriteString(strconv.Quote(e.Suggestion))
		b.WriteString("?")
	}
	return b.String()
}

// KindOf returns the kind of an AGENTESE error, or 0 for any other error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func newError(k Kind, msg string) *Error { return &Error{Kind: k, Msg: msg} }

// maxEcho is how much of a caller's input an error message repeats.
const maxEcho = 64

// quote renders caller input for an error message: at most maxEcho bytes (cut
// on a rune boundary), Go-quoted with every non-ASCII or non-printable
// character escaped, so NULs, control characters, look-alike letters and
// terminal escapes are visible and harmless.
func quote(s string) string {
	cut := false
	if len(s) > maxEcho {
		n := maxEcho
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s, cut = s[:n], true
	}
	q := strconv.QuoteToASCII(s)
	if cut {
		q += "..."
	}
	return q
}
