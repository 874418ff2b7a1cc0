package lifecycletest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisAddr is the Redis the development machine and CI run.
const DefaultRedisAddr = "127.0.0.1:6379"

// Redis returns the URL of a running Redis for the idempotency store: the
// one on DefaultRedisAddr when it answers, else a redis-server this test
// starts on a free port (no persistence) and stops when it ends. It never
// skips: with no Redis and no redis-server to start, the test fails saying
// so. Keys are shared with whatever else uses that Redis, so tests use
// event ids of their own.
func Redis(t testing.TB) string {
	t.Helper()
	if ping(DefaultRedisAddr) == nil {
		return "redis://" + DefaultRedisAddr
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("no Redis on %s and no redis-server to start one (apt-get install redis-server): %v", DefaultRedisAddr, err)
	}
	port := FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--daemonize", "no")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(addr)
		if err == nil {
			return "redis://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RedisClient is a client of Redis(t), closed when the test ends.
func RedisClient(t testing.TB) (*redis.Client, string) {
	t.Helper()
	url := Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c, url
}

func ping(addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}
