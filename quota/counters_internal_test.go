package quota

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// unansweredKV is a bucket whose updates lose their answer: store (or not),
// then report a timeout.
type unansweredKV struct {
	jetstream.KeyValue
	store bool
}

func (u unansweredKV) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	if u.store {
		if _, err := u.KeyValue.Update(ctx, key, val, rev); err != nil {
			return 0, err
		}
	}
	return 0, context.DeadlineExceeded
}

// TestFoldWithALostAnswer: a fold whose write was stored but whose answer
// was lost counts once (the caller would otherwise fold the delta again);
// one whose write was not stored fails, and the delta stays with the caller.
func TestFoldWithALostAnswer(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	k := NewKV(js, KVOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	backing, err := k.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const key = "tenant.tok.d.20261206"
	if _, err := k.fold(ctx, key, 100); err != nil { // created: later folds update
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		stored  bool
		wantErr bool
		want    int64
	}{
		{"stored, answer lost", true, false, 132},
		{"not stored", false, true, 132},
	}
	for _, tc := range cases {
		k.mu.Lock()
		k.kv = unansweredKV{KeyValue: backing, store: tc.stored}
		k.mu.Unlock()
		total, err := k.fold(ctx, key, 32)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%s: fold error %v, want error %v", tc.name, err, tc.wantErr)
		}
		if !tc.wantErr && total != tc.want {
			t.Fatalf("%s: fold returned %d, want %d", tc.name, total, tc.want)
		}
		k.mu.Lock()
		k.kv = backing
		k.mu.Unlock()
		if got, err := k.fold(ctx, key, 0); err != nil || got != tc.want {
			t.Fatalf("%s: the bucket holds %d (%v), want %d", tc.name, got, err, tc.want)
		}
	}
}
