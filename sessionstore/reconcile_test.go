package sessionstore_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
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
			connA, pubA, storeA := startReplica(ctx, t, proxy.URL(), nil)

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

// startReplica connects a replica to url with its own spool and the
// session store's resolver, as kgentsd wires them; connected, when set,
// stands in for the connection's state as the store sees it.
func startReplica(ctx context.Context, t *testing.T, url string, connected func() bool) (*streaming.Conn, *streaming.Publisher, *sessionstore.Resilient) {
	t.Helper()
	conn, err := streaming.Connect(ctx, streaming.Options{Enabled: true, Servers: []string{url}, Name: "replica-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if connected == nil {
		connected = conn.Connected
	}
	inner := sessionstore.NewJetStream(conn.JetStream(), 1).FailFast(connected)
	pub, err := streaming.NewPublisher(conn, streaming.PublisherOptions{SpoolDir: t.TempDir(), Resolve: inner.Resolver(slog.Default())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close(context.Background()) })
	return conn, pub, sessionstore.NewResilient(inner, pub, 16).WithElectionWait(0)
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

// A record write from the cache that JetStream answers after all and
// refuses (the record moved on: another replica took the lease) is applied
// again to the stored record, by compare-and-set: the caller's fn sees the
// lease taken, nothing is counted as lost, and the caller is never told it
// holds a lease it does not.
func TestRefusedDirectRecordWriteRunsAgainOnTheStoredRecord(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	storeB := sessionstore.NewJetStream(js, 1)
	if err := storeB.EnsureResources(ctx); err != nil {
		t.Fatal(err)
	}
	var armed atomic.Bool
	var calls atomic.Int32
	// The KV looks unreachable for the first two checks of one Update (the
	// failed compare-and-set and the outage test), then reachable again.
	connected := func() bool {
		if armed.Load() && calls.Add(1) <= 2 {
			return false
		}
		return true
	}
	_, pubA, storeA := startReplica(ctx, t, srv.URL(), connected)

	tenant := uuid.NewString()
	sess := newSession(tenant, time.Now())
	if _, err := storeB.Create(ctx, sess); err != nil {
		t.Fatal(err)
	}
	if _, err := storeA.Get(ctx, tenant, sess.GetId()); err != nil {
		t.Fatal(err)
	}
	take := func(id string) func(r *sessionstore.Record) error {
		return func(r *sessionstore.Record) error {
			if r.Turn != nil {
				return errors.New("turn in flight")
			}
			r.Turn = &sessionstore.Turn{ID: id, Expires: time.Now().Add(time.Minute), FirstMessage: r.Session.GetMessageCount(), EventCeiling: r.EventSeq + 8}
			return nil
		}
	}
	if _, err := storeB.Update(ctx, tenant, sess.GetId(), take("b")); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	_, err := storeA.Update(ctx, tenant, sess.GetId(), take("a"))
	if err == nil || !strings.Contains(err.Error(), "turn in flight") {
		t.Errorf("A's lease update = %v, want fn's refusal (the lease is b's)", err)
	}
	if stored, _ := storeB.Get(ctx, tenant, sess.GetId()); stored.Turn == nil || stored.Turn.ID != "b" {
		t.Errorf("stored lease %+v, want b's", stored.Turn)
	}
	if d := pubA.Health().Dropped; d != 0 {
		t.Errorf("a merged write counted as dropped (%d): KgentsNATSWritesLost fires", d)
	}
}

// Settling the same refused message twice (a replay after a crash before
// the head checkpoint) stores it once, even past the duplicate window.
func TestRelocationIsIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	store := sessionstore.NewJetStream(js, 1)
	if err := store.EnsureResources(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, sessionstore.TranscriptsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Duplicates = time.Second // stands in for the 10 minutes passing
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	tenant := uuid.NewString()
	sess := newSession(tenant, time.Now())
	if _, err := store.Create(ctx, sess); err != nil {
		t.Fatal(err)
	}
	runTurn(ctx, t, store, tenant, sess.GetId(), "b", 5) // takes places 0, 1
	msg := &sessionsv1.Message{Id: uuid.NewString(), SessionId: sess.GetId(), Role: sessionsv1.Role_ROLE_USER, Content: "a user", CreatedAt: timestamppb.Now()}
	b, _ := apijson.Marshal(msg)
	m := &streaming.Message{Subject: sessionstore.TranscriptSubject(tenant, sess.GetId(), 0), Data: b, MsgID: msg.GetId(),
		Header: map[string]string{"Nats-Expected-Last-Subject-Sequence": "0"}}
	refused := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence"}
	resolve := store.Resolver(slog.Default())
	for i := range 2 {
		if err := resolve(ctx, m, refused); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			time.Sleep(1500 * time.Millisecond) // the duplicate window passes
		}
	}
	rec, _ := store.Get(ctx, tenant, sess.GetId())
	msgs, _ := store.Messages(ctx, tenant, sess.GetId(), 0, int(rec.Session.GetMessageCount()))
	n := 0
	for _, x := range msgs {
		if x.GetId() == msg.GetId() {
			n++
		}
	}
	if n != 1 || rec.Session.GetMessageCount() != 3 {
		t.Errorf("message stored %d times, message_count %d; want once, 3", n, rec.Session.GetMessageCount())
	}
}
