package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kgents/kgents-go/config"
)

// served is a kgentsd run in process by serve.
type served struct {
	base string
	stop func() error
}

var restRE = regexp.MustCompile(`REST \+ SSE\s+(http://\S+)`)

// serve runs kgentsd with env until stop (or the test's end).
func serve(t *testing.T, env map[string]string) *served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &bannerWriter{ready: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- command(ctx, nil, config.MapLookup(env), out, io.Discard) }()
	var err error
	stopped := false
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-out.ready:
	case err := <-done:
		t.Fatalf("kgentsd stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("kgentsd not ready after 30 s")
	}
	m := restRE.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no REST address in the banner:\n%s", out)
	}
	return &served{base: m[1], stop: stop}
}

func (s *served) do(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", "kg_dev_bob")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// cli runs a kgentsd command with env and returns its output and log.
func cli(env map[string]string, args ...string) (string, string, error) {
	var out, log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := command(ctx, args, config.MapLookup(env), &out, &log)
	return out.String(), log.String(), err
}

// The embedded default: a running kgentsd is backed up through its
// loopback NATS port and refuses a restore into its store; once stopped,
// its store is backed up directly; a backup restores into a new data
// directory, where kgentsd serves the same session and transcript.
func TestBackupAndRestoreOfTheEmbeddedStore(t *testing.T) {
	dataA, dataB := t.TempDir(), t.TempDir()
	envA := map[string]string{
		"KGENTS_DATA_DIR": dataA, "NATS_EMBEDDED_PORT": strconv.Itoa(freePort(t)), "KGENTS_DEV_KEYS": "true",
		"HTTP_PORT": "0", "GRPC_PORT": "0", "SHUTDOWN_DRAIN": "0", "LOG_LEVEL": "info",
	}
	a := serve(t, envA)
	code, b := a.do(t, "POST", "/v1/kgent/sessions", `{"title":"kept"}`)
	if code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	var s struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if code, b := a.do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", `{"message":"remember this","stream":false}`); code != 200 {
		t.Fatalf("message: %d %s", code, b)
	}
	_, transcript := a.do(t, "GET", "/v1/kgent/sessions/"+s.ID+"/messages", "")

	hot := filepath.Join(t.TempDir(), "hot")
	out, log, err := cli(envA, "backup", "--to", hot)
	if err != nil {
		t.Fatalf("backup of a running kgentsd: %v\n%s", err, log)
	}
	if !strings.Contains(log, "backing up through its embedded NATS") || !strings.Contains(out, "kgent-transcripts") {
		t.Errorf("backup of a running kgentsd:\n%s\n%s", out, log)
	}
	if _, _, err := cli(envA, "restore", "--from", hot); err == nil || !strings.Contains(err.Error(), "stop that kgentsd before restoring") {
		t.Errorf("restore into a running kgentsd's store: %v", err)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}

	cold := filepath.Join(t.TempDir(), "cold")
	if _, log, err := cli(envA, "backup", "--to", cold); err != nil || !strings.Contains(log, "opening the embedded NATS store") {
		t.Fatalf("backup of a stopped store: %v\n%s", err, log)
	}
	envB := map[string]string{}
	for k, v := range envA {
		envB[k] = v
	}
	envB["KGENTS_DATA_DIR"], envB["NATS_EMBEDDED_PORT"] = dataB, strconv.Itoa(freePort(t))
	for _, dir := range []string{hot, cold} {
		if out, _, err := cli(envB, "restore", "--from", dir, "--verify-only"); err != nil || !strings.Contains(out, "verified") {
			t.Fatalf("verify %s: %v %s", dir, err, out)
		}
	}
	if out, log, err := cli(envB, "restore", "--from", cold); err != nil || !strings.Contains(out, "restored from") {
		t.Fatalf("restore into a new data directory: %v\n%s\n%s", err, out, log)
	}
	if _, _, err := cli(envB, "restore", "--from", cold); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("a second restore: %v", err)
	}

	bk := serve(t, envB)
	if code, got := bk.do(t, "GET", "/v1/kgent/sessions/"+s.ID+"/messages", ""); code != 200 || !bytes.Equal(got, transcript) {
		t.Errorf("transcript on the restored store: %d\n  %s\nwant\n  %s", code, got, transcript)
	}
}

// Mistakes on the command line and unusable targets fail at once with a
// message that says what to do.
func TestCommandErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nothing-here")
	base := map[string]string{"KGENTS_DATA_DIR": missing}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown command", base, []string{"bakup"}, `unknown command "bakup"`},
		{"backup without --to", base, []string{"backup"}, "--to DIR is required"},
		{"restore without --from", base, []string{"restore"}, "--from DIR is required"},
		{"an unknown flag", base, []string{"backup", "--to", "x", "--fast"}, "flag provided but not defined: -fast"},
		{"a stray argument", base, []string{"backup", "--to", "x", "y"}, `unexpected argument "y"`},
		{"replicas out of range", base, []string{"restore", "--from", "x", "--replicas", "9"}, "--replicas 9"},
		{"serve with arguments", base, []string{"serve", "now"}, "serve takes no arguments"},
		{"NATS disabled", map[string]string{"NATS_ENABLED": "false"}, []string{"backup", "--to", filepath.Join(missing, "b")}, "NATS_ENABLED is false"},
		{"no embedded store", base, []string{"backup", "--to", filepath.Join(t.TempDir(), "b")}, "no embedded NATS store"},
		{"restore of no backup", base, []string{"restore", "--from", t.TempDir()}, "not a backup"},
		{"unreachable NATS", map[string]string{"NATS_SERVERS": "nats://127.0.0.1:" + strconv.Itoa(freePort(t)), "NATS_CONNECT_TIMEOUT": "300ms"},
			[]string{"backup", "--to", filepath.Join(t.TempDir(), "b")}, "not reachable within NATS_CONNECT_TIMEOUT (300ms)"},
		{"bad configuration", map[string]string{"NATS_REPLICAS": "nine"}, []string{"backup", "--to", "x"}, "NATS_REPLICAS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			_, _, err := cli(tc.env, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			if took := time.Since(began); took > 10*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
	if out, _, err := cli(base, "help"); err != nil || !strings.Contains(out, "kgentsd backup  --to DIR") {
		t.Errorf("help: %v %s", err, out)
	}
	if _, log, err := cli(base, "backup", "-h"); err != nil || !strings.Contains(log, "Usage: kgentsd backup --to DIR") {
		t.Errorf("backup -h: %v %s", err, log)
	}
}
