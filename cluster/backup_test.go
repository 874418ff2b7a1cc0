package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/backup"
	"github.com/kgents/kgents-go/backup/backuptest"
	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/cluster"
	"github.com/kgents/kgents-go/streaming/natstest"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// kgentsdCommand runs `kgentsd args…` (the binary the harness built) with
// env and returns its output, failing the test (after logging the NATS
// nodes' logs) if it does not exit 0.
func kgentsdCommand(t *testing.T, ctx context.Context, n *cluster.NATS, env map[string]string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, cluster.KgentsdBinary(t), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errw bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	if err := cmd.Run(); err != nil {
		for _, nd := range n.Nodes {
			t.Logf("NATS node %s:\n%s", nd.Name, tail(nd.Logs(), 6000))
		}
		t.Fatalf("kgentsd %s: %v\n%s\n%s", strings.Join(args, " "), err, out.String(), errw.String())
	}
	return out.String(), errw.String()
}

// usageAboveFloor is the CloudEvent id of every usage event in the
// metering stream above the sink's ack floor, split by whether the
// stand-in accepted it (acknowledged above the floor) or not (unacked).
func usageAboveFloor(t *testing.T, d map[string]backuptest.Stream, accepted []string) (unacked, acked []string) {
	t.Helper()
	floor := d[billing.StreamName].Consumers[billing.ConsumerName].AckFloor
	for _, m := range d[billing.StreamName].Messages {
		if m.Seq <= floor || !strings.HasPrefix(m.Subject, strings.TrimSuffix(billing.EventSubjects, ">")) {
			continue
		}
		events, err := billing.SplitMessage(m.Subject, m.Data)
		if err != nil {
			t.Fatalf("metering message %d: %v", m.Seq, err)
		}
		for _, ev := range events {
			var ce struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(ev, &ce); err != nil || ce.ID == "" {
				t.Fatalf("metering message %d: %v", m.Seq, err)
			}
			if slices.Contains(accepted, ce.ID) {
				acked = append(acked, ce.ID)
			} else {
				unacked = append(unacked, ce.ID)
			}
		}
	}
	slices.Sort(unacked)
	return unacked, acked
}

func unacked(t *testing.T, d map[string]backuptest.Stream, accepted []string) []string {
	t.Helper()
	u, _ := usageAboveFloor(t, d, accepted)
	return u
}

func ackedAboveFloor(t *testing.T, d map[string]backuptest.Stream, accepted []string) []string {
	t.Helper()
	_, a := usageAboveFloor(t, d, accepted)
	return a
}

