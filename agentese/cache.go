package agentese

import (
	"container/list"
	"strings"
	"sync"
	"time"

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

// resultCache is a bounded LRU with a TTL, for Cacheable aspects. Keys carry
// the tenant and archetype, so no tenant ever sees another's entry (not even
// through timing). Cached values are shared and must not be modified; the
// transport only marshals them.
type resultCache struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	byKey map[string]*list.Element
	order *list.List // of *cacheEntry, most recently used at the front
}

type cacheEntry struct {
	key     string
	val     *structpb.Value
	expires time.Time
}

func newResultCache(size int, ttl time.Duration) *resultCache {
	if size <= 0 || ttl <= 0 {
		return nil
	}
	return &resultCache{ttl: ttl, max: size, byKey: map[string]*list.Element{}, order: list.New()}
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
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	ce := e.Value.(*cacheEntry)
	if !now.Before(ce.expires) {
		c.order.Remove(e)
		delete(c.byKey, key)
		return nil, false
	}
	c.order.MoveToFront(e)
	return ce.val, true
}

func (c *resultCache) put(key string, v *structpb.Value, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		ce := e.Value.(*cacheEntry)
		ce.val, ce.expires = v, now.Add(c.ttl)
		c.order.MoveToFront(e)
		return
	}
	for c.order.Len() >= c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.byKey, old.Value.(*cacheEntry).key)
	}
	c.byKey[key] = c.order.PushFront(&cacheEntry{key: key, val: v, expires: now.Add(c.ttl)})
}

func (c *resultCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
