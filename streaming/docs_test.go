package streaming

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocsCircuitStateValues keeps the documented values of
// kgents_nats_circuit_state equal to what the publisher really sets.
func TestDocsCircuitStateValues(t *testing.T) {
	t.Parallel()
	want := map[string]float64{
		"closed":    stateGauge(stateClosed),
		"open":      stateGauge(stateOpen),
		"half-open": stateGauge(stateHalfOpen),
	}
	row := regexp.MustCompile("(?m)^\\| `kgents_nats_circuit_state` \\| (.*) \\|$")
	pair := regexp.MustCompile(`(\d+) ([a-z-]+)`)
	for _, doc := range []string{"../docs/streaming.md", "../docs/operations.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		m := row.FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no kgents_nats_circuit_state row", doc)
			continue
		}
		got := map[string]float64{}
		for _, p := range pair.FindAllStringSubmatch(string(m[1]), -1) {
			v, _ := strconv.Atoi(p[1])
			got[strings.ReplaceAll(p[2], "_", "-")] = float64(v)
		}
		for name, v := range want {
			if g, ok := got[name]; !ok || g != v {
				t.Errorf("%s says %q for kgents_nats_circuit_state; the code sets %s = %v", doc, m[1], name, v)
			}
		}
	}
}

// TestDocsBrowserSnippetSurvivesReconnect runs the browser snippet of
// docs/streaming.md under node against a stand-in EventSource: the
// connection error EventSource fires before every reconnect (an Event with
// no data) must not throw, and the server's `error` event (with JSON data)
// must still be rendered.
func TestDocsBrowserSnippetSurvivesReconnect(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	b, err := os.ReadFile("../docs/streaming.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```js\n(// In a browser.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("docs/streaming.md: no browser snippet (```js block starting with // In a browser)")
	}
	harness := `
const rendered = [];
let reconnecting = 0, offline = 0, cleared = 0;
function render(type, data, id) { rendered.push([type, data, id]); }
function clearTranscript() { cleared++; }
function showReconnecting() { reconnecting++; }
function showOffline() { offline++; }
class EventSource {
  constructor(url) { this.url = url; this.readyState = EventSource.CONNECTING; this.listeners = {}; globalThis.es0 = this; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  close() { this.readyState = EventSource.CLOSED; }
  fire(ev) {
    for (const fn of this.listeners[ev.type] || []) fn(ev);
    if (typeof this["on" + ev.type] === "function") this["on" + ev.type](ev);
  }
}
EventSource.CONNECTING = 0; EventSource.OPEN = 1; EventSource.CLOSED = 2;
const id = "s1", key = "kg_dev_bob";
` + string(m[1]) + `
const s = globalThis.es0;
s.readyState = EventSource.OPEN;
s.fire(new MessageEvent("chunk", { data: '{"text":"Hi","index":0}', lastEventId: "2" }));
s.readyState = EventSource.CONNECTING;
s.fire(new Event("error"));                  // the connection dropped: EventSource reconnects
s.readyState = EventSource.OPEN;
s.fire(new MessageEvent("error", { data: '{"type":"engine","message":"boom"}', lastEventId: "3" }));
s.readyState = EventSource.CLOSED;
s.fire(new Event("error"));                  // it gave up
const types = rendered.map((r) => r[0]).join(",");
if (types !== "chunk,error") throw new Error("rendered " + types + ", want chunk,error");
if (rendered[1][1].type !== "engine") throw new Error("the server's error event lost its data");
console.log("ok");
`
	f := filepath.Join(t.TempDir(), "snippet.mjs")
	if err := os.WriteFile(f, []byte(harness), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, f).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("the browser snippet of docs/streaming.md fails: %v\n%s", err, out)
	}
}

// TestDocsMinServerVersion keeps every NATS version floor the docs state
// equal to MinServerVersion.
func TestDocsMinServerVersion(t *testing.T) {
	t.Parallel()
	floor := strings.Join(strings.Split(MinServerVersion, ".")[:2], ".")
	claim := regexp.MustCompile(`(?:NATS(?: cluster)? \(?≥|older than) (\d+\.\d+)`)
	seen := 0
	for _, doc := range []string{"../docs/configuration.md", "../docs/operations.md", "../docs/streaming.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range claim.FindAllStringSubmatch(string(b), -1) {
			seen++
			if v := m[1]; v != floor {
				t.Errorf("%s: %q states NATS %s; MinServerVersion is %s", doc, m[0], v, MinServerVersion)
			}
		}
	}
	if seen < 3 {
		t.Errorf("found %d statements of the NATS version floor in the docs, want at least 3", seen)
	}
}