func eventIDs(om *cluster.OpenMeter) []string {
	var ids []string
	for _, e := range om.Events() {
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	return ids
}

// A loaded 3-node cluster is backed up with `kgentsd backup`, destroyed
// (every node killed, its store gone with it) and restored with `kgentsd
// restore` into a fresh 3-node cluster: every stream and bucket is equal
// message for message and R3 again, with the OpenMeter sink's position
// (usage delivered, usage refused during an OpenMeter outage and left
// pending); new kgentsd replicas find every acknowledged reply in its
// session's history and every watched event in its replay, and bill every
// pending event once: billed before + billed after == served, nothing twice.
func TestBackupRestoreCluster(t *testing.T) {
	if !long() && os.Getenv("KGENTS_CLUSTER_BACKUP") == "" {
		// Two 3-node clusters and six kgentsd processes: ~35 s of the 2
		// cores; make test runs the single-server round trip (backup/).
		t.Skip("a second cluster and six kgentsd processes (~35 s): run with make cluster or KGENTS_CLUSTER_BACKUP=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, om := startCluster(t)
	load := cluster.NewLoad(c)
	run := func(d time.Duration) {
		lctx, stop := context.WithTimeout(ctx, d)
		defer stop()
		if err := load.Run(lctx, 1, 2); err != nil {
			t.Fatal(err)
		}
	}
	run(3 * time.Second)
	code, _, err := c.Replicas[0].Do(ctx, "POST", "/v1/soul/dialogue", cluster.Bob, `{"prompt":"idempotent"}`, nil, "Idempotency-Key", "cluster-backup-idem")
	if err != nil || code != 200 {
		t.Fatalf("idempotent call: %d %v", code, err)
	}
	load.Record(cluster.Bob, cluster.RouteDialogue, code)
	checkBilling(t, ctx, load, om)
	// An OpenMeter outage: what is served now stays pending.
	om.Refuse(true)
	run(3 * time.Second)
	if err := cluster.PollCtx(ctx, 10*time.Second, func() error {
		if om.Refused() == 0 {
			return fmt.Errorf("no batch refused yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Replicas {
		if _, err := r.Term(30 * time.Second); err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
	}
	_, jsA := c.NATS.Connect(t)
	before, err := backuptest.Dump(ctx, jsA)
	if err != nil {
		t.Fatal(err)
	}
	acceptedA := eventIDs(om)
	pending := unacked(t, before, acceptedA)
	aboveFloor := ackedAboveFloor(t, before, acceptedA)
	sink := before[billing.StreamName].Consumers[billing.ConsumerName]
	if len(pending) == 0 {
		t.Fatalf("no usage pending at the backup (sink %+v)", sink)
	}
	t.Logf("at the backup: %d usage events billed, %d pending (sink: ack floor %d, %d unacknowledged, %d undelivered)",
		len(acceptedA), len(pending), sink.AckFloor, sink.AckPending, sink.Pending)

	dir := filepath.Join(t.TempDir(), "backup")
	began := time.Now()
	out, _ := kgentsdCommand(t, ctx, c.NATS, map[string]string{"NATS_SERVERS": c.NATS.URLs(), "LOG_LEVEL": "warn"}, "backup", "--to", dir)
	t.Logf("kgentsd backup took %v:\n%s", time.Since(began).Round(time.Millisecond), out)
	for _, nd := range c.NATS.Nodes {
		nd.Kill()
	}

	fresh := cluster.StartNATS(t, 3)
	began = time.Now()
	_, log := kgentsdCommand(t, ctx, fresh, map[string]string{"NATS_SERVERS": fresh.URLs(), "LOG_LEVEL": "warn"}, "restore", "--from", dir)
	t.Logf("kgentsd restore took %v; warnings:\n%s", time.Since(began).Round(time.Millisecond), log)
	_, jsB := fresh.Connect(t)
	after, err := backuptest.Dump(ctx, jsB)
	if err != nil {
		t.Fatal(err)
	}
	if diff := backuptest.Diff(before, after, 0); len(diff) > 0 {
		t.Fatalf("the restored cluster differs:\n%s", strings.Join(diff, "\n"))
	}
	msgs := 0
	for _, s := range after {
		msgs += len(s.Messages)
	}
	t.Logf("restored %d streams, %d messages, equal to the backed-up cluster", len(after), msgs)
	restored := &cluster.Cluster{NATS: fresh}
	verifyR3(t, ctx, restored, 60*time.Second)

	// New replicas on the restored cluster, OpenMeter back.
	om2 := cluster.StartOpenMeter(t)
	env := om2.Env()
	env["KGENTS_TIERS_FILE"] = unlimitedTiers(t)
	restored = cluster.StartOn(t, fresh, 3, env)
	load.Use(restored)
	if err := load.Verify(ctx); err != nil {
		t.Error(err)
	}
	// Billed before the backup and after the restore (OpenMeter keeps one
	// event per id) == served; an event billed on both sides only if the
	// sink had acknowledged it above its ack floor, which a cluster's
	// restore does not keep (TestRestoredConsumerPosition).
	start := time.Now()
	var diff []string
	err = cluster.PollCtx(ctx, 90*time.Second, func() error {
		union := map[string]cluster.BilledEvent{}
		for _, e := range append(om.Events(), om2.Events()...) {
			union[e.ID] = e
		}
		var events []cluster.BilledEvent
		for _, e := range union {
			events = append(events, e)
		}
		if diff = cluster.BillingDiff(load.Served(), cluster.BilledOf(events), load.Unanswered()); len(diff) > 0 {
			return fmt.Errorf("%d differences", len(diff))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("billed != served %v after the restore:\n%s", time.Since(start).Round(time.Millisecond), strings.Join(diff, "\n"))
	}
	got := eventIDs(om2)
	for _, id := range pending {
		if !slices.Contains(got, id) {
			t.Errorf("pending event %s not billed after the restore", id)
		}
	}
	again := 0
	for _, id := range got {
		if slices.Contains(acceptedA, id) {
			again++
			if !slices.Contains(aboveFloor, id) {
				t.Errorf("event %s billed before the backup (at or below the sink's ack floor) and again after the restore", id)
			}
		}
	}
	t.Logf("after the restore: the %d pending events billed in %v, %d events in all, %d billed again (acknowledged above the floor at the backup: %d), %d redeliveries dropped by id",
		len(pending), time.Since(start).Round(time.Millisecond), len(got), again, len(aboveFloor), om2.Redeliveries())
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// What a restore does to a durable consumer with messages acknowledged out
// of order (docs/operations.md relies on it): a single server restores its
// exact state (the unacknowledged delivered again after the ack wait); a
// cluster restores it at its ack floor, so everything above the floor is
// delivered again, acknowledged or not.
func TestRestoredConsumerPosition(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes int
		// Stream sequences delivered after the restore (1 and 2 were
		// acknowledged in order, 5 and 7 out of order; 1–8 delivered).
		want []uint64
	}{
		{"single server", 1, []uint64{3, 4, 6, 8, 9, 10}},
		{"3-node cluster", 3, []uint64{3, 4, 5, 6, 7, 8, 9, 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.nodes > 1 && !long() && os.Getenv("KGENTS_CLUSTER_BACKUP") == "" {
				t.Skip("two 3-node clusters: run with make cluster or KGENTS_CLUSTER_BACKUP=1")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// A single server is a plain one (natstest), not a 1-node cluster.
			start := func() (*nats.Conn, jetstream.JetStream, func()) {
				if tc.nodes == 1 {
					s := natstest.Start(t)
					nc, js := s.Connect(t)
					return nc, js, s.Stop
				}
				c := cluster.StartNATS(t, tc.nodes)
				nc, js := c.Connect(t)
				return nc, js, func() {
					for _, nd := range c.Nodes {
						nd.Kill()
					}
				}
			}
			nc, js, destroy := start()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "kgent-position", Subjects: []string{"position.>"}, Replicas: tc.nodes}); err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if _, err := js.Publish(ctx, fmt.Sprintf("position.%d", i), []byte("m")); err != nil {
					t.Fatal(err)
				}
			}
			const ackWait = time.Second
			c, err := js.CreateOrUpdateConsumer(ctx, "kgent-position", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
			if err != nil {
				t.Fatal(err)
			}
			batch, err := c.FetchNoWait(8)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				md, _ := m.Metadata()
				if s := md.Sequence.Stream; s <= 2 || s == 5 || s == 7 {
					if err := m.DoubleAck(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			if n != 8 {
				t.Fatalf("fetched %d, want 8", n)
			}
			dir := filepath.Join(t.TempDir(), "b")
			if _, err := backup.Backup(ctx, nc, dir, backup.Options{Logger: quietLog}); err != nil {
				t.Fatal(err)
			}
			destroy()
			nc2, js2, _ := start()
			if _, err := backup.Restore(ctx, nc2, dir, backup.Options{Logger: quietLog}); err != nil {
				t.Fatal(err)
			}
			// Collect for a few ack waits: on a single server the
			// unacknowledged come after the ack wait.
			var got []uint64
			until := time.Now().Add(4 * ackWait)
			for time.Now().Before(until) {
				// Each request bounded: one can go unanswered while the
				// consumer's leader is elected.
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				c2, err := js2.Consumer(rctx, "kgent-position", "d")
				var b jetstream.MessageBatch
				if err == nil {
					b, err = c2.Fetch(10, jetstream.FetchMaxWait(ackWait/2))
				}
				if err != nil {
					cancel()
					pause(ctx, 100*time.Millisecond)
					continue
				}
				for m := range b.Messages() {
					md, _ := m.Metadata()
					got = append(got, md.Sequence.Stream)
					if err := m.DoubleAck(rctx); err != nil {
						t.Errorf("ack of %d: %v", md.Sequence.Stream, err)
					}
				}
				cancel()
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("delivered after the restore %v, want %v", got, tc.want)
			}
		})
	}
}
