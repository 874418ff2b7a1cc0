package agentese

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// osa is the textbook optimal-string-alignment distance, for checking the
// banded one.
func osa(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

func TestEditDistanceMatchesTextbook(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	word := func() string {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = "abc."[rng.IntN(4)]
		}
		return string(b)
	}
	var rows [3][]int
	for range 20000 {
		a, b, limit := word(), word(), rng.IntN(5)
		want := osa(a, b)
		if want > limit {
			want = limit + 1
		}
		if got := editDistance(a, b, limit, &rows); got != want {
			t.Fatalf("editDistance(%q, %q, %d) = %d, want %d", a, b, limit, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	cands := []string{"self.soul.challenge", "world.house.build", "world.house.manifest"}
	for in, want := range map[string]string{
		"world.house.manifest":   "world.house.manifest",
		" WORLD.HOUSE.MANIFEST ": "world.house.manifest",
		"world/house/manifest":   "world.house.manifest",
		"world.house":            "world.house.manifest",
		"world.house.build.now":  "world.house.build",
		"wrold.house.manifest":   "world.house.manifest",
		"self.soul.challenge()":  "self.soul.challenge",
		"self.soul.chalenge":     "self.soul.challenge",
		"world.house; rm -rf /":  "",
		"concept.justice.define": "",
		"":                       "",
		strings.Repeat("x", 600): "",
	} {
		if got := suggest(in, cands); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuote(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"house":                  `"house"`,
		"a\x00b":                 `"a\x00b"`,
		"\u0430":                 `"\u0430"`,
		"\x1b[31m":               `"\x1b[31m"`,
		strings.Repeat("a", 100): `"` + strings.Repeat("a", 64) + `"...`,
		// A cut never splits a rune.
		strings.Repeat("a", 63) + "\u0430": `"` + strings.Repeat("a", 63) + `"...`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestTenantStoreAndCacheBounds(t *testing.T) {
	t.Parallel()
	s := newTenantStore(3)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		slotOf(s.get(id), "x", func() *int { v := 1; return &v })
	}
	if s.len() != 3 {
		t.Fatalf("tenants held: %d", s.len())
	}
	c := newResultCache(2, time.Minute)
	now := time.Now()
	for _, k := range []string{"a", "b", "c"} {
		c.put(k, str(k), now)
	}
	if _, ok := c.get("a", now); ok || c.len() != 2 {
		t.Fatalf("cache holds %d, a present %v", c.len(), ok)
	}
	if _, ok := c.get("c", now.Add(time.Minute)); ok {
		t.Fatal("expired entry served")
	}
	if newResultCache(0, time.Minute) != nil || newResultCache(1, 0) != nil {
		t.Fatal("a zero-sized cache exists")
	}
	if k, ok := cacheKey("t", "a", "p", nil); !ok || k != "t\x00a\x00p\x00" {
		t.Fatalf("cacheKey without kwargs: %q", k)
	}
}

func TestBuiltinsAreRegistered(t *testing.T) {
	t.Parallel()
	if n := len(BuiltinNodes(Deps{})); n != 22 {
		t.Fatalf("%d built-in nodes", n)
	}
}
