package sessionstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// Records written before layout 2 kept a session's whole transcript on one
// subject (kgent.transcript.<tenant>.<session>) and had no place in a
// listing index. Migrate brings them to layout 2 once per deployment: for
// each old session, in order of creation per tenant, it claims an ordinal,
// copies the transcript to numbered subjects (write-once, so a rerun after
// a crash copies nothing twice) and rewrites the record. Every replica may
// run it at start; a claim key per session (_m.<tenant>.<session>) lets
// exactly one of them index each session, and a marker (_migrated) makes
// later starts skip the scan. The old subjects are left in place.

const (
	migratedKey = "_migrated"
	migratedVal = "2"
)

func migrationClaim(tenantID, sessionID string) string { return "_m." + tenantID + "." + sessionID }

// legacySubject is where layout-1 records kept their transcript.
func legacySubject(tenantID, sessionID string) string {
	return transcriptRoot + "." + tenantID + "." + sessionID
}

// Migrate upgrades records of an older layout (see above). It reports how
// many sessions it migrated.
func (s *JetStream) Migrate(ctx context.Context) (int, error) {
	kv, index, err := s.resources(ctx)
	if err != nil {
		return 0, err
	}
	if e, err := index.Get(ctx, migratedKey); err == nil && string(e.Value()) == migratedVal {
		return 0, nil
	} else if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, unavailable(ctx, err)
	}
	old, err := s.legacyRecords(ctx, kv)
	if err != nil {
		return 0, err
	}
	for _, r := range old {
		if err := s.migrateOne(ctx, kv, index, r); err != nil {
			return 0, fmt.Errorf("migrating session %s: %w", r.Session.GetId(), err)
		}
	}
	if _, err := index.Put(ctx, migratedKey, []byte(migratedVal)); err != nil {
		return len(old), unavailable(ctx, err)
	}
	return len(old), nil
}

// legacyRecords reads every record of an older layout, oldest first per
// tenant (one watch over the bucket, stopped once the values are read).
func (s *JetStream) legacyRecords(ctx context.Context, kv jetstream.KeyValue) ([]*Record, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	defer func() { _ = w.Stop() }()
	var out []*Record
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("%w: session scan ended early", ErrUnavailable)
			}
			if e == nil {
				slices.SortStableFunc(out, func(a, b *Record) int {
					if c := cmp.Compare(a.Session.GetTenantId(), b.Session.GetTenantId()); c != 0 {
						return c
					}
					return a.Session.GetCreatedAt().AsTime().Compare(b.Session.GetCreatedAt().AsTime())
				})
				return out, nil
			}
			sr, err := decodeStored(e.Value())
			if err != nil || sr.V >= layout {
				continue
			}
			r, err := decodeRecord(e.Value(), e.Revision())
			if err != nil {
				continue
			}
			out = append(out, r)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *JetStream) migrateOne(ctx context.Context, kv jetstream.KeyValue, index jetstream.KeyValue, r *Record) error {
	tenant, id := r.Session.GetTenantId(), r.Session.GetId()
	if _, err := index.Create(ctx, migrationClaim(tenant, id), []byte("claimed")); err == nil {
		n, err := s.claimOrdinal(ctx, index, tenant, id)
		if err != nil {
			return err
		}
		if _, err := index.Put(ctx, migrationClaim(tenant, id), []byte(strconv.FormatUint(n, 10))); err != nil {
			return unavailable(ctx, err)
		}
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return unavailable(ctx, err)
	}
	// Copy the transcript, each message once, in order.
	seen := map[string]bool{}
	n := 0
	var copyErr error
	_, _, err := streaming.ReadFrom(ctx, s.js, TranscriptsStream, legacySubject(tenant, id), 1, MaxLegacyMessages, func(m *jetstream.RawStreamMsg) bool {
		msg := &sessionsv1.Message{}
		if apijson.Unmarshal(m.Data, msg) != nil || seen[msg.GetId()] {
			return true
		}
		seen[msg.GetId()] = true
		if copyErr = s.AppendMessage(ctx, tenant, n, msg); copyErr != nil {
			return false
		}
		n++
		return true
	})
	if err != nil {
		return unavailable(ctx, err)
	}
	if copyErr != nil {
		return copyErr
	}
	_, err = s.Update(ctx, tenant, id, func(rec *Record) error {
		rec.Unindexed = false
		rec.Session.MessageCount = max(rec.Session.GetMessageCount(), int32(n))
		if rec.Turn != nil && rec.Turn.EventCeiling == 0 {
			// An old turn marker: nothing of its turn lies past the copied
			// messages, and it reserved no event ids.
			rec.Turn.FirstMessage = int32(n)
			rec.Turn.EventCeiling = rec.EventSeq
		}
		return nil
	})
	return err
}

// MaxLegacyMessages bounds the transcript copied per old session.
const MaxLegacyMessages = 1 << 20
