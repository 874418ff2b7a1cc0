// Package backup owns kgentsd's backups: a JetStream snapshot of every
// stream and KV bucket kgentsd owns (every stream named kgent-* or
// KV_kgent-*), with its durable consumers' state, written to a directory
// with a manifest (configs, counts, sequences, SHA-256 of every file); and
// the restore of such a directory into a NATS that does not have those
// streams yet.
//
// The snapshot protocol ($JS.API.STREAM.SNAPSHOT / RESTORE: chunked, flow
// controlled, s2-compressed) is jsm.go's, the library the nats CLI's
// `stream backup` and `stream restore` are built on, so each stream's
// directory is also one those commands read.
package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jsm.go"
	"github.com/nats-io/jsm.go/api"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming"
)

// ManifestFile is the manifest's name in a backup directory. It is written
// last: a directory without it is an unfinished backup.
const ManifestFile = "manifest.json"

// Format is the manifest format this package writes and reads.
const Format = 1

// streamsDir holds one directory per stream (backup.json, stream.arc.s2).
const streamsDir = "streams"

// Prefixes name what kgentsd owns: its streams and its buckets' streams.
var Prefixes = []string{"kgent-", "KV_kgent-"}

// Known is every stream kgentsd creates (a bucket's is KV_<bucket>), from
// the constants of the packages that create them. A backup takes every
// stream with one of Prefixes, so a stream added later is not missed; this
// list says which of them a server may lack (buckets are created lazily,
// the Stripe ones only with billing on), for the manifest's Absent.
func Known() []string {
	kv := func(b string) string { return "KV_" + b }
	return []string{
		streaming.EventsStream,
		sessionstore.TranscriptsStream,
		kv(sessionstore.SessionsBucket),
		kv(sessionstore.IndexBucket),
		kv(quota.Bucket),
		kv(idempotency.Bucket),
		billing.StreamName,
		kv(billing.RollupBucket),
		kv(billing.InflightBucket),
		kv(controlplane.TenantsBucket),
		kv(controlplane.KeysBucket),
		kv(controlplane.EmailsBucket),
		kv(controlplane.InvitesBucket),
		controlplane.AuditStream,
		lifecycle.EventsStream,
		kv(lifecycle.SeenBucket),
		kv(lifecycle.SubscriptionsBucket),
	}
}

// Manifest describes a backup directory.
type Manifest struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	// The server the backup was taken from.
	Server ServerInfo `json:"server"`
	// Streams, by name.
	Streams []Stream `json:"streams"`
	// Known streams the server did not have (see Known).
	Absent []string `json:"absent,omitempty"`
}

