package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming"
)

// InflightBucket is the KV bucket of the calls in flight: the durable
// record that a long call is running and what it has served so far, so
// that a replica killed mid-call (kill -9, OOM, a lost node) does not lose
// its usage events with it (docs/billing.md, "What can be lost").
const InflightBucket = "kgent-metering-inflight"

// inflightTTL bounds how long a record outlives its last heartbeat if no
// replica sweeps it (every replica with metering does).
const inflightTTL = time.Hour

// InflightRecord is one call in flight, as its replica last wrote it: the
// usage events the call would emit if it ended at Beat — its api.request
// (as interrupted: UNAVAILABLE, 503, the duration so far) and what the
// services recorded so far — with the ids its real end would give them.
// Whoever finds the record stale emits Events as they are: if the call did
// end after all, its own events carry the same ids for what both hold, and
// the pipeline and OpenMeter drop the copies.
type InflightRecord struct {
	Owner string `json:"owner"` // the replica's name (logs only)
	// Process is the writing process's random id: its own sweeper skips
	// the record.
	Process string    `json:"process,omitempty"`
	Tenant  string    `json:"tenant"`
	Method  string    `json:"method"`
	Start   time.Time `json:"start"`
	Beat    time.Time `json:"beat"`
	// Events are structured-mode CloudEvents (Marshal), in emission order.
	Events [][]byte `json:"events"`
}

// StaleInflight is a record whose replica stopped refreshing it.
type StaleInflight struct {
	Key      string
	Record   InflightRecord
	Revision uint64
}

// Inflight is the store of InflightRecords, shared by every replica.
type Inflight struct {
	js       jetstream.JetStream
	replicas int

	mu sync.Mutex
	kv jetstream.KeyValue
}

// NewInflight returns the store; its bucket is created on first use.
func NewInflight(js jetstream.JetStream, replicas int) *Inflight {
	return &Inflight{js: js, replicas: max(replicas, 1)}
}

func (s *Inflight) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       InflightBucket,
		Description:  "kgents: usage of calls in flight, billed by a sweeper if their replica dies",
		History:      1,
		TTL:          inflightTTL,
		Storage:      jetstream.FileStorage,
		Replicas:     s.replicas,
		MaxValueSize: 1 << 20,
	})
	if err != nil {
		return nil, err
	}
	s.kv = kv
	return kv, nil
}

// EnsureResources creates or updates the bucket (every replica, at start
// and on every reconnect; idempotent).
func (s *Inflight) EnsureResources(ctx context.Context) error {
	_, err := s.bucket(ctx)
	return err
}

// Put writes (or refreshes) the record of call key.
func (s *Inflight) Put(ctx context.Context, key string, r InflightRecord) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, key, b)
	return err
}

// Delete forgets call key (it ended, and its own events are on their way).
func (s *Inflight) Delete(ctx context.Context, key string) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	if err := kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	return nil
}

// Stale lists the records not refreshed since before cutoff. It reads the
// bucket's stream by direct get (each key's one retained message), not
// with ListKeys, whose ordered consumer would be a consumer created and
// deleted on the server every sweep of every replica.
func (s *Inflight) Stale(ctx context.Context, cutoff time.Time) ([]StaleInflight, error) {
	if _, err := s.bucket(ctx); err != nil {
		return nil, err
	}
	var out []StaleInflight
	var bad error
	_, _, err := streaming.ReadFrom(ctx, s.js, "KV_"+InflightBucket, inflightSubjects, 1, maxInflightRead,
		func(m *jetstream.RawStreamMsg) bool {
			if op := m.Header.Get(kvOperationHeader); op != "" {
				return true // a delete or purge marker: no record
			}
			key := strings.TrimPrefix(m.Subject, inflightSubjectPrefix)
			var r InflightRecord
			if err := json.Unmarshal(m.Data, &r); err != nil {
				bad = fmt.Errorf("inflight record %s is corrupt: %w", key, err)
				return false
			}
			if r.Beat.Before(cutoff) {
				out = append(out, StaleInflight{Key: key, Record: r, Revision: m.Sequence})
			}
			return true
		})
	if err == nil {
		err = bad
	}
	return out, err
}

// The inflight bucket's stream subjects, and the KV operation header a
// delete or purge marker carries (a record has none).
const (
	inflightSubjectPrefix = "$KV." + InflightBucket + "."
	inflightSubjects      = inflightSubjectPrefix + ">"
	kvOperationHeader     = "KV-Operation"
	// maxInflightRead bounds one sweep's read: far more calls than a
	// cluster runs at once for longer than a second.
	maxInflightRead = 100_000
)

// Claim removes a stale record if nobody refreshed or removed it since it
// was listed; false when another replica got there first (or it revived).
func (s *Inflight) Claim(ctx context.Context, st StaleInflight) (bool, error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return false, err
	}
	err = kv.Delete(ctx, st.Key, jetstream.LastRevision(st.Revision))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	default:
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return false, nil
		}
		return false, err
	}
}
