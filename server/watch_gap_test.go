package server_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming"
)

// storeEvent stores a session event the way a replica's publisher does
// (every replica's hub also receives it live).
func storeEvent(t *testing.T, js jetstream.JetStream, ev *sessionsv1.SessionEvent) {
	t.Helper()
	b, err := streaming.EncodeEvent("tenant", ev)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(streaming.SessionSubject(ev.GetSessionId(), "chunk"))
	m.Data = b
	m.Header.Set(streaming.HeaderEventID, ev.GetId())
	m.Header.Set(nats.MsgIdHdr, streaming.EventMsgID(ev))
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func chunkEvent(session string, id uint64) *sessionsv1.SessionEvent {
	return &sessionsv1.SessionEvent{Id: strconv.FormatUint(id, 10), SessionId: session, Time: timestamppb.Now(),
		Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: "w", Index: int32(id)}}}
}

// TestWatchWaitsOutAGap: a watcher sends a session's events in id order.
// An event that arrives after a gap (its predecessor is still in another
// replica's spool) waits for the missing one; an interrupted turn's marker
// passes the dead turn's unused ids at once; a gap that never fills is
// passed after KGENTS_WATCH_GAP_WAIT.
func TestWatchWaitsOutAGap(t *testing.T) {
	t.Parallel()
	const gapWait = 3 * time.Second
	natsSrv, a, _ := twoReplicas(t, map[string]string{"KGENTS_WATCH_GAP_WAIT": gapWait.String()})
	_, js := natsSrv.Connect(t)
	s := createSession(t, a, bob, `{}`)
	turn := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"Start something"}`).Body).ReadAll(t)
	last, err := strconv.ParseUint(turn[len(turn)-1].ID, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := watchEvents(t, a, bob, s.ID, "Last-Event-ID", turn[len(turn)-1].ID)
	next := func() (servertest.Event, time.Duration) {
		t.Helper()
		start := time.Now()
		got := readUntilN(t, w, 1)
		return got[0], time.Since(start)
	}

	// last+2 arrives first; last+1 reaches history a moment later.
	storeEvent(t, js, chunkEvent(s.ID, last+2))
	time.Sleep(300 * time.Millisecond) // the late event's delay, not synchronisation
	storeEvent(t, js, chunkEvent(s.ID, last+1))
	for _, want := range []uint64{last + 1, last + 2} {
		if ev, _ := next(); ev.ID != strconv.FormatUint(want, 10) {
			t.Fatalf("watcher got event %s, want %d (in id order)", ev.ID, want)
		}
	}

	// A dead turn reserved last+3..last+5 and published none of them; its
	// marker follows at last+6 and goes out without waiting.
	marker := &sessionsv1.SessionEvent{Id: strconv.FormatUint(last+6, 10), SessionId: s.ID, Time: timestamppb.Now(),
		Payload: &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{Error: "the turn was interrupted", Type: "interrupted"}}}
	storeEvent(t, js, marker)
	if ev, took := next(); ev.ID != marker.GetId() || ev.Name != "error" || took >= gapWait {
		t.Fatalf("marker: got %s %q after %v, want %s at once", ev.ID, ev.Name, took, marker.GetId())
	}

	// last+7 is lost for good: last+8 goes out once the gap wait is over.
	start := time.Now()
	storeEvent(t, js, chunkEvent(s.ID, last+8))
	ev, _ := next()
	if took := time.Since(start); ev.ID != strconv.FormatUint(last+8, 10) || took < gapWait || took > 4*gapWait {
		t.Fatalf("got %s after %v, want %d after about %v", ev.ID, took, last+8, gapWait)
	}

	// A new watcher from the start reads history in id order without
	// waiting at its gaps: the marker closes one, and the event after the
	// lost one was published longer ago than the gap wait.
	start = time.Now()
	w2, _ := watchEvents(t, a, bob, s.ID)
	all := readUntilN(t, w2, len(turn)+4)
	if took := time.Since(start); took >= gapWait {
		t.Errorf("replaying history took %v: it waited at a gap", took)
	}
	var prev uint64
	for _, ev := range all {
		n, _ := strconv.ParseUint(ev.ID, 10, 64)
		if n <= prev {
			t.Fatalf("replay out of order: %s after %d", ev.ID, prev)
		}
		prev = n
	}
	if prev != last+8 {
		t.Fatalf("replay ended at %d, want %d", prev, last+8)
	}
}
