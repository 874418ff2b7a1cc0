package sessionstore_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// A replica cut off from NATS finishes a turn from its cache: its writes
// wait in its spool. Meanwhile another replica, seeing no turn, runs turns
// of its own on the same session and takes the same transcript places.
// When the first replica's spool is replayed, nothing acknowledged is
// lost: its messages move to the end of the transcript, and its record
// writes merge into the newer record instead of undoing it.
func TestSpooledTurnSettlesAfterOtherReplicasTurns(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		otherTurns int // turns the connected replica runs during the outage
	}{
		{name: "no other replica wrote", otherTurns: 0},
		{name: "another replica took the places", otherTurns: 1},
		{name: "another replica ran past them", otherTurns: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srv := natstest.Start(t)
			proxy := natstest.StartProxy(t)
			backend := strings.TrimPrefix(srv.URL(), "nats://")
			proxy.Route(backend, "")

			// Replica B: connected throughout, writing straight to JetStream.
			_, jsB := srv.Connect(t)
			storeB := sessionstore.NewJetStream(jsB, 1)
			if err := storeB.EnsureResources(ctx); err != nil {
				t.Fatal(err)
			}

			// Replica A: through the proxy, with its spool and the resolver.
			connA, err := streaming.Connect(ctx, streaming.Options{Enabled: true, Servers: []string{proxy.URL()}, Name: "replica-a"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { connA.Close(context.Background()) })
			innerA := sessionstore.NewJetStream(connA.JetStream(), 1).FailFast(connA.Connected)
			pubA, err := streaming.NewPublisher(connA, streaming.PublisherOptions{
				SpoolDir: t.TempDir(), Resolve: innerA.Resolver(slog.Default()),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = pubA.Close(context.Background()) })
			storeA := sessionstore.NewResilient(innerA, pubA, 16).WithElectionWait(0)

			tenant := uuid.NewString()
			sess := newSession(tenant, time.Now())
			if _, err := storeB.Create(ctx, sess); err != nil {
				t.Fatal(err)
			}
			if _, err := storeA.Get(ctx, tenant, sess.GetId()); err != nil { // now in A's cache
				t.Fatal(err)
			}

			proxy.Route("", "") // A is cut off
			waitFor(t, "replica A to see the outage", func() bool { return !connA.Connected() })

			var acked []string
			aTurn := runTurn(ctx, t, storeA, tenant, sess.GetId(), "a", 10)
			acked = append(acked, aTurn...)
			if h := pubA.Health(); h.SpoolDepth == 0 {
				t.Fatalf("replica A's turn was not spooled: %+v", h)
			}
			for i := range tc.otherTurns {
				acked = append(acked, runTurn(ctx, t, storeB, tenant, sess.GetId(), "b"+string(rune('0'+i)), 7)...)
			}

			proxy.Route(backend, "") // A is back: its spool is replayed
			waitFor(t, "replica A's spool to drain", func() bool {
				h := pubA.Health()
				return connA.Connected() && h.SpoolDepth == 0 && !h.Replaying
			})
			if h := pubA.Health(); h.Dropped != 0 {
				t.Errorf("replica A dropped %d spooled writes", h.Dropped)
			}

			rec, err := storeB.Get(ctx, tenant, sess.GetId())
			if err != nil {
				t.Fatal(err)
			}
			want := 2 * (1 + tc.otherTurns)
			if got := int(rec.Session.GetMessageCount()); got != want {
				t.Errorf("message_count %d, want %d", got, want)
			}
			if rec.Turn != nil {
				t.Errorf("a turn is still held: %+v", rec.Turn)
			}
			if rec.Session.GetTokensUsed() < 10 {
				t.Errorf("tokens_used %d went back below replica A's 10", rec.Session.GetTokensUsed())
			}
			msgs, err := storeB.Messages(ctx, tenant, sess.GetId(), 0, int(rec.Session.GetMessageCount()))
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for _, m := range msgs {
				seen[m.GetId()]++
			}
			for _, id := range acked {
				if seen[id] != 1 {
					t.Errorf("acknowledged message %s stored %d times, want once", id, seen[id])
				}
			}
			if len(msgs) != len(acked) {
				t.Errorf("transcript holds %d messages, want the %d acknowledged", len(msgs), len(acked))
			}
			if tc.otherTurns > 0 {
				// B's turns kept their places; A's moved after them.
				if got := msgs[0].GetContent(); got != "b0 user" {
					t.Errorf("first message %q, want replica B's", got)
				}
				if got := msgs[len(msgs)-1].GetContent(); got != "a reply" {
					t.Errorf("last message %q, want replica A's reply", got)
				}
			}
		})
	}
}

// runTurn runs one turn the way sessionsvc does: take the lease, store the
// user message and the reply, then count them and give the lease back. It
// returns the stored messages' ids.
func runTurn(ctx context.Context, t *testing.T, s sessionstore.Store, tenant, session, name string, tokens int32) []string {
	t.Helper()
	turnID := uuid.NewString()
	rec, err := s.Update(ctx, tenant, session, func(r *sessionstore.Record) error {
		r.Turn = &sessionstore.Turn{ID: turnID, Started: time.Now(), Expires: time.Now().Add(10 * time.Second),
			FirstMessage: r.Session.GetMessageCount(), EventCeiling: r.EventSeq + 8}
		return nil
	})
	if err != nil {
		t.Fatalf("turn %s: take the lease: %v", name, err)
	}
	first := int(rec.Turn.FirstMessage)
	var ids []string
	for i, m := range []*sessionsv1.Message{
		{Role: sessionsv1.Role_ROLE_USER, Content: name + " user"},
		{Role: sessionsv1.Role_ROLE_ASSISTANT, Content: name + " reply", TokensUsed: tokens},
	} {
		m.Id, m.SessionId, m.CreatedAt = uuid.NewString(), session, timestamppb.Now()
		if err := s.AppendMessage(ctx, tenant, first+i, m); err != nil {
			t.Fatalf("turn %s: message %d: %v", name, first+i, err)
		}
		ids = append(ids, m.GetId())
	}
	if _, err := s.Update(ctx, tenant, session, func(r *sessionstore.Record) error {
		r.Session.MessageCount = max(r.Session.GetMessageCount(), int32(first+2))
		r.Session.TokensUsed += tokens
		r.Session.LastMessageAt = timestamppb.Now()
		r.EventSeq = max(r.EventSeq, rec.Turn.EventCeiling)
		if r.Turn != nil && r.Turn.ID == turnID {
			r.Turn = nil
		}
		return nil
	}); err != nil {
		t.Fatalf("turn %s: release: %v", name, err)
	}
	return ids
}

// waitFor polls cond (every 10ms, up to 30s): the states waited for here
// (a reconnect, a replay) have no event to wait on from outside.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
