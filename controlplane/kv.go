package controlplane

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A bucket is the little of a JetStream KV bucket the control plane uses,
// with an in-memory twin. Keys are KV-safe ([-_=.A-Za-z0-9]).
type bucket interface {
	Get(ctx context.Context, key string) (entry, error) // errNoKey
	// Create writes key only if it has no live value (errKeyExists).
	Create(ctx context.Context, key string, val []byte) (uint64, error)
	// Update writes key only if its revision is still rev (errConflict).
	Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error)
	// Delete removes key if its revision is still rev (0: any).
	Delete(ctx context.Context, key string, rev uint64) error
	// Watch calls put for every live value with a revision after from and
	// every later change, in revision order, and caughtUp once the values
	// stored when it started have been delivered. It returns when ctx ends
	// or the watch breaks (an error to restart it after).
	Watch(ctx context.Context, from uint64, put func(entry), caughtUp func()) error
}

type entry struct {
	key     string
	value   []byte
	rev     uint64
	deleted bool
}

var (
	errNoKey     = errors.New("no such key")
	errKeyExists = errors.New("key exists")
	errConflict  = errors.New("revision conflict")
)

// memBucket is the in-memory twin: a revision log, like a KV stream.
type memBucket struct {
	mu     sync.Mutex
	rev    uint64
	cur    map[string]entry
	log    []entry
	notify chan struct{}
}

func newMemBucket() *memBucket {
	return &memBucket{cur: map[string]entry{}, notify: make(chan struct{})}
}

func (b *memBucket) write(key string, val []byte, deleted bool) uint64 {
	b.rev++
	e := entry{key: key, value: append([]byte(nil), val...), rev: b.rev, deleted: deleted}
	b.cur[key] = e
	b.log = append(b.log, e)
	close(b.notify)
	b.notify = make(chan struct{})
	return b.rev
}

func (b *memBucket) Get(_ context.Context, key string) (entry, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.cur[key]
	if !ok || e.deleted {
		return entry{}, errNoKey
	}
	return e, nil
}

func (b *memBucket) Create(_ context.Context, key string, val []byte) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.cur[key]; ok && !e.deleted {
		return 0, errKeyExists
	}
	return b.write(key, val, false), nil
}

func (b *memBucket) Update(_ context.Context, key string, val []byte, rev uint64) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.cur[key]; !ok || e.rev != rev {
		return 0, errConflict
	}
	return b.write(key, val, false), nil
}

func (b *memBucket) Delete(_ context.Context, key string, rev uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.cur[key]
	if !ok || e.deleted {
		return nil
	}
	if rev != 0 && e.rev != rev {
		return errConflict
	}
	b.write(key, nil, true)
	return nil
}

func (b *memBucket) Watch(ctx context.Context, from uint64, put func(entry), caughtUp func()) error {
	b.mu.Lock()
	pos := sort.Search(len(b.log), func(i int) bool { return b.log[i].rev > from })
	b.mu.Unlock()
	first := true
	for {
		b.mu.Lock()
		pending := append([]entry(nil), b.log[pos:]...)
		notify := b.notify
		b.mu.Unlock()
		pos += len(pending)
		for _, e := range pending {
			if first && e.deleted {
				continue
			}
			put(e)
		}
		if first {
			caughtUp()
			first = false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-notify:
		}
	}
}

// jsBucket is a JetStream KV bucket, created or updated on first use (and
// again after a reconnect: reset) so a replica that starts while NATS is
// away works once it is back.
type jsBucket struct {
	js        jetstream.JetStream
	cfg       jetstream.KeyValueConfig
	connected func() bool

	mu sync.Mutex
	kv jetstream.KeyValue
}

func newJSBucket(js jetstream.JetStream, name, desc string, replicas int, connected func() bool) *jsBucket {
	return &jsBucket{js: js, connected: connected, cfg: jetstream.KeyValueConfig{
		Bucket:       name,
		Description:  desc,
		History:      1,
		Storage:      jetstream.FileStorage,
		Replicas:     max(replicas, 1),
		MaxValueSize: 64 << 10,
	}}
}

// ensure creates or updates the bucket (idempotent on every replica).
func (b *jsBucket) ensure(ctx context.Context) (jetstream.KeyValue, error) {
	if b.connected != nil && !b.connected() {
		return nil, fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := b.js.CreateOrUpdateKeyValue(cctx, b.cfg)
	if err != nil {
		return nil, unavailable(ctx, fmt.Errorf("bucket %s: %w", b.cfg.Bucket, err))
	}
	b.kv = kv
	return kv, nil
}

// reset makes the next use ensure the bucket again (after a reconnect: the
// server may have lost it, e.g. an in-memory test server).
func (b *jsBucket) reset() {
	b.mu.Lock()
	b.kv = nil
	b.mu.Unlock()
}

func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*time.Second)
}

func (b *jsBucket) Get(ctx context.Context, key string) (entry, error) {
	kv, err := b.ensure(ctx)
	if err != nil {
		return entry{}, err
	}
	ctx2, cancel := opCtx(ctx)
	defer cancel()
	e, err := kv.Get(ctx2, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return entry{}, errNoKey
	}
	if err != nil {
		return entry{}, unavailable(ctx, err)
	}
	return entry{key: e.Key(), value: e.Value(), rev: e.Revision()}, nil
}

func (b *jsBucket) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	kv, err := b.ensure(ctx)
	if err != nil {
		return 0, err
	}
	ctx2, cancel := opCtx(ctx)
	defer cancel()
	rev, err := kv.Create(ctx2, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errKeyExists
	}
	if err != nil {
		return 0, unavailable(ctx, err)
	}
	return rev, nil
}

func (b *jsBucket) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	kv, err := b.ensure(ctx)
	if err != nil {
		return 0, err
	}
	ctx2, cancel := opCtx(ctx)
	defer cancel()
	n, err := kv.Update(ctx2, key, val, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errConflict
	}
	if err != nil {
		return 0, unavailable(ctx, err)
	}
	return n, nil
}

func (b *jsBucket) Delete(ctx context.Context, key string, rev uint64) error {
	kv, err := b.ensure(ctx)
	if err != nil {
		return err
	}
	ctx2, cancel := opCtx(ctx)
	defer cancel()
	var opts []jetstream.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err = kv.Delete(ctx2, key, opts...)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return errConflict
	}
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

func (b *jsBucket) Watch(ctx context.Context, from uint64, put func(entry), caughtUp func()) error {
	b.reset() // a watch (re)starts after a reconnect: make sure the bucket exists
	kv, err := b.ensure(ctx)
	if err != nil {
		return err
	}
	var opts []jetstream.WatchOpt
	if from > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(from+1))
	}
	w, err := kv.WatchAll(ctx, opts...)
	if err != nil {
		return unavailable(ctx, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch ended")
			}
			if e == nil {
				caughtUp()
				continue
			}
			put(entry{key: e.Key(), value: e.Value(), rev: e.Revision(), deleted: e.Operation() != jetstream.KeyValuePut})
		}
	}
}

// unavailable classifies a NATS failure: the caller's own ended context
// stays a context error; anything else means NATS is unavailable.
func unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
