package streaming

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEmbeddedStoreIsLockedBeforeTheServerStarts: a second embedded server on
// a store another one uses is refused before it starts (so it never opens
// the store), and the store is free again once the first has shut down.
func TestEmbeddedStoreIsLockedBeforeTheServerStarts(t *testing.T) {
	dir := t.TempDir()
	first, err := Connect(context.Background(), Options{Enabled: true, EmbeddedPort: -1, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(context.Background())

	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	second, err := Connect(context.Background(), Options{Enabled: true, EmbeddedPort: -1, StoreDir: dir, Logger: log})
	if err == nil {
		second.Close(context.Background())
		t.Fatal("a second embedded server started on a store in use")
	}
	if !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), "KGENTS_DATA_DIR") {
		t.Errorf("error %q does not say the store is in use", err)
	}
	if s := logs.String(); strings.Contains(s, "nats-server") || strings.Contains(s, "embedded NATS started") {
		t.Errorf("the refused server started anyway:\n%s", s)
	}

	first.Close(context.Background())
	again, err := Connect(context.Background(), Options{Enabled: true, EmbeddedPort: -1, StoreDir: dir})
	if err != nil {
		t.Fatalf("the store stays locked after its server shut down: %v", err)
	}
	again.Close(context.Background())
}

func TestLockDirNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	release, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockDir(dir); !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), "(pid ") {
		t.Errorf("second lock: %v, want ErrDirInUse naming the pid", err)
	}
	release()
	release() // idempotent
	r2, err := LockDir(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	r2()
}
