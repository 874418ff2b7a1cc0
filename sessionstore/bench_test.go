package sessionstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// A page of history costs the same at any offset, and a page of sessions
// the same whatever the tenant has: compare the sub-benchmarks' ns/op.
//
//	go test -run '^$' -bench 'Messages|List' -benchtime 2s ./sessionstore/
func BenchmarkMessagesPage(b *testing.B) {
	srv := natstest.Start(b)
	_, js := srv.Connect(b)
	s := sessionstore.NewJetStream(js, 1)
	ctx := context.Background()
	if err := s.EnsureResources(ctx); err != nil {
		b.Fatal(err)
	}
	tenant := uuid.NewString()
	sess := newSession(tenant, time.Now())
	if _, err := s.Create(ctx, sess); err != nil {
		b.Fatal(err)
	}
	const n = 2000
	fill(b, n, func(i int) error {
		return s.AppendMessage(ctx, tenant, i, &sessionsv1.Message{Id: uuid.NewString(), SessionId: sess.GetId(),
			Content: fmt.Sprintf("message %d with a few words of text", i), CreatedAt: timestamppb.Now()})
	})
	for _, offset := range []int{0, 1000, n - 50} {
		b.Run(fmt.Sprintf("offset=%d/limit=50", offset), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				msgs, err := s.Messages(ctx, tenant, sess.GetId(), offset, offset+50)
				if err != nil || len(msgs) != 50 {
					b.Fatalf("%d messages, %v", len(msgs), err)
				}
			}
		})
	}
}

func BenchmarkListSessions(b *testing.B) {
	srv := natstest.Start(b)
	_, js := srv.Connect(b)
	s := sessionstore.NewJetStream(js, 1)
	ctx := context.Background()
	if err := s.EnsureResources(ctx); err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{100, 10_000} {
		tenant := uuid.NewString()
		fill(b, size, func(int) error {
			_, err := s.Create(ctx, newSession(tenant, time.Now()))
			return err
		})
		b.Run(fmt.Sprintf("sessions=%d/limit=20", size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				page, total, err := s.List(ctx, tenant, 0, 20)
				if err != nil || len(page) != 20 || total != size {
					b.Fatalf("%d/%d, %v", len(page), total, err)
				}
			}
		})
	}
}

// fill runs fn for 0..n-1 on a few goroutines.
func fill(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
