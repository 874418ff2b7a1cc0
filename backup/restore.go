package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jsm.go"
	"github.com/nats-io/jsm.go/api"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Verify reads dir's manifest and checks every file it lists (size and
// SHA-256) and every stream's name, without contacting a server.
func Verify(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s has no %s: not a backup, or one that did not finish", dir, ManifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestFile, err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("%s: format %d, this kgentsd reads format %d", ManifestFile, m.Format, Format)
	}
	if len(m.Streams) == 0 {
		return nil, fmt.Errorf("%s lists no streams", ManifestFile)
	}
	var problems []string
	seen := map[string]bool{}
	for _, s := range m.Streams {
		if !jsm.IsValidName(s.Name) || !owned(s.Name) || s.Dir != filepath.Join(streamsDir, s.Name) || seen[s.Name] {
			problems = append(problems, fmt.Sprintf("stream %q (dir %q) is not a kgentsd stream of this backup", s.Name, s.Dir))
			continue
		}
		seen[s.Name] = true
		if len(s.Files) != 2 {
			problems = append(problems, fmt.Sprintf("stream %s lists %d files, want the archive and %s", s.Name, len(s.Files), jsm.SnapshotMetaFile))
			continue
		}
		for _, f := range s.Files {
			if f.Name != filepath.Base(f.Name) {
				problems = append(problems, fmt.Sprintf("stream %s: file name %q", s.Name, f.Name))
				continue
			}
			got, err := sum(filepath.Join(dir, s.Dir, f.Name), false)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("stream %s: %v", s.Name, err))
			case got.Size != f.Size || got.SHA256 != f.SHA256:
				problems = append(problems, fmt.Sprintf("stream %s: %s is %d bytes with SHA-256 %s, the manifest says %d bytes, %s (damaged or changed)",
					s.Name, f.Name, got.Size, got.SHA256, f.Size, f.SHA256))
			}
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("backup %s does not verify:\n  %s", dir, strings.Join(problems, "\n  "))
	}
	return &m, nil
}

