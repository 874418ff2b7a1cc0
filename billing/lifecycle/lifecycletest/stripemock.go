// Package lifecycletest runs the official Stripe mock server (stripe-mock,
// pinned in tools/stripemock/go.mod) for tests and signs webhook payloads
// exactly as Stripe does.
package lifecycletest

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v85/webhook"

	"github.com/kgents/kgents-go/streaming/natstest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// repoRoot is the module root (where go.mod is).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Binary builds stripe-mock once per test process (the Go build cache
// makes later builds instant) and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "stripe-mock-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "stripe-mock")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/stripe/stripe-mock")
		cmd.Dir = filepath.Join(root, "tools", "stripemock")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("build stripe-mock: %w\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreePort returns a free loopback TCP port (natstest.FreePort).
func FreePort(t testing.TB) int {
	t.Helper()
	return natstest.FreePort(t)
}

// StartMock starts stripe-mock on a free port, stops it when the test
// ends, and returns its base URL (for STRIPE_API_BASE).
func StartMock(t testing.TB) string {
	t.Helper()
	bin := Binary(t)
	port := FreePort(t)
	// Its HTTPS listener too on a free port: the default (12112) would
	// collide between tests running at once.
	cmd := exec.Command(bin, "-http-addr", fmt.Sprintf("127.0.0.1:%d", port), "-https-addr", "127.0.0.1:0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/v1/customers")
		if err == nil {
			_ = resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not start: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Sign returns the Stripe-Signature header for payload signed with secret
// at ts (zero: now), as Stripe signs webhooks (t=…,v1=HMAC-SHA256).
func Sign(payload []byte, secret string, ts time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: ts}).Header
}
