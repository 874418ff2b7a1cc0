package sessionstore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// BenchmarkStoreAtScale measures the session store's operations on a NATS
// server already holding 10k, 100k and 500k sessions (spread over 100
// tenants, each indexed, each with a two-message transcript): create, get,
// update, a listing page and a transcript page must cost the same at every
// size. The sizes are filled with raw asynchronous publishes of what Create
// and AppendMessage would write (a create at a time would take minutes).
//
//	go test -run '^$' -bench StoreAtScale -benchtime 2000x ./sessionstore/
//
// KGENTS_SCALE_SIZES=10000,100000 picks the sizes.
func BenchmarkStoreAtScale(b *testing.B) {
	sizes := []int{10_000, 100_000, 500_000}
	if v := os.Getenv("KGENTS_SCALE_SIZES"); v != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	srv := natstest.Start(b)
	_, js := srv.Connect(b)
	s := NewJetStream(js, 1)
	ctx := context.Background()
	if err := s.EnsureResources(ctx); err != nil {
		b.Fatal(err)
	}
	const tenants = 100
	tenantIDs := make([]string, tenants)
	for i := range tenantIDs {
		tenantIDs[i] = uuid.NewString()
	}
	filled := 0
	perTenant := make([]int, tenants)
	var probe Record  // the oldest session of tenant 0, for get/update/messages
	var recent Record // the newest, for a transcript page still in NATS's cache
	for _, size := range sizes {
		began := time.Now()
		filled = bulkFill(b, js, tenantIDs, perTenant, filled, size, &probe, &recent)
		b.Logf("filled to %d sessions in %v", size, time.Since(began).Round(time.Millisecond))
		tenant := tenantIDs[0]
		b.Run(fmt.Sprintf("sessions=%d/create", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Create(ctx, benchSession(tenant)); err != nil {
					b.Fatal(err)
				}
			}
			perTenant[0] += b.N
		})
		b.Run(fmt.Sprintf("sessions=%d/get", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Get(ctx, tenant, probe.Session.GetId()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sessions=%d/update", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Update(ctx, tenant, probe.Session.GetId(), func(r *Record) error {
					r.EventSeq++
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sessions=%d/list-page", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				page, total, err := s.List(ctx, tenant, 0, 20)
				if err != nil || len(page) != 20 || total < perTenant[0] {
					b.Fatalf("%d sessions of %d (want %d), %v", len(page), total, perTenant[0], err)
				}
			}
		})
		// A transcript page as ListMessages reads it: the messages the
		// session has (it never asks past message_count).
		b.Run(fmt.Sprintf("sessions=%d/messages-page", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				msgs, err := s.Messages(ctx, tenant, probe.Session.GetId(), 0, 2)
				if err != nil || len(msgs) != 2 {
					b.Fatalf("%d messages, %v", len(msgs), err)
				}
			}
		})
		// A recent session's page: its messages are in the stream's last
		// block, which the NATS server keeps in memory; an old session's
		// (above) are read from its block on disk, whatever the size.
		b.Run(fmt.Sprintf("sessions=%d/messages-page-recent", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				msgs, err := s.Messages(ctx, tenant, recent.Session.GetId(), 0, 2)
				if err != nil || len(msgs) != 2 {
					b.Fatalf("%d messages, %v", len(msgs), err)
				}
			}
		})
		// The same asking for 50 numbers of which 48 do not exist: the NATS
		// server's cost of a missing subject grows with the stream.
		b.Run(fmt.Sprintf("sessions=%d/messages-page-missing", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				msgs, err := s.Messages(ctx, tenant, probe.Session.GetId(), 0, 50)
				if err != nil || len(msgs) != 2 {
					b.Fatalf("%d messages, %v", len(msgs), err)
				}
			}
		})
	}
}

func benchSession(tenant string) *sessionsv1.Session {
	return &sessionsv1.Session{Id: uuid.NewString(), TenantId: tenant, Title: new("scale"), AgentType: "kgent",
		Status: sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE, CreatedAt: timestamppb.Now()}
}

// bulkFill writes sessions from `from` up to `to` the way Create and
// AppendMessage store them (record, index entry, head, two messages), with
// asynchronous publishes, round-robin over the tenants. probe is set to
// the first session of tenant 0 ever written, recent to the last.
func bulkFill(b *testing.B, js jetstream.JetStream, tenants []string, perTenant []int, from, to int, probe, recent *Record) int {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	pub := func(subject string, data []byte) {
		for {
			if _, err := js.PublishAsync(subject, data); err == nil {
				return
			}
			select { // too many in flight: let the acks catch up
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
		}
	}
	for i := from; i < to; i++ {
		t := i % len(tenants)
		tenant := tenants[t]
		r := &Record{Session: benchSession(tenant)}
		r.Session.MessageCount = 2
		rec, err := encodeRecord(r)
		if err != nil {
			b.Fatal(err)
		}
		pub(kvSubject(SessionsBucket, key(tenant, r.Session.GetId())), rec)
		perTenant[t]++
		n := perTenant[t]
		pub(kvSubject(IndexBucket, tenant+"."+strconv.Itoa(n)), []byte(r.Session.GetId()))
		if n%headEvery == 0 {
			pub(kvSubject(IndexBucket, headKey(tenant)), []byte(strconv.Itoa(n)))
		}
		for m := range 2 {
			msg := []byte(`{"id":"` + uuid.NewString() + `","session_id":"` + r.Session.GetId() + `","role":"user","content":"a message of a few words"}`)
			pub(TranscriptSubject(tenant, r.Session.GetId(), m), msg)
		}
		if t == 0 && probe.Session == nil {
			*probe = *r
		}
		if t == 0 {
			*recent = *r
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal(ctx.Err())
	}
	return to
}
