package backup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/backup"
	"github.com/kgents/kgents-go/backup/backuptest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

var quiet = backup.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}

// fixture fills a server with two kgentsd-named streams (one a KV bucket),
// a durable consumer with some messages acknowledged, and a stream that is
// not kgentsd's.
func fixture(t *testing.T, ctx context.Context, js jetstream.JetStream) {
	t.Helper()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "kgent-transcripts", Subjects: []string{"kgent.transcript.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := js.Publish(ctx, fmt.Sprintf("kgent.transcript.t.s.%d", i), []byte(fmt.Sprintf("message %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	c, err := js.CreateOrUpdateConsumer(ctx, "kgent-transcripts", jetstream.ConsumerConfig{Durable: "reader", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(4, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kgent-usage", History: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "a"} {
		if _, err := kv.PutString(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "someone-else", Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
}

func connect(t *testing.T, s *natstest.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return s.Connect(t)
}

func streamNames(t *testing.T, ctx context.Context, js jetstream.JetStream) []string {
	t.Helper()
	var out []string
	l := js.StreamNames(ctx)
	for n := range l.Name() {
		out = append(out, n)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Only kgentsd's streams are backed up; the consumer's position comes back;
// the manifest describes them.
func TestBackupTakesKgentsdStreamsOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := natstest.Start(t)
	nc, js := connect(t, src)
	fixture(t, ctx, js)
	dir := filepath.Join(t.TempDir(), "b")
	m, err := backup.Backup(ctx, nc, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Streams) != 2 || m.Streams[0].Name != "KV_kgent-usage" || m.Streams[1].Name != "kgent-transcripts" {
		t.Fatalf("streams %+v, want KV_kgent-usage and kgent-transcripts", m.Streams)
	}
	kv, tr := m.Streams[0], m.Streams[1]
	// a, b, a again (history 2 keeps both a), b's delete marker.
	if kv.Bucket != "kgent-usage" || kv.LastSeq != 4 || kv.Messages != 4 {
		t.Errorf("bucket entry: bucket %q, %d messages, last sequence %d", kv.Bucket, kv.Messages, kv.LastSeq)
	}
	if tr.Messages != 10 || tr.FirstSeq != 1 || tr.LastSeq != 10 || len(tr.Consumers) != 1 ||
		tr.Consumers[0] != (backup.Consumer{Name: "reader", Delivered: 4, AckFloor: 4, Pending: 6}) {
		t.Errorf("stream entry %+v", tr)
	}
	if len(m.Absent) != len(backup.Known())-2 {
		t.Errorf("absent %v", m.Absent)
	}
	info, err := os.Stat(dir)
	if err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("backup directory mode %v %v, want 0700", info.Mode(), err)
	}

	dst := natstest.Start(t)
	ncB, jsB := connect(t, dst)
	if _, err := backup.Restore(ctx, ncB, dir, quiet); err != nil {
		t.Fatal(err)
	}
	before, err := backuptest.Dump(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	after, err := backuptest.Dump(ctx, jsB)
	if err != nil {
		t.Fatal(err)
	}
	if d := backuptest.Diff(before, after, 0); len(d) > 0 {
		t.Fatal(strings.Join(d, "\n"))
	}
	if names := streamNames(t, ctx, jsB); len(names) != 2 {
		t.Errorf("restored streams %v, want kgentsd's two", names)
	}
	// The consumer resumes where it was: message 5 next.
	c, err := jsB.Consumer(ctx, "kgent-transcripts", "reader")
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if meta, _ := next.Metadata(); meta.Sequence.Stream != 5 {
		t.Errorf("the restored consumer delivered message %d first, want 5", meta.Sequence.Stream)
	}
}

// Bad targets and damaged backups fail with a clear error and leave
// nothing behind: no half-written backup, no stream on the target.
func TestBackupAndRestoreRefusals(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	src := natstest.Start(t)
	nc, js := connect(t, src)
	fixture(t, ctx, js)
	good := filepath.Join(t.TempDir(), "good")
	if _, err := backup.Backup(ctx, nc, good, quiet); err != nil {
		t.Fatal(err)
	}
	copyDir := func(t *testing.T) string {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "copy")
		if err := os.CopyFS(dir, os.DirFS(good)); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	t.Run("backup into a directory that holds something", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := backup.Backup(ctx, nc, dir, quiet)
		if err == nil || !strings.Contains(err.Error(), "is not empty") {
			t.Fatalf("got %v", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("the directory now holds %d entries", len(entries))
		}
		if _, err := backup.Backup(ctx, nc, good, quiet); err == nil || !strings.Contains(err.Error(), "already holds a backup") {
			t.Fatalf("backup over a backup: %v", err)
		}
	})
	t.Run("backup of a server without kgentsd streams", func(t *testing.T) {
		empty := natstest.Start(t)
		ncE, _ := connect(t, empty)
		dir := filepath.Join(t.TempDir(), "b")
		_, err := backup.Backup(ctx, ncE, dir, quiet)
		if err == nil || !strings.Contains(err.Error(), "nothing to back up") {
			t.Fatalf("got %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("a failed backup left %s: %v", dir, err)
		}
	})

	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"no manifest (unfinished)", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, backup.ManifestFile)); err != nil {
				t.Fatal(err)
			}
		}, "did not finish"},
		{"a damaged archive", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "streams", "kgent-transcripts", "stream.arc.s2")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "kgent-transcripts: stream.arc.s2 is"},
		{"a missing snapshot", func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "streams", "KV_kgent-usage")); err != nil {
				t.Fatal(err)
			}
		}, "KV_kgent-usage"},
		{"a stream that is not kgentsd's", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *backup.Manifest) { m.Streams[0].Name, m.Streams[0].Dir = "other", "streams/other" })
		}, `stream "other"`},
		{"a path outside the backup", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *backup.Manifest) { m.Streams[0].Dir = "../../etc" })
		}, "is not a kgentsd stream of this backup"},
		{"a backup from a newer NATS", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *backup.Manifest) { m.Server.Version = "9.1.0" })
		}, "restore into NATS 9.1 or newer"},
		{"another format", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *backup.Manifest) { m.Format = 99 })
		}, "format 99"},
	} {
		t.Run("restore of "+tc.name, func(t *testing.T) {
			dir := copyDir(t)
			tc.damage(t, dir)
			dst := natstest.Start(t)
			ncB, jsB := connect(t, dst)
			_, err := backup.Restore(ctx, ncB, dir, quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			if names := streamNames(t, ctx, jsB); len(names) > 0 {
				t.Errorf("a refused restore created %v", names)
			}
		})
	}

	t.Run("restore of replicated streams into one server", func(t *testing.T) {
		dir := copyDir(t)
		editManifest(t, dir, func(m *backup.Manifest) {
			for i := range m.Streams {
				var cfg map[string]any
				if err := json.Unmarshal(m.Streams[i].Config, &cfg); err != nil {
					t.Fatal(err)
				}
				cfg["num_replicas"] = 3
				m.Streams[i].Config, _ = json.Marshal(cfg)
			}
		})
		dst := natstest.Start(t)
		ncB, jsB := connect(t, dst)
		_, err := backup.Restore(ctx, ncB, dir, quiet)
		if err == nil || !strings.Contains(err.Error(), "restore with --replicas 1") {
			t.Fatalf("got %v", err)
		}
		if names := streamNames(t, ctx, jsB); len(names) > 0 {
			t.Errorf("a refused restore created %v", names)
		}
		o := quiet
		o.Replicas = 1
		if _, err := backup.Restore(ctx, ncB, dir, o); err != nil {
			t.Fatalf("with Replicas 1: %v", err)
		}
	})

	t.Run("restore over existing streams, then with Replace", func(t *testing.T) {
		dst := natstest.Start(t)
		ncB, jsB := connect(t, dst)
		if _, err := jsB.CreateStream(ctx, jetstream.StreamConfig{Name: "kgent-transcripts", Subjects: []string{"kgent.transcript.>"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := jsB.Publish(ctx, "kgent.transcript.newer", []byte("written after the backup")); err != nil {
			t.Fatal(err)
		}
		_, err := backup.Restore(ctx, ncB, good, quiet)
		if err == nil || !strings.Contains(err.Error(), "refusing to overwrite 1 stream(s) that already exist: kgent-transcripts") {
			t.Fatalf("got %v", err)
		}
		if names := streamNames(t, ctx, jsB); len(names) != 1 {
			t.Errorf("a refused restore changed the streams: %v", names)
		}
		o := quiet
		o.Replace = true
		if _, err := backup.Restore(ctx, ncB, good, o); err != nil {
			t.Fatal(err)
		}
		before, _ := backuptest.Dump(ctx, js)
		after, _ := backuptest.Dump(ctx, jsB)
		if d := backuptest.Diff(before, after, 0); len(d) > 0 {
			t.Fatal(strings.Join(d, "\n"))
		}
	})

	t.Run("a restore failing half way deletes what it restored", func(t *testing.T) {
		dst := natstest.Start(t)
		ncB, jsB := connect(t, dst)
		// Another stream on the transcripts' subjects: KV_kgent-usage (first)
		// restores, kgent-transcripts is refused by the server.
		if _, err := jsB.CreateStream(ctx, jetstream.StreamConfig{Name: "squatter", Subjects: []string{"kgent.transcript.>"}}); err != nil {
			t.Fatal(err)
		}
		_, err := backup.Restore(ctx, ncB, good, quiet)
		if err == nil || !strings.Contains(err.Error(), "stream kgent-transcripts") || !strings.Contains(err.Error(), "deleted the 1 stream(s) this restore had created: KV_kgent-usage") {
			t.Fatalf("got %v", err)
		}
		if names := streamNames(t, ctx, jsB); len(names) != 1 || names[0] != "squatter" {
			t.Errorf("after the failed restore the server has %v, want only the squatter", names)
		}
	})
}

func editManifest(t *testing.T, dir string, edit func(*backup.Manifest)) {
	t.Helper()
	p := filepath.Join(dir, backup.ManifestFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m backup.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