// ServerInfo is what the backup records of its source.
type ServerInfo struct {
	Version string `json:"version"`
	Name    string `json:"name,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

// Stream is one stream's snapshot.
type Stream struct {
	Name string `json:"name"`
	// Bucket is the KV bucket a KV_ stream holds.
	Bucket string `json:"bucket,omitempty"`
	// Dir is the snapshot's directory, relative to the backup's.
	Dir string `json:"dir"`
	// Config is the stream's configuration as the server reported it.
	Config json.RawMessage `json:"config"`
	// The snapshot's state.
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Durable consumers in the snapshot, with their state just after it.
	Consumers []Consumer `json:"consumers,omitempty"`
	Files     []File     `json:"files"`
}

// Consumer is a durable consumer's position: the stream sequence it has
// delivered up to, everything at or below AckFloor acknowledged, AckPending
// delivered and not acknowledged, Pending not yet delivered.
type Consumer struct {
	Name       string `json:"name"`
	Delivered  uint64 `json:"delivered_stream_seq"`
	AckFloor   uint64 `json:"ack_floor_stream_seq"`
	AckPending int    `json:"ack_pending"`
	Pending    uint64 `json:"pending"`
}

// File is one file of a snapshot.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Options tune Backup and Restore; zero fields take the defaults.
type Options struct {
	Logger *slog.Logger
	// RequestTimeout bounds each JetStream API request (default 10 s).
	RequestTimeout time.Duration
	// IdleTimeout ends a stream's snapshot or restore that has moved no
	// data for this long (default 60 s): a leader gone mid-transfer.
	IdleTimeout time.Duration
	// ProgressEvery is how often a long transfer logs its progress
	// (default 5 s).
	ProgressEvery time.Duration

	// Restore only.
	// Replace deletes a stream that already exists before restoring it;
	// without it Restore refuses to start when any does.
	Replace bool
	// Replicas, when > 0, restores every stream with this many replicas
	// instead of the backup's (a single server takes 1).
	Replicas int
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	return o
}

func owned(name string) bool {
	for _, p := range Prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Backup snapshots every stream kgentsd owns on nc's server into dir, which
// must not exist or be empty, and writes the manifest last. On failure it
// removes what it wrote, leaving dir as it found it.
func Backup(ctx context.Context, nc *nats.Conn, dir string, o Options) (m *Manifest, err error) {
	o = o.withDefaults()
	if err := emptyOrMissing(dir); err != nil {
		return nil, err
	}
	created, err := mkdirFresh(dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cleanup(dir, created)
		}
	}()
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
	names, err := ownedStreams(ctx, js, o.RequestTimeout)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, errors.New("the server has no kgentsd streams (kgent-*, KV_kgent-*): nothing to back up; is this the NATS kgentsd uses?")
	}
	m = &Manifest{Format: Format, Created: time.Now().UTC(), Server: serverInfo(nc)}
	for _, k := range Known() {
		if !slices.Contains(names, k) {
			m.Absent = append(m.Absent, k)
		}
	}
	o.Logger.Info("backup started", "dir", dir, "streams", len(names), "server", m.Server.Version, "cluster", m.Server.Cluster)
	began := time.Now()
	var total int64
	for _, name := range names {
		s, err := snapshot(ctx, js, mgr, dir, name, o)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		for _, f := range s.Files {
			total += f.Size
		}
		m.Streams = append(m.Streams, *s)
	}
	if err := syncDir(filepath.Join(dir, streamsDir)); err != nil {
		return nil, err
	}
	if err := writeManifest(dir, m); err != nil {
		return nil, err
	}
	o.Logger.Info("backup finished", "dir", dir, "streams", len(m.Streams), "bytes", total, "took", time.Since(began).Round(time.Millisecond))
	return m, nil
}

// readyWithin is how long Backup and Restore wait for JetStream to answer
// (a cluster just started elects its meta leader first).
const readyWithin = 30 * time.Second

// waitJetStream waits until the server answers JetStream requests.
func waitJetStream(ctx context.Context, js jetstream.JetStream, o Options) error {
	deadline := time.Now().Add(readyWithin)
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
		_, err := js.AccountInfo(rctx)
		cancel()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
			return fmt.Errorf("JetStream is not enabled on this server or account: %w", err)
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("JetStream did not answer within %v: %w", readyWithin, err)
		}
		if attempt == 0 {
			o.Logger.Warn("JetStream not ready yet (a meta leader being elected?); waiting", "error", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ownedStreams lists kgentsd's streams, sorted.
func ownedStreams(ctx context.Context, js jetstream.JetStream, timeout time.Duration) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var names []string
	l := js.StreamNames(lctx)
	for n := range l.Name() {
		if owned(n) {
			names = append(names, n)
		}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

func serverInfo(nc *nats.Conn) ServerInfo {
	return ServerInfo{Version: nc.ConnectedServerVersion(), Name: nc.ConnectedServerName(), Cluster: nc.ConnectedClusterName()}
}

// snapshot writes one stream's snapshot (messages and consumers) to
// dir/streams/name and describes it.
func snapshot(ctx context.Context, js jetstream.JetStream, mgr *jsm.Manager, dir, name string, o Options) (*Stream, error) {
	rel := filepath.Join(streamsDir, name)
	sdir := filepath.Join(dir, rel)
	str, err := mgr.LoadStream(name)
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("stream", name)
	log.Info("snapshot started")
	began := time.Now()
	w := newWatchdog(ctx, o.IdleTimeout)
	defer w.stop()
	notify := func(p jsm.SnapshotProgress) {
		w.moved(p.BytesReceived())
		if w.due(o.ProgressEvery) {
			log.Info("snapshot progress", "received_bytes", p.BytesReceived(), "expected_bytes", p.BytesExpected(), "bytes_per_second", p.BytesPerSecond())
		}
	}
	if _, err := str.SnapshotToDirectory(w.ctx, sdir, jsm.SnapshotConsumers(), jsm.SnapshotHealthCheck(), jsm.SnapshotNotify(notify)); err != nil {
		return nil, w.explain(err)
	}
	meta, err := os.ReadFile(filepath.Join(sdir, jsm.SnapshotMetaFile))
	if err != nil {
		return nil, err
	}
	var snap struct {
		Config json.RawMessage `json:"config"`
		State  api.StreamState `json:"state"`
	}
	if err := json.Unmarshal(meta, &snap); err != nil {
		return nil, fmt.Errorf("%s: %w", jsm.SnapshotMetaFile, err)
	}
	s := &Stream{
		Name: name, Dir: rel, Config: snap.Config,
		Messages: snap.State.Msgs, Bytes: snap.State.Bytes, FirstSeq: snap.State.FirstSeq, LastSeq: snap.State.LastSeq,
	}
	if b, ok := strings.CutPrefix(name, "KV_"); ok {
		s.Bucket = b
	}
	if s.Consumers, err = durables(ctx, js, name, o.RequestTimeout); err != nil {
		return nil, err
	}
	if s.Files, err = checksum(sdir); err != nil {
		return nil, err
	}
	log.Info("snapshot finished", "messages", s.Messages, "last_seq", s.LastSeq, "consumers", len(s.Consumers),
		"bytes", s.Files[0].Size+s.Files[1].Size, "took", time.Since(began).Round(time.Millisecond))
	return s, nil
}

// durables reads the state of a stream's durable consumers.
func durables(ctx context.Context, js jetstream.JetStream, stream string, timeout time.Duration) ([]Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := js.Stream(cctx, stream)
	if err != nil {
		return nil, err
	}
	var out []Consumer
	l := st.ListConsumers(cctx)
	for ci := range l.Info() {
		if ci.Config.Durable == "" {
			continue
		}
		out = append(out, Consumer{Name: ci.Name, Delivered: ci.Delivered.Stream, AckFloor: ci.AckFloor.Stream,
			AckPending: ci.NumAckPending, Pending: ci.NumPending})
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("consumers: %w", err)
	}
	slices.SortFunc(out, func(a, b Consumer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// checksum fsyncs a snapshot's files and returns their sizes and SHA-256,
// the archive first.
func checksum(sdir string) ([]File, error) {
	data, err := jsm.SnapshotDataPath(sdir)
	if err != nil {
		return nil, err
	}
	var out []File
	for _, p := range []string{data, filepath.Join(sdir, jsm.SnapshotMetaFile)} {
		f, err := sum(p, true)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, syncDir(sdir)
}

// sum hashes the file at p (fsyncing it first when sync is set).
func sum(p string, sync bool) (File, error) {
	flag := os.O_RDONLY
	if sync {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(p, flag, 0)
	if err != nil {
		return File{}, err
	}
	defer func() { _ = f.Close() }()
	if sync {
		if err := f.Sync(); err != nil {
			return File{}, err
		}
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, err
	}
	return File{Name: filepath.Base(p), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func writeManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ManifestFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestFile)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// emptyOrMissing refuses a backup target that holds anything.
func emptyOrMissing(dir string) error {
	if dir == "" {
		return errors.New("no backup directory given")
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("backup directory: %w", err)
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
			return fmt.Errorf("%s already holds a backup; give a new directory for each backup", dir)
		}
		return fmt.Errorf("%s is not empty; a backup needs a new or empty directory", dir)
	}
	return nil
}

// mkdirFresh creates dir (0700: a backup holds every tenant's dialogue) and
// says whether it did.
func mkdirFresh(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("backup directory: %w", err)
	}
	return true, nil
}

// cleanup removes a failed backup's files: dir itself when Backup created
// it, else what Backup put in it.
func cleanup(dir string, created bool) {
	if created {
		_ = os.RemoveAll(dir)
		return
	}
	_ = os.RemoveAll(filepath.Join(dir, streamsDir))
	_ = os.Remove(filepath.Join(dir, ManifestFile+".tmp"))
	_ = os.Remove(filepath.Join(dir, ManifestFile))
}

// watchdog cancels a transfer that has stopped moving data.
type watchdog struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration

	mu       sync.Mutex
	bytes    uint64
	last     time.Time
	reported time.Time
	done     chan struct{}
}

var errIdle = errors.New("no data moved")

func newWatchdog(ctx context.Context, idle time.Duration) *watchdog {
	wctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{ctx: wctx, cancel: cancel, idle: idle, last: time.Now(), reported: time.Now(), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *watchdog) run() {
	t := time.NewTicker(min(w.idle/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-w.ctx.Done():
			return
		case <-t.C:
			w.mu.Lock()
			quiet := time.Since(w.last)
			w.mu.Unlock()
			if quiet > w.idle {
				w.cancel(fmt.Errorf("%w for %v (a NATS leader change or a stuck server); try again", errIdle, w.idle))
				return
			}
		}
	}
}

// moved records a transfer's byte count; only growth counts as progress
// (jsm.go also reports once a second whether or not anything moved).
func (w *watchdog) moved(bytes uint64) {
	w.mu.Lock()
	if bytes > w.bytes {
		w.bytes, w.last = bytes, time.Now()
	}
	w.mu.Unlock()
}

// due reports whether every has passed since the last progress report, and
// if so starts the next period.
func (w *watchdog) due(every time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.reported) < every {
		return false
	}
	w.reported = time.Now()
	return true
}

func (w *watchdog) stop() {
	close(w.done)
	w.cancel(nil)
}

// explain replaces a cancellation by the watchdog with its reason.
func (w *watchdog) explain(err error) error {
	if cause := context.Cause(w.ctx); cause != nil && errors.Is(cause, errIdle) {
		return cause
	}
	return err
}
