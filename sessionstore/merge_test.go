package sessionstore

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

func TestMergeSpooled(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	rec := func(count, tokens int32, seq uint64, last time.Time, turn *Turn) *Record {
		return &Record{
			Session: &sessionsv1.Session{Id: "s", TenantId: "t", MessageCount: count, TokensUsed: tokens,
				LastMessageAt: timestamppb.New(last), Mode: soulv1.Mode_MODE_REFLECT},
			EventSeq: seq, Turn: turn,
		}
	}
	turn := func(id string, first int32, ceiling uint64, expires time.Time) *Turn {
		return &Turn{ID: id, FirstMessage: first, EventCeiling: ceiling, Expires: expires}
	}
	cases := []struct {
		name     string
		cur, sp  *Record
		released string
		want     *Record
	}{
		{
			name: "an older write never takes counters back",
			cur:  rec(8, 40, 30, t0.Add(time.Minute), nil),
			sp:   rec(2, 10, 8, t0, nil),
			want: rec(8, 40, 30, t0.Add(time.Minute), nil),
		},
		{
			name: "a newer write moves them on",
			cur:  rec(2, 10, 8, t0, nil),
			sp:   rec(4, 15, 16, t0.Add(time.Minute), nil),
			want: rec(4, 15, 16, t0.Add(time.Minute), nil),
		},
		{
			name:     "a release drops the lease of the turn it ended",
			cur:      rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			sp:       rec(4, 15, 12, t0.Add(time.Minute), nil),
			released: "a",
			want:     rec(4, 15, 12, t0.Add(time.Minute), nil),
		},
		{
			name:     "a release leaves another turn's lease alone",
			cur:      rec(4, 10, 17, t0, turn("b", 4, 24, t0.Add(time.Minute))),
			sp:       rec(4, 15, 12, t0.Add(time.Minute), nil),
			released: "a",
			want:     rec(4, 15, 17, t0.Add(time.Minute), turn("b", 4, 24, t0.Add(time.Minute))),
		},
		{
			name: "a renewal extends the lease and the reservation",
			cur:  rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			sp:   rec(2, 10, 8, t0, turn("a", 2, 24, t0.Add(2*time.Minute))),
			want: rec(2, 10, 8, t0, turn("a", 2, 24, t0.Add(2*time.Minute))),
		},
		{
			name: "a late renewal does not shorten the lease",
			cur:  rec(2, 10, 8, t0, turn("a", 2, 24, t0.Add(2*time.Minute))),
			sp:   rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			want: rec(2, 10, 8, t0, turn("a", 2, 24, t0.Add(2*time.Minute))),
		},
		{
			name: "a turn begun while cut off is taken up",
			cur:  rec(2, 10, 8, t0, nil),
			sp:   rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			want: rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
		},
		{
			name: "a stale lease of a turn that has finished is not revived",
			cur:  rec(4, 15, 12, t0.Add(time.Minute), nil),
			sp:   rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			want: rec(4, 15, 12, t0.Add(time.Minute), nil),
		},
		{
			name: "a stale lease of a turn closed by a takeover is not revived",
			cur:  rec(2, 10, 17, t0, nil), // the takeover moved the event ids past the reservation
			sp:   rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			want: rec(2, 10, 17, t0, nil),
		},
		{
			name: "a spooled turn does not displace the current one",
			cur:  rec(2, 10, 8, t0, turn("b", 2, 16, t0.Add(time.Minute))),
			sp:   rec(2, 10, 8, t0, turn("a", 2, 16, t0.Add(time.Minute))),
			want: rec(2, 10, 8, t0, turn("b", 2, 16, t0.Add(time.Minute))),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mergeSpooled(tc.cur, tc.sp, tc.released)
			got, want := tc.cur, tc.want
			if got.Session.GetMessageCount() != want.Session.GetMessageCount() || got.Session.GetTokensUsed() != want.Session.GetTokensUsed() ||
				!got.Session.GetLastMessageAt().AsTime().Equal(want.Session.GetLastMessageAt().AsTime()) || got.EventSeq != want.EventSeq {
				t.Errorf("counters: got count %d tokens %d last %v seq %d, want %d %d %v %d",
					got.Session.GetMessageCount(), got.Session.GetTokensUsed(), got.Session.GetLastMessageAt().AsTime(), got.EventSeq,
					want.Session.GetMessageCount(), want.Session.GetTokensUsed(), want.Session.GetLastMessageAt().AsTime(), want.EventSeq)
			}
			switch {
			case (got.Turn == nil) != (want.Turn == nil):
				t.Errorf("turn %+v, want %+v", got.Turn, want.Turn)
			case got.Turn != nil && (got.Turn.ID != want.Turn.ID || !got.Turn.Expires.Equal(want.Turn.Expires) || got.Turn.EventCeiling != want.Turn.EventCeiling):
				t.Errorf("turn %+v, want %+v", got.Turn, want.Turn)
			}
		})
	}
	t.Run("closed stays closed", func(t *testing.T) {
		t.Parallel()
		cur, sp := rec(2, 0, 0, t0, nil), rec(2, 0, 0, t0, nil)
		sp.Session.Status = sessionsv1.SessionStatus_SESSION_STATUS_CLOSED
		mergeSpooled(cur, sp, "")
		if cur.Session.GetStatus() != sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			t.Errorf("status %v after merging a close", cur.Session.GetStatus())
		}
		open := rec(2, 0, 0, t0, nil)
		mergeSpooled(cur, open, "")
		if cur.Session.GetStatus() != sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			t.Errorf("a spooled write from before the close reopened the session")
		}
	})
}

func TestParseTranscriptSubject(t *testing.T) {
	t.Parallel()
	tenant, session, n, ok := parseTranscriptSubject(TranscriptSubject("ten-ant", "sess-ion", 42))
	if !ok || tenant != "ten-ant" || session != "sess-ion" || n != 42 {
		t.Errorf("got %q %q %d %v", tenant, session, n, ok)
	}
	for _, bad := range []string{"kgent.transcript.t.s.x", "kgent.transcript.s.1", "other.t.s.1", "kgent.transcript.1"} {
		if _, _, _, ok := parseTranscriptSubject(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
