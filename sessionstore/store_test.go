package sessionstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// implementations runs the same contract against every Store.
func implementations(t *testing.T) map[string]func(t *testing.T) sessionstore.Store {
	return map[string]func(t *testing.T) sessionstore.Store{
		"memory": func(*testing.T) sessionstore.Store { return sessionstore.NewMemory() },
		"jetstream": func(t *testing.T) sessionstore.Store {
			srv := natstest.Start(t)
			_, js := srv.Connect(t)
			s := sessionstore.NewJetStream(js, 1)
			if err := s.EnsureResources(context.Background()); err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

func newSession(tenant string, created time.Time) *sessionsv1.Session {
	return &sessionsv1.Session{
		Id: uuid.NewString(), TenantId: tenant, AgentType: "kgent",
		Status:    sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE,
		CreatedAt: timestamppb.New(created),
	}
}

func TestStoreContract(t *testing.T) {
	t.Parallel()
	for name, mk := range implementations(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := mk(t)
			base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			tenantA, tenantB := uuid.NewString(), uuid.NewString()

			var ids []string
			for i := 0; i < 5; i++ {
				sess := newSession(tenantA, base.Add(time.Duration(i)*time.Minute))
				sess.Title = proto.String(fmt.Sprintf("t%d", i))
				r, err := s.Create(ctx, sess)
				if err != nil {
					t.Fatal(err)
				}
				if r.Revision == 0 || !proto.Equal(r.Session, sess) {
					t.Fatalf("Create returned %+v", r)
				}
				ids = append(ids, sess.GetId())
			}
			other := newSession(tenantB, base)
			if _, err := s.Create(ctx, other); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(ctx, other); !errors.Is(err, sessionstore.ErrExists) {
				t.Errorf("second Create: %v, want ErrExists", err)
			}

			// Tenant isolation: another tenant's session does not exist.
			if _, err := s.Get(ctx, tenantA, other.GetId()); !errors.Is(err, sessionstore.ErrNotFound) {
				t.Errorf("cross-tenant Get: %v, want ErrNotFound", err)
			}
			// Newest first, paged, total counts all.
			page, total, err := s.List(ctx, tenantA, 1, 2)
			if err != nil || total != 5 || len(page) != 2 || page[0].GetTitle() != "t3" || page[1].GetTitle() != "t2" {
				t.Fatalf("List(1,2) = %v titles, total %d, err %v", titles(page), total, err)
			}
			if page, total, _ := s.List(ctx, tenantB, 0, 20); total != 1 || len(page) != 1 {
				t.Errorf("tenant B sees %d/%d", len(page), total)
			}
			if page, _, _ := s.List(ctx, tenantA, 10, 20); len(page) != 0 {
				t.Errorf("offset past the end returned %d", len(page))
			}

			// Update with compare-and-set under contention: every increment lands.
			var wg sync.WaitGroup
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := s.Update(ctx, tenantA, ids[0], func(r *sessionstore.Record) error {
						r.Session.MessageCount++
						r.EventSeq++
						return nil
					}); err != nil {
						t.Errorf("Update: %v", err)
					}
				}()
			}
			wg.Wait()
			r, err := s.Get(ctx, tenantA, ids[0])
			if err != nil || r.Session.GetMessageCount() != 8 || r.EventSeq != 8 {
				t.Fatalf("after 8 concurrent updates: %+v %v", r, err)
			}
			abort := errors.New("abort")
			if _, err := s.Update(ctx, tenantA, ids[0], func(r *sessionstore.Record) error {
				r.Session.MessageCount = 999
				return abort
			}); !errors.Is(err, abort) {
				t.Errorf("aborted Update: %v", err)
			}
			if r, _ := s.Get(ctx, tenantA, ids[0]); r.Session.GetMessageCount() != 8 {
				t.Errorf("aborted Update changed the record: %d", r.Session.GetMessageCount())
			}
			if _, err := s.Update(ctx, tenantB, ids[0], func(*sessionstore.Record) error { return nil }); !errors.Is(err, sessionstore.ErrNotFound) {
				t.Errorf("cross-tenant Update: %v", err)
			}
			// Turn markers survive a round trip.
			turn := &sessionstore.Turn{ID: "t1", Started: base, Replica: "r1"}
			if _, err := s.Update(ctx, tenantA, ids[1], func(r *sessionstore.Record) error { r.Turn = turn; return nil }); err != nil {
				t.Fatal(err)
			}
			if r, _ := s.Get(ctx, tenantA, ids[1]); r.Turn == nil || *r.Turn != *turn {
				t.Errorf("turn = %+v", r.Turn)
			}

			// Transcript: numbered, ranged, write-once per number.
			msgAt := func(i int) *sessionsv1.Message {
				return &sessionsv1.Message{Id: fmt.Sprintf("m%d-%s", i, ids[2]), SessionId: ids[2], Role: sessionsv1.Role_ROLE_USER,
					Content: fmt.Sprintf("message %d", i), CreatedAt: timestamppb.New(base)}
			}
			for i := 0; i < 7; i++ {
				if i == 5 {
					continue // a number with no message (a reply never stored)
				}
				if err := s.AppendMessage(ctx, tenantA, i, msgAt(i)); err != nil {
					t.Fatal(err)
				}
				if i == 3 { // a retried append is not stored twice
					if err := s.AppendMessage(ctx, tenantA, i, msgAt(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := s.AppendMessage(ctx, tenantA, 3, msgAt(9)); !errors.Is(err, sessionstore.ErrConflict) {
				t.Errorf("another message under a taken number: %v, want ErrConflict", err)
			}
			msgs, err := s.Messages(ctx, tenantA, ids[2], 2, 5)
			if err != nil || len(msgs) != 3 || msgs[0].GetContent() != "message 2" || msgs[2].GetContent() != "message 4" {
				t.Fatalf("Messages(2,5) = %v err %v", contents(msgs), err)
			}
			if msgs, err := s.Messages(ctx, tenantA, ids[2], 4, 8); err != nil || len(msgs) != 2 || msgs[1].GetContent() != "message 6" {
				t.Fatalf("Messages(4,8) over a missing number = %v err %v", contents(msgs), err)
			}
			last, err := sessionstore.LastMessages(ctx, s, tenantA, ids[2], 7, 2)
			if err != nil || len(last) != 1 || last[0].GetContent() != "message 6" {
				t.Errorf("LastMessages = %v %v", contents(last), err)
			}
			if msgs, err := s.Messages(ctx, tenantA, ids[3], 0, 50); err != nil || len(msgs) != 0 {
				t.Errorf("empty transcript: %v %v", msgs, err)
			}
			if _, err := s.Messages(ctx, tenantA, ids[3], 0, sessionstore.MaxMessagesRead+1); err == nil {
				t.Error("an unbounded read was accepted")
			}
		})
	}
}

func TestJetStreamSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx := context.Background()
	tenant := uuid.NewString()
	sess := newSession(tenant, time.Now())
	{
		_, js := srv.Connect(t)
		s := sessionstore.NewJetStream(js, 1)
		if _, err := s.Create(ctx, sess); err != nil {
			t.Fatal(err)
		}
		if err := s.AppendMessage(ctx, tenant, 0, &sessionsv1.Message{Id: "m1", SessionId: sess.GetId(), Content: "kept"}); err != nil {
			t.Fatal(err)
		}
	}
	srv.Restart()
	_, js := srv.Connect(t)
	s := sessionstore.NewJetStream(js, 1)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := s.Get(ctx, tenant, sess.GetId())
	if err != nil || r.Session.GetId() != sess.GetId() {
		t.Fatalf("after restart: %v %v", r, err)
	}
	msgs, err := s.Messages(ctx, tenant, sess.GetId(), 0, 10)
	if err != nil || len(msgs) != 1 || msgs[0].GetContent() != "kept" {
		t.Fatalf("transcript after restart: %v %v", contents(msgs), err)
	}
}

func TestJetStreamUnavailable(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	s := sessionstore.NewJetStream(js, 1)
	if err := s.EnsureResources(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := s.Get(ctx, uuid.NewString(), uuid.NewString())
	if !errors.Is(err, sessionstore.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get with NATS down: %v, want ErrUnavailable", err)
	}
}

func titles(s []*sessionsv1.Session) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x.GetTitle()
	}
	return out
}

func contents(m []*sessionsv1.Message) []string {
	out := make([]string, len(m))
	for i, x := range m {
		out[i] = x.GetContent()
	}
	return out
}

// AppendAtEnd stores a message past every number in use, including the two
// places of a turn in flight, and counts it.
func TestStoreAppendAtEnd(t *testing.T) {
	t.Parallel()
	for name, mk := range implementations(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := mk(t)
			tenant := uuid.NewString()
			sess := newSession(tenant, time.Now())
			if _, err := s.Create(ctx, sess); err != nil {
				t.Fatal(err)
			}
			msg := func(c string) *sessionsv1.Message {
				return &sessionsv1.Message{Id: uuid.NewString(), SessionId: sess.GetId(), Role: sessionsv1.Role_ROLE_ASSISTANT, Content: c}
			}
			if err := s.AppendMessage(ctx, tenant, 0, msg("first")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Update(ctx, tenant, sess.GetId(), func(r *sessionstore.Record) error {
				r.Session.MessageCount = 1
				r.Turn = &sessionstore.Turn{ID: "in-flight", FirstMessage: 1, Expires: time.Now().Add(time.Minute)}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			n, err := s.AppendAtEnd(ctx, tenant, msg("moved"))
			if err != nil || n != 3 {
				t.Fatalf("AppendAtEnd = %d, %v; want 3 (after the turn in flight's places 1 and 2)", n, err)
			}
			rec, err := s.Get(ctx, tenant, sess.GetId())
			if err != nil || rec.Session.GetMessageCount() != 4 {
				t.Fatalf("message_count %d (%v), want 4", rec.Session.GetMessageCount(), err)
			}
			got, err := s.Messages(ctx, tenant, sess.GetId(), 0, 4)
			if err != nil || len(got) != 2 || got[1].GetContent() != "moved" {
				t.Fatalf("transcript %v (%v)", contents(got), err)
			}
			if _, err := s.AppendAtEnd(ctx, tenant, &sessionsv1.Message{Id: uuid.NewString(), SessionId: uuid.NewString()}); !errors.Is(err, sessionstore.ErrNotFound) {
				t.Errorf("AppendAtEnd to a missing session: %v, want ErrNotFound", err)
			}
		})
	}
}
