package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// IdempotencyTTL is how long a processed webhook event id is remembered
// (Stripe retries a failed delivery for up to three days, but a delivery it
// already got a 2xx for is not resent; 24 h covers manual resends and
// replays of the stream).
const IdempotencyTTL = 24 * time.Hour

// Idempotency remembers which Stripe events were applied, in a store every
// replica shares: JetStream KV (bucket kgent-stripe-events-seen, TTL 24 h)
// or Redis (SET NX EX) when REDIS_URL is set.
type Idempotency interface {
	// Seen reports whether id was marked.
	Seen(ctx context.Context, id string) (bool, error)
	// Mark records id for IdempotencyTTL; first is false when it already was.
	Mark(ctx context.Context, id string) (first bool, err error)
}

// ---- JetStream KV ----

// SeenBucket holds applied event ids.
const SeenBucket = "kgent-stripe-events-seen"

type kvIdempotency struct {
	js       jetstream.JetStream
	replicas int
	ttl      time.Duration
	mu       sync.Mutex
	kv       jetstream.KeyValue
}

// NewKVIdempotency is the JetStream KV store (created on first use).
func NewKVIdempotency(js jetstream.JetStream, replicas int, ttl time.Duration) Idempotency {
	if ttl <= 0 {
		ttl = IdempotencyTTL
	}
	return &kvIdempotency{js: js, replicas: max(1, replicas), ttl: ttl}
}

func (k *kvIdempotency) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kv != nil {
		return k.kv, nil
	}
	kv, err := k.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: SeenBucket, Description: "Stripe webhook event ids already applied (kgentsd billing lifecycle)",
		TTL: k.ttl, History: 1, Storage: jetstream.FileStorage, Replicas: k.replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("idempotency bucket %s: %w", SeenBucket, err)
	}
	k.kv = kv
	return kv, nil
}

func (k *kvIdempotency) Seen(ctx context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	kv, err := k.bucket(ctx)
	if err != nil {
		return false, err
	}
	_, err = kv.Get(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

func (k *kvIdempotency) Mark(ctx context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	kv, err := k.bucket(ctx)
	if err != nil {
		return false, err
	}
	_, err = kv.Create(ctx, id, []byte(time.Now().UTC().Format(time.RFC3339)))
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// ---- Redis ----

type redisIdempotency struct {
	c   redis.UniversalClient
	ttl time.Duration
}

// RedisKeyPrefix + event id is the Redis key of an applied event.
const RedisKeyPrefix = "kgents:stripe:event:"

// NewRedisIdempotency is the Redis store on client c.
func NewRedisIdempotency(c redis.UniversalClient, ttl time.Duration) Idempotency {
	if ttl <= 0 {
		ttl = IdempotencyTTL
	}
	return &redisIdempotency{c: c, ttl: ttl}
}

// OpenRedis connects to REDIS_URL and checks the connection.
func OpenRedis(ctx context.Context, url string) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, errors.New("REDIS_URL: not a valid Redis URL") // never echo it: it may hold a password
	}
	c := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("REDIS_URL: %s unreachable: %w", opts.Addr, err)
	}
	return c, nil
}

func (r *redisIdempotency) Seen(ctx context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	n, err := r.c.Exists(ctx, RedisKeyPrefix+id).Result()
	return n > 0, err
}

func (r *redisIdempotency) Mark(ctx context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	return r.c.SetNX(ctx, RedisKeyPrefix+id, "1", r.ttl).Result()
}

// ---- memory (NATS disabled, one replica) ----

type memIdempotency struct {
	mu  sync.Mutex
	ttl time.Duration
	at  map[string]time.Time
}

// NewMemoryIdempotency is a one-process store.
func NewMemoryIdempotency(ttl time.Duration) Idempotency {
	if ttl <= 0 {
		ttl = IdempotencyTTL
	}
	return &memIdempotency{ttl: ttl, at: map[string]time.Time{}}
}

