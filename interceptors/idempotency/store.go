package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Entry is what is kept for one tenant+key.
type Entry struct {
	// Done is false while the first request runs.
	Done bool `json:"done"`
	// RequestHash identifies the request (method and body) the key was used with.
	RequestHash string    `json:"request_hash"`
	Started     time.Time `json:"started"`
	// Messages are the response (unary: one) or the stream's messages, as
	// serialised google.protobuf.Any.
	Messages [][]byte `json:"messages,omitempty"`
	// TooLarge marks a response that was not kept because of its size.
	TooLarge bool `json:"too_large,omitempty"`
	// UsageID is the id the run's usage events were billed under; replays
	// carry it so they are not billed again (interceptors.Tags.UsageID).
	UsageID string `json:"usage_id,omitempty"`
}

// Store keeps entries for TTL.
type Store interface {
	// Claim stores e under key unless the key is taken by a live entry, in
	// which case it returns that entry and claimed=false. A running entry
	// older than staleAfter (its replica died) is taken over.
	Claim(ctx context.Context, key string, e Entry, staleAfter time.Duration) (existing *Entry, claimed bool, err error)
	// Complete replaces the running entry with the finished one.
	Complete(ctx context.Context, key string, e Entry) error
	// Release forgets key (the request failed; a retry runs it afresh).
	Release(ctx context.Context, key string) error
}

// ErrUnavailable is returned when the store cannot be reached.
var ErrUnavailable = errors.New("idempotency store is unavailable")

// Memory is the in-process Store.
type Memory struct {
	mu      sync.Mutex
	ttl     time.Duration
	now     func() time.Time
	entries map[string]memEntry
}

type memEntry struct {
	e       Entry
	expires time.Time
}

// NewMemory returns an empty store keeping entries for ttl.
func NewMemory(ttl time.Duration) *Memory {
	return &Memory{ttl: ttl, now: time.Now, entries: map[string]memEntry{}}
}

// Claim implements Store.
func (m *Memory) Claim(_ context.Context, key string, e Entry, staleAfter time.Duration) (*Entry, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.expire(now)
	if cur, ok := m.entries[key]; ok {
		if cur.e.Done || now.Sub(cur.e.Started) < staleAfter {
			c := cur.e
			return &c, false, nil
		}
	}
	m.entries[key] = memEntry{e: e, expires: now.Add(m.ttl)}
	return nil, true, nil
}

// Complete implements Store.
func (m *Memory) Complete(_ context.Context, key string, e Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries[key] = memEntry{e: e, expires: m.now().Add(m.ttl)}
	return nil
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, key)
	return nil
}

// expire drops old entries; called under the lock on every claim, so the
// map never outgrows a day's worth of keys.
func (m *Memory) expire(now time.Time) {
	for k, v := range m.entries {
		if now.After(v.expires) {
			delete(m.entries, k)
		}
	}
}

// Bucket is the KV bucket of the JetStream store.
const Bucket = "kgent-idempotency"

// JetStream is the Store shared by every replica: a KV bucket whose TTL is
// the replay window. Claims are atomic creates, so two replicas receiving
// the same key at once cannot both run the request.
type JetStream struct {
	js        jetstream.JetStream
	replicas  int
	ttl       time.Duration
	connected func() bool

	mu sync.Mutex
	kv jetstream.KeyValue
}

// NewJetStream returns a store on js; its bucket is created on first use.
func NewJetStream(js jetstream.JetStream, replicas int, ttl time.Duration) *JetStream {
	return &JetStream{js: js, replicas: max(replicas, 1), ttl: ttl}
}

// FailFast makes operations answer ErrUnavailable at once while connected
// reports false.
func (s *JetStream) FailFast(connected func() bool) *JetStream {
	s.connected = connected
	return s
}

// EnsureResources creates or updates the bucket.
func (s *JetStream) EnsureResources(ctx context.Context) error {
	_, err := s.bucket(ctx)
	return err
}

func (s *JetStream) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if s.connected != nil && !s.connected() {
		return nil, fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       Bucket,
		Description:  "Idempotency-Key replays: <sha256(tenant,key)>",
		History:      1,
		TTL:          s.ttl,
		Storage:      jetstream.FileStorage,
		Replicas:     s.replicas,
		MaxValueSize: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.kv = kv
	return kv, nil
}

// Claim implements Store.
func (s *JetStream) Claim(ctx context.Context, key string, e Entry, staleAfter time.Duration) (*Entry, bool, error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return nil, false, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, false, err
	}
	for attempt := 0; attempt < 4; attempt++ {
		if _, err := kv.Create(ctx, key, b); err == nil {
			return nil, true, nil
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		cur, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile: try again
		}
		if err != nil {
			return nil, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		var existing Entry
		if err := json.Unmarshal(cur.Value(), &existing); err != nil {
			return nil, false, fmt.Errorf("stored idempotency entry is corrupt: %w", err)
		}
		if existing.Done || time.Since(existing.Started) < staleAfter {
			return &existing, false, nil
		}
		// Take over a running entry whose replica died.
		if _, err := kv.Update(ctx, key, b, cur.Revision()); err == nil {
			return nil, true, nil
		}
	}
	return nil, false, fmt.Errorf("%w: contention on an idempotency key", ErrUnavailable)
}

// Complete implements Store.
func (s *JetStream) Complete(ctx context.Context, key string, e Entry) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// Release implements Store.
func (s *JetStream) Release(ctx context.Context, key string) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	if err := kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}
