package agentese

import (
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Cache defaults: small, because only pure reads are cached and they are
// cheap to recompute; the cache exists so repeated reads are honestly
// reported as cached and cost nothing.
const (
	DefaultCacheSize = 1024
	DefaultCacheTTL  = time.Minute
	// maxCacheKwargs: invocations with larger kwargs are not cached (the key
	// would be as large as the kwargs).
	maxCacheKwargs = 1024
)

// resultCache is a bounded LRU (hashicorp/golang-lru) with a TTL, for
// Cacheable aspects. Keys carry the tenant and archetype, so no tenant ever
// sees another's entry (not even through timing). Cached values are shared
// and must not be modified; the transport only marshals them.
//
// The TTL is checked on read against the registry's clock, and an expired
// entry is dropped then (or pushed out by newer ones), rather than with
// golang-lru's expirable.LRU: that one reads time.Now (tests could not move
// its clock) and starts a sweeping goroutine per cache that never ends.
type resultCache struct {
	ttl time.Duration
	lru *lru.Cache[string, cacheEntry]
}

type cacheEntry struct {
	val     *structpb.Value
	expires time.Time
}

func newResultCache(size int, ttl time.Duration) *resultCache {
	if size <= 0 || ttl <= 0 {
		return nil
	}
	c, _ := lru.New[string, cacheEntry](size) // size > 0: no error
	return &resultCache{ttl: ttl, lru: c}
}

// cacheKey identifies an invocation; ok is false when it should not be cached.
func cacheKey(tenant, archetype, path string, kw *structpb.Struct) (string, bool) {
	var kb []byte
	if len(kw.GetFields()) > 0 {
		var err error
		kb, err = proto.MarshalOptions{Deterministic: true}.Marshal(kw)
		if err != nil || len(kb) > maxCacheKwargs {
			return "", false
		}
	}
	var b strings.Builder
	b.Grow(len(tenant) + len(archetype) + len(path) + len(kb) + 3)
	b.WriteString(tenant)
	b.WriteByte(0)
	b.WriteString(archetype)
	b.WriteByte(0)
	b.WriteString(path)
	b.WriteByte(0)
	b.Write(kb)
	return b.String(), true
}

func (c *resultCache) get(key string, now time.Time) (*structpb.Value, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		c.lru.Remove(key)
		return nil, false
	}
	return e.val, true
}

func (c *resultCache) put(key string, v *structpb.Value, now time.Time) {
	c.lru.Add(key, cacheEntry{val: v, expires: now.Add(c.ttl)})
}

func (c *resultCache) len() int { return c.lru.Len() }
