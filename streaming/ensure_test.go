package streaming

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// Ensuring a stream or bucket that is already as asked sends no update (an
// update races consumer creation inside nats-server, ensure.go); one whose
// settings differ is updated. The server's own advisories say which.
func TestEnsureUpdatesOnlyWhatDiffers(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Options{Enabled: true, Servers: []string{srv.URL()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	js := c.JetStream()

	nc, _ := srv.Connect(t)
	updates := make(chan string, 16)
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.UPDATED.>", func(m *nats.Msg) { updates <- m.Subject })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// noUpdate proves no update advisory came: a marker update of another
	// stream, sent afterwards, is the next advisory seen.
	marker := 0
	noUpdate := func(what string) {
		t.Helper()
		marker++
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "MARKER", Subjects: []string{"marker"}, MaxMsgs: int64(marker)}); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-updates:
			if got != "$JS.EVENT.ADVISORY.STREAM.UPDATED.MARKER" {
				t.Errorf("%s: an update was sent (%s)", what, got)
			}
		case <-ctx.Done():
			t.Fatalf("%s: not even the marker's update advisory came", what)
		}
	}
	updated := func(what, stream string) {
		t.Helper()
		select {
		case got := <-updates:
			if got != "$JS.EVENT.ADVISORY.STREAM.UPDATED."+stream {
				t.Errorf("%s: advisory %s", what, got)
			}
		case <-ctx.Done():
			t.Fatalf("%s: no update", what)
		}
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "MARKER", Subjects: []string{"marker"}}); err != nil {
		t.Fatal(err)
	}

	cfg := jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"ev.>"}, MaxAge: time.Hour, Duplicates: time.Minute,
		Metadata: map[string]string{"owner": "test"}}
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil || s.CachedInfo().Config.Name != "EVENTS" {
		t.Fatalf("ensuring an existing stream: %v", err)
	}
	noUpdate("the same stream config")
	cfg.MaxAge = 2 * time.Hour
	if s, err = js.CreateOrUpdateStream(ctx, cfg); err != nil || s.CachedInfo().Config.MaxAge != 2*time.Hour {
		t.Fatalf("a changed setting: %v", err)
	}
	updated("a changed setting", "EVENTS")

	kvCfg := jetstream.KeyValueConfig{Bucket: "things", History: 3, TTL: time.Hour}
	if _, err := js.CreateOrUpdateKeyValue(ctx, kvCfg); err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, kvCfg)
	if err != nil || kv.Bucket() != "things" {
		t.Fatalf("ensuring an existing bucket: %v", err)
	}
	noUpdate("the same bucket config")
	kvCfg.History = 5
	if _, err := js.CreateOrUpdateKeyValue(ctx, kvCfg); err != nil {
		t.Fatal(err)
	}
	updated("a changed bucket", "KV_things")
}

func TestConfigCovers(t *testing.T) {
	t.Parallel()
	actual := jetstream.StreamConfig{Name: "S", Subjects: []string{"a", "b"}, MaxAge: time.Hour, MaxMsgs: -1,
		Metadata: map[string]string{"owner": "x", "_nats.ver": "2.15.2"}}
	for _, tc := range []struct {
		name string
		want jetstream.StreamConfig
		ok   bool
	}{
		{"the settings asked for", jetstream.StreamConfig{Name: "S", Subjects: []string{"a", "b"}, MaxAge: time.Hour}, true},
		{"metadata the server added", jetstream.StreamConfig{Name: "S", Metadata: map[string]string{"owner": "x"}}, true},
		{"a different value", jetstream.StreamConfig{Name: "S", MaxAge: 2 * time.Hour}, false},
		{"other subjects", jetstream.StreamConfig{Name: "S", Subjects: []string{"a"}}, false},
		{"a setting it lacks", jetstream.StreamConfig{Name: "S", MaxBytes: 10}, false},
		{"other metadata", jetstream.StreamConfig{Name: "S", Metadata: map[string]string{"owner": "y"}}, false},
	} {
		if got := configCovers(tc.want, actual); got != tc.ok {
			t.Errorf("%s: covers = %v, want %v", tc.name, got, tc.ok)
		}
	}
}
