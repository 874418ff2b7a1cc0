package sessionstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// Sessions stored by the previous layout (one transcript subject per
// session, no listing index) are listed and readable after Migrate, which
// two replicas may run at once, and which a rerun leaves alone.
func TestMigrateLegacyLayout(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := sessionstore.NewJetStream(js, 1), sessionstore.NewJetStream(js, 1)
	if err := a.EnsureResources(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, sessionstore.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	tenant := uuid.NewString()
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 3 {
		sess := newSession(tenant, base.Add(time.Duration(i)*time.Hour))
		sess.MessageCount = 2
		ids = append(ids, sess.GetId())
		raw, err := apijson.Marshal(sess)
		if err != nil {
			t.Fatal(err)
		}
		old, _ := json.Marshal(map[string]any{"session": json.RawMessage(raw), "event_seq": 5})
		if _, err := kv.Create(ctx, tenant+"."+sess.GetId(), old); err != nil {
			t.Fatal(err)
		}
		for j, role := range []sessionsv1.Role{sessionsv1.Role_ROLE_USER, sessionsv1.Role_ROLE_ASSISTANT} {
			m := &sessionsv1.Message{Id: uuid.NewString(), SessionId: sess.GetId(), Role: role,
				Content: fmt.Sprintf("s%d m%d", i, j), CreatedAt: timestamppb.New(base)}
			b, _ := apijson.Marshal(m)
			// The old subject, and a copy stored twice by a spool replay.
			for range 1 + j {
				if _, err := js.Publish(ctx, "kgent.transcript."+tenant+"."+sess.GetId(), b); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if page, total, err := a.List(ctx, tenant, 0, 10); err != nil || total != 0 || len(page) != 0 {
		t.Fatalf("before the migration the old sessions are not listed: %d/%d %v", len(page), total, err)
	}
	errs := make(chan error, 2)
	for _, s := range []*sessionstore.JetStream{a, b} {
		go func() { _, err := s.Migrate(ctx); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	page, total, err := a.List(ctx, tenant, 0, 10)
	if err != nil || total != 3 || len(page) != 3 || page[0].GetId() != ids[2] || page[2].GetId() != ids[0] {
		t.Fatalf("after the migration: %v total %d %v, want the 3 sessions newest first", page, total, err)
	}
	for i, id := range ids {
		msgs, err := a.Messages(ctx, tenant, id, 0, 10)
		if err != nil || len(msgs) != 2 || msgs[0].GetContent() != fmt.Sprintf("s%d m0", i) || msgs[1].GetContent() != fmt.Sprintf("s%d m1", i) {
			t.Fatalf("transcript of %s after the migration: %v %v", id, contents(msgs), err)
		}
		if r, err := a.Get(ctx, tenant, id); err != nil || r.Session.GetMessageCount() != 2 || r.EventSeq != 5 {
			t.Fatalf("record after the migration: %+v %v", r, err)
		}
	}
	if n, err := a.Migrate(ctx); err != nil || n != 0 {
		t.Fatalf("a second migration did %d (%v), want nothing", n, err)
	}
	if srv.Consumers() != 0 {
		t.Fatalf("the migration left %d consumers", srv.Consumers())
	}
}