// Restore restores every stream of the backup in dir, with its consumers,
// into nc's server. It verifies the backup first, and refuses to start when
// any of its streams exists (unless o.Replace) or when the server cannot
// hold the backup's replicas (unless o.Replicas says how many). Each
// restored stream is checked against the manifest (messages, first and
// last sequence, durable consumers). If one fails, the streams this call
// restored are deleted again.
func Restore(ctx context.Context, nc *nats.Conn, dir string, o Options) (m *Manifest, err error) {
	o = o.withDefaults()
	if m, err = Verify(dir); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	mgr, err := jsm.New(nc, jsm.WithTimeout(o.RequestTimeout))
	if err != nil {
		return nil, err
	}
	if err := waitJetStream(ctx, js, o); err != nil {
		return nil, err
	}
	if have := nc.ConnectedServerVersion(); older(have, m.Server.Version) {
		return nil, fmt.Errorf("the backup comes from NATS %s and this server is %s: restore into NATS %s or newer (snapshot formats change between releases)",
			m.Server.Version, have, majorMinor(m.Server.Version))
	}
	configs := make([]api.StreamConfig, len(m.Streams))
	var exist, tooMany []string
	for i, s := range m.Streams {
		if err := json.Unmarshal(s.Config, &configs[i]); err != nil {
			return nil, fmt.Errorf("stream %s: config: %w", s.Name, err)
		}
		if o.Replicas > 0 {
			configs[i].Replicas = o.Replicas
		}
		if nc.ConnectedClusterName() == "" && configs[i].Replicas > 1 {
			tooMany = append(tooMany, fmt.Sprintf("%s (R%d)", s.Name, configs[i].Replicas))
		}
		found, err := streamExists(ctx, js, s.Name, o.RequestTimeout)
		if err != nil {
			return nil, err
		}
		if found {
			exist = append(exist, s.Name)
		}
	}
	if len(tooMany) > 0 {
		return nil, fmt.Errorf("the server is not clustered and cannot hold replicated streams: %s; restore with --replicas 1", strings.Join(tooMany, ", "))
	}
	if len(exist) > 0 && !o.Replace {
		return nil, fmt.Errorf("refusing to overwrite %d stream(s) that already exist: %s (restore into a NATS without them; stop every kgentsd first, it creates them on start; or --replace deletes them and their data first)",
			len(exist), strings.Join(exist, ", "))
	}

	o.Logger.Info("restore started", "dir", dir, "streams", len(m.Streams), "backup_created", m.Created, "backup_server", m.Server.Version,
		"server", nc.ConnectedServerVersion(), "cluster", nc.ConnectedClusterName())
	began := time.Now()
	var restored []string
	defer func() {
		if err == nil {
			return
		}
		var undone []string
		for _, name := range restored {
			if derr := deleteStream(js, name, o.RequestTimeout); derr != nil {
				o.Logger.Error("could not delete a stream of the failed restore; delete it by hand", "stream", name, "error", derr)
				continue
			}
			undone = append(undone, name)
		}
		if len(undone) > 0 {
			err = fmt.Errorf("%w (deleted the %d stream(s) this restore had created: %s)", err, len(undone), strings.Join(undone, ", "))
		}
		if o.Replace && len(exist) > 0 {
			err = fmt.Errorf("%w; the streams --replace deleted are gone: restore again", err)
		}
	}()
	for i, s := range m.Streams {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log := o.Logger.With("stream", s.Name)
		for _, e := range exist {
			if e == s.Name {
				log.Warn("deleting the existing stream (--replace)")
				if err := deleteStream(js, s.Name, o.RequestTimeout); err != nil {
					return nil, fmt.Errorf("stream %s: delete before restore: %w", s.Name, err)
				}
			}
		}
		if err := restoreOne(ctx, js, mgr, dir, s, configs[i], o, log); err != nil {
			// A stream the server created before failing is this restore's too.
			if found, _ := streamExists(context.WithoutCancel(ctx), js, s.Name, o.RequestTimeout); found {
				restored = append(restored, s.Name)
			}
			return nil, fmt.Errorf("stream %s: %w", s.Name, err)
		}
		restored = append(restored, s.Name)
	}
	o.Logger.Info("restore finished", "streams", len(m.Streams), "took", time.Since(began).Round(time.Millisecond))
	return m, nil
}

