package billing

import (
	"testing"
	"time"
)

// TestBucketKeysCache: the cached bucket keys are bucketKey's, across
// hour, day, month and year boundaries and past the cache's bound.
func TestBucketKeysCache(t *testing.T) {
	t.Parallel()
	var keys bucketKeys
	base := time.Date(2026, 12, 31, 22, 59, 59, 999_999_999, time.UTC)
	times := []time.Time{
		base, base.Add(time.Nanosecond), base.Add(time.Hour), base.Add(2 * time.Hour),
		time.Date(2027, 1, 1, 0, 0, 0, 0, time.FixedZone("ahead", 5*3600)), // 2026-12-31 19:00 UTC
		time.Date(1969, 12, 31, 23, 30, 0, 0, time.UTC),                    // before 1970: not cached
	}
	for round := range 2 { // the second round reads from the cache
		for _, tenant := range []string{"t1", "t2"} {
			for _, at := range times {
				for _, kind := range bucketKinds {
					if got, want := keys.key(tenant, kind, at), bucketKey(tenant, kind, at); got != want {
						t.Fatalf("round %d: key(%s, %s, %v) = %q, want %q", round, tenant, kind, at, got, want)
					}
				}
			}
		}
	}
	for i := range maxBucketKeys + 10 {
		at := base.Add(time.Duration(i) * time.Hour)
		if got, want := keys.key("t", "h", at), bucketKey("t", "h", at); got != want {
			t.Fatalf("key %d = %q, want %q", i, got, want)
		}
	}
	if n := len(keys.m); n > maxBucketKeys {
		t.Fatalf("cache holds %d keys, bound %d", n, maxBucketKeys)
	}
}
