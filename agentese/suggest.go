package agentese

// suggest returns the candidate closest to what the caller typed, or "" when
// nothing is close. It first tries the input trimmed and lowercased (and
// with '/' or ':' read as dots), exactly or as a prefix, then the smallest
// edit distance within a small bound. Candidates are sorted, so ties resolve the same way every time.
//
// The cost is bounded: inputs over twice MaxPathLen get no suggestion, and a
// candidate whose length differs from the input by more than the bound is
// skipped without computing anything.
func suggest(input string, candidates []string) string {
	if len(input) > 2*MaxPathLen {
		return ""
	}
	n := normalize(input)
	if n == "" {
		return ""
	}
	if c, ok := exactOrPrefix(n, candidates); ok {
		return c
	}
	limit := min(1+len(n)/8, 4)
	best, bestD := "", limit+1
	var rows [3][]int
	for _, c := range candidates {
		if d := editDistance(n, c, bestD-1, &rows); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// exactOrPrefix finds the normalised input itself, the input's manifest
// (a node path where an aspect path was needed), or the longest candidate
// the input extends (an aspect path where a node path was needed).
func exactOrPrefix(n string, candidates []string) (string, bool) {
	best := ""
	for _, c := range candidates {
		switch {
		case c == n:
			return c, true
		case c == n+"."+AspectManifest:
			return c, true
		case len(c) > len(best) && len(n) > len(c) && n[len(c)] == '.' && n[:len(c)] == c:
			best = c
		}
	}
	return best, best != ""
}

// editDistance is the optimal-string-alignment distance between a and b
// (insertions, deletions, substitutions and adjacent transpositions each
// cost 1), or limit+1 when it exceeds limit. Only the diagonal band of
// width 2·limit+1 is computed, so the cost is O(len(a)·limit). rows is
// scratch space reused across calls.
func editDistance(a, b string, limit int, rows *[3][]int) int {
	big := limit + 1
	if limit < 0 || len(a)-len(b) > limit || len(b)-len(a) > limit {
		return big
	}
	for i := range rows {
		if cap(rows[i]) < len(b)+2 {
			rows[i] = make([]int, len(b)+2)
		}
		rows[i] = rows[i][:len(b)+2]
	}
	prev2, prev, cur := rows[0], rows[1], rows[2]
	for j := range prev {
		prev[j] = big
		if j <= limit {
			prev[j] = j
		}
	}
	for i := 1; i <= len(a); i++ {
		lo, hi := max(1, i-limit), min(len(b), i+limit)
		cur[0] = big
		if i <= limit {
			cur[0] = i
		}
		if lo > 1 {
			cur[lo-1] = big // below the band: out of reach
		}
		rowMin := big
		if lo == 1 {
			rowMin = cur[0]
		}
		for j := lo; j <= hi; j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			v := min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				v = min(v, prev2[j-2]+1)
			}
			cur[j] = min(v, big)
			rowMin = min(rowMin, cur[j])
		}
		cur[hi+1] = big // above the band, for the next row
		if rowMin > limit {
			return big
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