func restoreOne(ctx context.Context, js jetstream.JetStream, mgr *jsm.Manager, dir string, s Stream, cfg api.StreamConfig, o Options, log *slog.Logger) error {
	log.Info("restore of stream started", "messages", s.Messages, "replicas", cfg.Replicas)
	began := time.Now()
	var st *api.StreamState
	for attempt := 1; ; attempt++ {
		var err error
		if st, err = transfer(ctx, mgr, dir, s, cfg, o, log); err == nil {
			break
		}
		if !retryable(err) || attempt == restoreAttempts || ctx.Err() != nil {
			return err
		}
		// Nothing of a failed attempt may stay: the stream did not exist
		// before (or --replace deleted it).
		if derr := deleteStream(js, s.Name, o.RequestTimeout); derr != nil {
			return fmt.Errorf("%w; and deleting what it left failed: %w", err, derr)
		}
		wait := time.Duration(attempt) * time.Second
		log.Warn("restore of stream refused for now; retrying", "error", err, "attempt", attempt, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	if st.Msgs != s.Messages || st.LastSeq != s.LastSeq || (s.Messages > 0 && st.FirstSeq != s.FirstSeq) {
		return fmt.Errorf("restored %d messages, sequences %d..%d; the backup has %d, %d..%d",
			st.Msgs, st.FirstSeq, st.LastSeq, s.Messages, s.FirstSeq, s.LastSeq)
	}
	for _, c := range s.Consumers {
		got, err := waitConsumer(ctx, js, s.Name, c.Name, o.RequestTimeout)
		if err != nil {
			return fmt.Errorf("consumer %s not restored: %w", c.Name, err)
		}
		// Messages delivered and not acknowledged are delivered again
		// (at once on a cluster, which restores the ack floor only; after
		// the ack wait on a single server). The manifest's positions are
		// read just after the snapshot: a backup of a live system can see
		// acknowledgements the snapshot does not have, and the snapshot's
		// are the restored ones.
		if got.AckFloor.Stream != c.AckFloor {
			log.Warn("consumer ack floor differs from the manifest's (acknowledged after the snapshot?)", "consumer", c.Name,
				"ack_floor", got.AckFloor.Stream, "manifest_ack_floor", c.AckFloor)
		}
	}
	log.Info("restore of stream finished", "messages", st.Msgs, "last_seq", st.LastSeq, "consumers", len(s.Consumers), "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// transfer sends one stream's snapshot, ended by the watchdog when no data
// moves for o.IdleTimeout.
func transfer(ctx context.Context, mgr *jsm.Manager, dir string, s Stream, cfg api.StreamConfig, o Options, log *slog.Logger) (*api.StreamState, error) {
	w := newWatchdog(ctx, o.IdleTimeout)
	defer w.stop()
	notify := func(p jsm.RestoreProgress) {
		w.moved(p.BytesSent())
		if w.due(o.ProgressEvery) {
			log.Info("restore progress", "sent_bytes", p.BytesSent(), "chunks", p.ChunksSent(), "of_chunks", p.ChunksToSend())
		}
	}
	// jsm.go waits up to an hour for the server's final answer once every
	// chunk is sent, without the context; the watchdog does not see that
	// wait either. The caller's context bounds the command as a whole.
	_, st, err := mgr.RestoreSnapshotFromDirectory(w.ctx, s.Name, filepath.Join(dir, s.Dir),
		jsm.RestoreNotify(notify), jsm.RestoreConfiguration(cfg))
	if err != nil {
		return nil, w.explain(err)
	}
	return st, nil
}

// retryable reports whether a restore attempt failed for a moment only: a
// cluster that refuses the placement while a node's report is late ("no
// suitable peers for placement, peer offline"), a request no server took
// or answered while a leader is elected or the restore's own subscription
// is still travelling between the nodes.
func retryable(err error) bool {
	return api.IsNatsError(err, errNoSuitablePeers) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout)
}

func streamExists(ctx context.Context, js jetstream.JetStream, name string, timeout time.Duration) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := js.Stream(cctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("stream %s: %w", name, err)
	}
}

func deleteStream(js jetstream.JetStream, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := js.DeleteStream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	return err
}

// errNoSuitablePeers is JetStream's "no suitable peers for placement".
const errNoSuitablePeers = 10005

// restoreAttempts bounds the attempts at one stream (waits 1+2+3+4 s).
const restoreAttempts = 5

// waitConsumer waits for a restored consumer: on a cluster its assignment
// follows the stream's restore.
func waitConsumer(ctx context.Context, js jetstream.JetStream, stream, name string, timeout time.Duration) (*jetstream.ConsumerInfo, error) {
	deadline := time.Now().Add(3 * timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		c, err := js.Consumer(cctx, stream, name)
		var ci *jetstream.ConsumerInfo
		if err == nil {
			ci, err = c.Info(cctx)
		}
		cancel()
		if err == nil {
			return ci, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// older reports whether server version have is an older release (major.minor)
// than want; unparsable versions are not judged.
func older(have, want string) bool {
	hm, hn, ok1 := parseMajorMinor(have)
	wm, wn, ok2 := parseMajorMinor(want)
	if !ok1 || !ok2 {
		return false
	}
	return hm < wm || (hm == wm && hn < wn)
}

func majorMinor(v string) string {
	m, n, ok := parseMajorMinor(v)
	if !ok {
		return v
	}
	return fmt.Sprintf("%d.%d", m, n)
}

func parseMajorMinor(v string) (int, int, bool) {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	m, err1 := strconv.Atoi(parts[0])
	n, err2 := strconv.Atoi(parts[1])
	return m, n, err1 == nil && err2 == nil
}
