package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/backup"
	"github.com/kgents/kgents-go/backup/backuptest"
	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/cluster"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

const (
	bob, carol, ops = "kg_dev_bob", "kg_dev_carol", "kg_dev_ops"
	webhookSecret   = "whsec_backup"
)

// call makes a REST call and fails the test unless it answers 200; it
// returns the body.
func call(t *testing.T, in *servertest.Instance, method, path, key, body string, headers ...string) []byte {
	t.Helper()
	resp, b := in.Do(t, method, path, key, body, headers...)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return b
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

// poll calls fn until it returns nil, failing the test after within.
func poll(t *testing.T, within time.Duration, what string, fn func() error) {
	t.Helper()
	if err := cluster.Poll(within, fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// loaded is what a loaded kgentsd left: the client's views to compare
// after the restore.
type loaded struct {
	sessions    []byte            // GET /v1/kgent/sessions as bob
	transcripts map[string][]byte // session id → GET …/messages
	idemBody    string            // the idempotent create's body and key
	idemKey     string
	idemReply   []byte
	tenants     []byte // GET /v1/admin/tenants
	audit       []byte // GET /v1/admin/audit
	billing     []byte // GET /v1/billing as the signed-up tenant
	signupKey   string
	usage       map[string]map[string]any // GET /v1/usage by key, the last call each made
}

// load makes kgentsd (OpenMeter off: usage events stay pending on the
// sink's consumer) hold some of everything: sessions with transcripts and
// events, an idempotent create, usage counters, tenants, keys, an invite,
// a sign-up, audit records and applied Stripe webhooks.
func load(t *testing.T, in *servertest.Instance) *loaded {
	t.Helper()
	l := &loaded{transcripts: map[string][]byte{}, usage: map[string]map[string]any{}}
	for i := range 2 {
		s := decode(t, call(t, in, "POST", "/v1/kgent/sessions", bob, fmt.Sprintf(`{"title":"backup %d","mode":"advise"}`, i)))
		id := s["id"].(string)
		for j := range 2 {
			call(t, in, "POST", "/v1/kgent/sessions/"+id+"/messages", bob, fmt.Sprintf(`{"message":"message %d of session %d","stream":false}`, j, i))
		}
	}
	l.idemKey, l.idemBody = "backup-idem-1", `{"title":"idempotent"}`
	l.idemReply = call(t, in, "POST", "/v1/kgent/sessions", bob, l.idemBody, "Idempotency-Key", l.idemKey)
	call(t, in, "POST", "/v1/soul/dialogue", carol, `{"prompt":"what to back up?"}`)

	tn := decode(t, call(t, in, "POST", "/v1/admin/tenants", ops, `{"name":"Backed up","email":"backup@example.com","tier":"pro"}`))
	tid := tn["id"].(string)
	call(t, in, "POST", "/v1/admin/tenants/"+tid+"/keys", ops, `{"name":"root","scopes":["read","write","admin"]}`)
	call(t, in, "POST", "/v1/admin/invites", ops, `{"tier":"pro","expires_in":3600}`)
	su := decode(t, call(t, in, "POST", "/v1/signup", "", `{"email":"signup@example.com","name":"Signed up"}`))
	l.signupKey = su["secret"].(string)
	sid := su["tenant"].(map[string]any)["id"].(string)
	now := time.Now().Unix()
	for _, ev := range []map[string]any{
		{"id": "evt_backup_co", "object": "event", "api_version": "2024-06-20", "created": now, "type": "checkout.session.completed",
			"data": map[string]any{"object": map[string]any{"id": "cs_backup", "object": "checkout.session", "mode": "subscription",
				"client_reference_id": sid, "customer": "cus_backup", "subscription": "sub_backup"}}},
		{"id": "evt_backup_sc", "object": "event", "api_version": "2024-06-20", "created": now + 1, "type": "customer.subscription.created",
			"data": map[string]any{"object": map[string]any{"id": "sub_backup", "object": "subscription", "customer": "cus_backup",
				"status": "active", "metadata": map[string]any{"tenant_id": sid}, "current_period_end": now + 30*86400,
				"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_backup", "object": "subscription_item", "current_period_end": now + 30*86400,
					"price": map[string]any{"id": "price_pro_month", "object": "price", "recurring": map[string]any{"interval": "month"}}}}}}}},
	} {
		body, _ := json.Marshal(ev)
		req, _ := http.NewRequest(http.MethodPost, in.URL+"/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", lifecycletest.Sign(body, webhookSecret, time.Time{}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("webhook %s: %d %s", ev["id"], resp.StatusCode, b)
		}
	}
	poll(t, 15*time.Second, "the Stripe webhooks applied", func() error {
		resp, b := in.Do(t, "GET", "/v1/billing", l.signupKey, "")
		st := decode(t, b)
		if sub, _ := st["subscription"].(map[string]any); resp.StatusCode != 200 || st["customer_id"] != "cus_backup" || sub == nil || sub["status"] != "active" {
			return fmt.Errorf("GET /v1/billing: %d %s", resp.StatusCode, b)
		}
		l.billing = b
		return nil
	})

	// The views to compare, reads last.
	l.sessions = call(t, in, "GET", "/v1/kgent/sessions", bob, "")
	for _, s := range decode(t, l.sessions)["sessions"].([]any) {
		id := s.(map[string]any)["id"].(string)
		l.transcripts[id] = call(t, in, "GET", "/v1/kgent/sessions/"+id+"/messages", bob, "")
	}
	l.tenants = call(t, in, "GET", "/v1/admin/tenants", ops, "")
	l.audit = call(t, in, "GET", "/v1/admin/audit", ops, "")
	for _, k := range []string{bob, carol} {
		l.usage[k] = decode(t, call(t, in, "GET", "/v1/usage", k, ""))
	}
	return l
}

// meteringIDs is the CloudEvent id of every usage event in the metering
// stream after seq.
// meteringIDs lists the usage event ids stored after sequence after (a
// call's events share a message) and how many messages hold them.
func meteringIDs(t *testing.T, d map[string]backuptest.Stream, after uint64) (ids []string, msgs int) {
	t.Helper()
	for _, m := range d[billing.StreamName].Messages {
		if m.Seq <= after || !strings.HasPrefix(m.Subject, strings.TrimSuffix(billing.EventSubjects, ">")) {
			continue
		}
		msgs++
		events, err := billing.SplitMessage(m.Subject, m.Data)
		if err != nil {
			t.Fatalf("metering message %d: %v", m.Seq, err)
		}
		for _, ev := range events {
			var ce struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(ev, &ce); err != nil || ce.ID == "" {
				t.Fatalf("metering message %d holds something that is not a CloudEvent: %v %s", m.Seq, err, ev)
			}
			ids = append(ids, ce.ID)
		}
	}
	slices.Sort(ids)
	return ids, msgs
}

func billedIDs(om *cluster.OpenMeter) []string {
	var ids []string
	for _, e := range om.Events() {
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	return ids
}

func consumerInfo(ctx context.Context, js jetstream.JetStream, stream, name string) (*jetstream.ConsumerInfo, error) {
	c, err := js.Consumer(ctx, stream, name)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

// A loaded kgentsd's NATS is backed up, destroyed, and restored into a
// fresh server: every stream and bucket is equal message for message
// (sessions, transcripts, events, counters, idempotency, tenants, keys,
// audit, Stripe state, the metering outbox) with the OpenMeter sink's
// position; a kgentsd on the restored server serves the same sessions,
// transcripts, tenants, audit and billing, replays the idempotent create,
// keeps the usage counters, and its sink delivers exactly the usage events
// that were pending at the backup — none of those delivered before it.
func TestBackupRestoreLoadedServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	natsA := natstest.Start(t)
	omA := cluster.StartOpenMeter(t)
	env := map[string]string{
		"NATS_SERVERS": natsA.URL(), "STRIPE_WEBHOOK_SECRET": webhookSecret, "KGENTS_SIGNUP": "open", "LOG_LEVEL": "info",
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range env {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	// 1. Usage delivered to OpenMeter (acknowledged on the sink's consumer).
	a1 := servertest.Start(t, with(omA.Env()))
	for range 3 {
		call(t, a1, "POST", "/v1/soul/dialogue", bob, `{"prompt":"delivered before the backup"}`)
	}
	_, jsA := natsA.Connect(t)
	poll(t, 20*time.Second, "usage delivered to OpenMeter", func() error {
		ci, err := consumerInfo(ctx, jsA, billing.StreamName, billing.ConsumerName)
		if err != nil {
			return err
		}
		if omA.Len() < 3 || ci.NumPending+uint64(ci.NumAckPending) > 0 {
			return fmt.Errorf("%d billed, consumer %d pending, %d unacknowledged", omA.Len(), ci.NumPending, ci.NumAckPending)
		}
		return nil
	})
	if err := a1.Stop(); err != nil {
		t.Fatal(err)
	}
	delivered := billedIDs(omA)

	// 2. Everything else, with OpenMeter off: its events stay pending.
	a2 := servertest.Start(t, env)
	want := load(t, a2)
	if err := a2.Stop(); err != nil {
		t.Fatal(err)
	}
	before, err := backuptest.Dump(ctx, jsA)
	if err != nil {
		t.Fatal(err)
	}
	sink := before[billing.StreamName].Consumers[billing.ConsumerName]
	pending, pendingMsgs := meteringIDs(t, before, sink.AckFloor)
	if sink.Pending == 0 || uint64(pendingMsgs) != sink.Pending || len(delivered) == 0 {
		t.Fatalf("want usage both delivered (%d) and pending: sink %+v, %d events after its ack floor", len(delivered), sink, len(pending))
	}
	for _, id := range delivered {
		if slices.Contains(pending, id) {
			t.Fatalf("event %s was delivered and is pending", id)
		}
	}
	var names []string
	for n := range before {
		names = append(names, n)
	}
	for _, k := range backup.Known() {
		if !slices.Contains(names, k) {
			t.Errorf("the load did not create %s: the round trip does not cover it", k)
		}
	}

	// 3. Back up, destroy, restore into a fresh server.
	dir := t.TempDir() + "/backup"
	ncA, _ := natsA.Connect(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	began := time.Now()
	m, err := backup.Backup(ctx, ncA, dir, backup.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup of %d streams took %v", len(m.Streams), time.Since(began).Round(time.Millisecond))
	for _, s := range m.Streams {
		if s.Name == billing.StreamName {
			if len(s.Consumers) != 1 || s.Consumers[0].AckFloor != sink.AckFloor || s.Consumers[0].Pending != sink.Pending {
				t.Errorf("manifest's metering consumers %+v, want the sink at %+v", s.Consumers, sink)
			}
		}
	}
	natsA.Stop()

	natsB := natstest.Start(t)
	ncB, jsB := natsB.Connect(t)
	began = time.Now()
	if _, err := backup.Restore(ctx, ncB, dir, backup.Options{Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Logf("restore took %v", time.Since(began).Round(time.Millisecond))
	after, err := backuptest.Dump(ctx, jsB)
	if err != nil {
		t.Fatal(err)
	}
	if diff := backuptest.Diff(before, after, 0); len(diff) > 0 {
		t.Fatalf("the restore differs from the backed-up server:\n%s", strings.Join(diff, "\n"))
	}
	// A single server restores the consumers' exact state.
	for name, st := range before {
		for c, want := range st.Consumers {
			if got := after[name].Consumers[c]; got != want {
				t.Errorf("%s/%s restored at %+v, was %+v", name, c, got, want)
			}
		}
	}
	msgs := 0
	for _, s := range after {
		msgs += len(s.Messages)
	}
	t.Logf("restored %d streams, %d messages, equal to the originals; %d usage events pending on the sink", len(after), msgs, len(pending))

	// A second restore is refused and changes nothing.
	if _, err := backup.Restore(ctx, ncB, dir, backup.Options{Logger: log}); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("restore over existing streams: %v, want a refusal", err)
	}
	if again, err := backuptest.Dump(ctx, jsB); err != nil || len(backuptest.Diff(after, again, 0)) > 0 {
		t.Fatalf("a refused restore changed the server: %v %v", err, backuptest.Diff(after, again, 0))
	}

	// 4. kgentsd on the restored server.
	omB := cluster.StartOpenMeter(t)
	b := servertest.Start(t, with(map[string]string{"NATS_SERVERS": natsB.URL(),
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": omB.URL, "OPENMETER_API_KEY": cluster.OpenMeterKey, "OPENMETER_FLUSH_INTERVAL": "100ms"}))
	poll(t, 30*time.Second, "the pending usage delivered after the restore", func() error {
		if got := billedIDs(omB); len(got) < len(pending) {
			return fmt.Errorf("%d of %d pending events delivered", len(got), len(pending))
		}
		return nil
	})
	if got := billedIDs(omB); !slices.Equal(got, pending) {
		t.Errorf("delivered after the restore:\n  %v\nwant exactly the pending events\n  %v", got, pending)
	}

	// The client's view.
	for _, k := range []string{bob, carol} {
		// The first call each key makes: counters as restored, plus this call.
		got := decode(t, call(t, b, "GET", "/v1/usage", k, ""))
		if !sameUsage(want.usage[k], got) {
			t.Errorf("usage of %s after the restore:\n  %v\nbefore:\n  %v", k, got, want.usage[k])
		}
	}
	if got := call(t, b, "GET", "/v1/kgent/sessions", bob, ""); !bytes.Equal(got, want.sessions) {
		t.Errorf("sessions after the restore:\n  %s\nbefore:\n  %s", got, want.sessions)
	}
	for id, tr := range want.transcripts {
		if got := call(t, b, "GET", "/v1/kgent/sessions/"+id+"/messages", bob, ""); !bytes.Equal(got, tr) {
			t.Errorf("transcript of %s after the restore:\n  %s\nbefore:\n  %s", id, got, tr)
		}
	}
	if got := call(t, b, "POST", "/v1/kgent/sessions", bob, want.idemBody, "Idempotency-Key", want.idemKey); !bytes.Equal(got, want.idemReply) {
		t.Errorf("the idempotent create replayed after the restore:\n  %s\nfirst:\n  %s", got, want.idemReply)
	}
	if got := call(t, b, "GET", "/v1/kgent/sessions", bob, ""); !bytes.Equal(got, want.sessions) {
		t.Errorf("the idempotent replay created a session:\n  %s", got)
	}
	if got := call(t, b, "GET", "/v1/admin/tenants", ops, ""); !bytes.Equal(got, want.tenants) {
		t.Errorf("tenants after the restore:\n  %s\nbefore:\n  %s", got, want.tenants)
	}
	if got := call(t, b, "GET", "/v1/admin/audit", ops, ""); !bytes.Equal(got, want.audit) {
		t.Errorf("audit after the restore:\n  %s\nbefore:\n  %s", got, want.audit)
	}
	if got := call(t, b, "GET", "/v1/billing", want.signupKey, ""); !bytes.Equal(got, want.billing) {
		t.Errorf("billing after the restore:\n  %s\nbefore:\n  %s", got, want.billing)
	}

	// Everything billed after the restore was pending at the backup or is
	// new (served by b); nothing delivered before it came again. The billed
	// ids are read before the stream: the last calls' usage events are
	// emitted after their responses, and one billed between a dump and the
	// read would look like neither.
	billedB := billedIDs(omB)
	final, err := backuptest.Dump(ctx, jsB)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := meteringIDs(t, final, before[billing.StreamName].LastSeq)
	for _, id := range billedB {
		if !slices.Contains(pending, id) && !slices.Contains(fresh, id) {
			t.Errorf("billed after the restore: %s, neither pending at the backup nor new", id)
		}
		if slices.Contains(delivered, id) {
			t.Errorf("billed twice: %s was delivered before the backup", id)
		}
	}
	// (A batch posted again within b's sink, its acknowledgement late, is
	// the sink's at-least-once delivery that OpenMeter drops by id.)
	t.Logf("after the restore: %d events billed, %d of them redelivered within the new sink and dropped by id", omB.Len(), omB.Redeliveries())
}

// sameUsage compares GET /v1/usage before the backup and as the first call
// after the restore: the same but for requests_today, one more (this call).
func sameUsage(before, after map[string]any) bool {
	n, ok := before["requests_today"].(float64)
	if !ok || n < 1 {
		return false
	}
	want := map[string]any{}
	for k, v := range before {
		want[k] = v
	}
	want["requests_today"] = n + 1
	return reflect.DeepEqual(want, after)
}

// tWriter logs through t (go test -v shows the backup's progress).
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
