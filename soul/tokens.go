package soul

import (
	"unicode"
	"unicode/utf8"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// nextWord returns the next word of s at or after byte offset i, lower-cased
// into buf (whose storage it reuses), and the offset after it. A word is a
// maximal run of letters and digits, so "what's" is "what" then "s" and
// "abandoned" is one word: triggers and keywords match whole words only,
// never substrings. It returns an empty word once s is exhausted.
//
// Callers keep the returned slice as the next buf so a grown buffer is
// reused; with a stack buffer of typical word length nothing is allocated.
func nextWord(s string, i int, buf []byte) ([]byte, int) {
	buf = buf[:0]
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			if isASCIIAlnum(c) {
				buf = append(buf, asciiLower(c))
				continue
			}
			if len(buf) > 0 {
				return buf, i
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			buf = utf8.AppendRune(buf, unicode.ToLower(r))
			continue
		}
		if len(buf) > 0 {
			return buf, i
		}
	}
	return buf, i
}

func isASCIIAlnum(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// asciiSpace marks the ASCII whitespace of unicode.IsSpace.
var asciiSpace = [utf8.RuneSelf]bool{'\t': true, '\n': true, '\v': true, '\f': true, '\r': true, ' ': true}

// isSpaceRuneAt reports whether s starts with a whitespace rune beyond
// ASCII, and its width.
func isSpaceRuneAt(s string) (bool, int) {
	r, size := utf8.DecodeRuneInString(s)
	return unicode.IsSpace(r), size
}

// skipRun returns the end of the run of whitespace (space) or of
// non-whitespace (!space) that starts at byte offset i of s. Replies are
// almost all ASCII: its bytes are classified by table, inline.
func skipRun(s string, i int, space bool) int {
	for i < len(s) {
		if c := s[i]; c < utf8.RuneSelf {
			if asciiSpace[c] != space {
				return i
			}
			i++
			continue
		}
		sp, size := isSpaceRuneAt(s[i:])
		if sp != space {
			return i
		}
		i += size
	}
	return i
}

// countWords counts whitespace-separated words, as strings.Fields would,
// without allocating.
func countWords(s string) int {
	n := 0
	for i := skipRun(s, 0, true); i < len(s); i = skipRun(s, skipRun(s, i, false), true) {
		n++
	}
	return n
}

// estimateTokens estimates the tokens of a text of the given word count as
// ceil(words × 4 / 3): English prose averages about 0.75 words per BPE token
// (OpenAI's rule of thumb). It is used wherever no provider reported real
// usage: composed offline replies and providers that omit the usage report.
func estimateTokens(words int) int {
	return (4*words + 2) / 3
}

// FNV-1a, 64-bit. Inlined rather than hash/fnv so that choosing a template
// allocates nothing.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// pickHash deterministically seeds the template choices of one request: the
// same message, mode and budget always select the same texts, where the
// Python soul picked at random.
func pickHash(message string, mode soulv1.Mode, budget soulv1.Budget) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(message); i++ {
		h ^= uint64(message[i])
		h *= fnvPrime64
	}
	h ^= uint64(mode) & 0xff
	h *= fnvPrime64
	h ^= uint64(budget) & 0xff
	h *= fnvPrime64
	return h
}

// pick selects one of choices with the given selector. Different selectors
// (derived from one hash by shifting) keep independent choices independent.
func pick(choices []string, selector uint64) string {
	return choices[selector%uint64(len(choices))]
}

// EstimateTokens estimates the tokens of a text the way replies without a
// provider's usage report are counted (about 4 tokens per 3 words).
func EstimateTokens(text string) int { return estimateTokens(countWords(text)) }