func (m *memIdempotency) Seen(_ context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.at[id]
	return ok && time.Since(t) < m.ttl, nil
}

func (m *memIdempotency) Mark(_ context.Context, id string) (bool, error) {
	if err := checkEventID(id); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for k, t := range m.at {
		if now.Sub(t) >= m.ttl {
			delete(m.at, k)
		}
	}
	if _, ok := m.at[id]; ok {
		return false, nil
	}
	m.at[id] = now
	return true, nil
}

func validID(id string) bool { return checkEventID(id) == nil }

// checkEventID accepts Stripe's ids ("evt_" + alphanumerics), which are
// safe as KV keys, Redis keys and NATS message ids.
func checkEventID(id string) error {
	if id == "" || len(id) > 255 {
		return fmt.Errorf("invalid Stripe event id %q", id)
	}
	for _, r := range id {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' && r != '-' {
			return fmt.Errorf("invalid Stripe event id %q", id)
		}
	}
	return nil
}

// ---- subscriptions: order and last known state ----

// SubscriptionsBucket holds, per Stripe subscription, the created time of
// the last event applied (events older than it are ignored) and the
// subscription as that event showed it.
const SubscriptionsBucket = "kgent-stripe-subscriptions"

// SubscriptionRecord is one subscription's stored state.
type SubscriptionRecord struct {
	TenantID     string       `json:"tenant_id"`
	LastCreated  int64        `json:"last_created"` // unix seconds of the newest event applied
	LastEventID  string       `json:"last_event_id"`
	Subscription Subscription `json:"subscription"`
}

// Subscriptions stores SubscriptionRecords by subscription id. Only the
// webhook applier writes it (one event at a time across replicas).
type Subscriptions interface {
	Get(ctx context.Context, id string) (*SubscriptionRecord, error) // nil, nil when none
	Put(ctx context.Context, id string, r *SubscriptionRecord) error
}

type kvSubscriptions struct {
	js       jetstream.JetStream
	replicas int
	mu       sync.Mutex
	kv       jetstream.KeyValue
}

// NewKVSubscriptions is the JetStream KV store (created on first use).
func NewKVSubscriptions(js jetstream.JetStream, replicas int) Subscriptions {
	return &kvSubscriptions{js: js, replicas: max(1, replicas)}
}

func (k *kvSubscriptions) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kv != nil {
		return k.kv, nil
	}
	kv, err := k.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: SubscriptionsBucket, Description: "Stripe subscriptions: last applied event and state (kgentsd billing lifecycle)",
		History: 1, Storage: jetstream.FileStorage, Replicas: k.replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("subscriptions bucket %s: %w", SubscriptionsBucket, err)
	}
	k.kv = kv
	return kv, nil
}

func (k *kvSubscriptions) Get(ctx context.Context, id string) (*SubscriptionRecord, error) {
	if !validID(id) {
		return nil, nil // not a Stripe id: nothing stored under it
	}
	kv, err := k.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r SubscriptionRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("subscription record %s is corrupt: %w", id, err)
	}
	return &r, nil
}

func (k *kvSubscriptions) Put(ctx context.Context, id string, r *SubscriptionRecord) error {
	if err := checkEventID(id); err != nil {
		return err
	}
	kv, err := k.bucket(ctx)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	_, err = kv.Put(ctx, id, b)
	return err
}

type memSubscriptions struct {
	mu sync.Mutex
	m  map[string]SubscriptionRecord
}

// NewMemorySubscriptions is a one-process store.
func NewMemorySubscriptions() Subscriptions {
	return &memSubscriptions{m: map[string]SubscriptionRecord{}}
}

func (m *memSubscriptions) Get(_ context.Context, id string) (*SubscriptionRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.m[id]
	if !ok {
		return nil, nil
	}
	return &r, nil
}

func (m *memSubscriptions) Put(_ context.Context, id string, r *SubscriptionRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m[id] = *r
	return nil
}
