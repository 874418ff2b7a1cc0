package agentese

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// self.memory: a small per-tenant key/value memory an agent can write
// engrams to, recall, prune, checkpoint and consolidate.
func init() { registerBuiltin(newSelfMemory) }

const (
	memorySlot        = "self.memory"
	memoryMaxEntries  = 32
	memoryMaxContent  = 2048
	memoryMaxKey      = 64
	memoryCheckpoints = 4
)

type memoryStore struct {
	mu          sync.Mutex
	entries     map[string]engram
	checkpoints []checkpoint
}

type engram struct {
	content   string
	archetype string
	at        time.Time
}

type checkpoint struct {
	label string
	keys  []string
	at    time.Time
}

func memoryOf(c *Call) *memoryStore {
	return slotOf(c.tenant(), memorySlot, func() *memoryStore { return &memoryStore{entries: map[string]engram{}} })
}

func (m *memoryStore) keys() []string {
	ks := make([]string, 0, len(m.entries))
	for k := range m.entries {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func newSelfMemory(Deps) *Node {
	key := func(required bool, doc string) Kwarg {
		return Kwarg{Name: "key", Type: TypeString, Required: required, MaxLen: memoryMaxKey, Doc: doc}
	}
	return &Node{
		Path:    "self.memory",
		Handle:  "self.memory",
		Summary: "A small key/value memory per tenant: engrams, recall, prune, checkpoints.",
		Common:  []string{"recall", "engram", "prune", "checkpoint", "consolidate"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "How full memory is, its keys and checkpoints.", Run: memoryManifest},
			{Name: "recall", Doc: "One engram by key, or every engram (optionally under a key prefix).", Run: memoryRecall,
				Kwargs: []Kwarg{key(false, "the engram's key"), {Name: "prefix", Type: TypeString, MaxLen: memoryMaxKey, Doc: "only keys starting with this"}}},
			{Name: "engram", Doc: "Store (or overwrite) an engram.", Mutates: true, Run: memoryEngram,
				Kwargs: []Kwarg{key(true, "the engram's key"), {Name: "content", Type: TypeString, Required: true, MaxLen: memoryMaxContent, Doc: "what to remember"}}},
			{Name: "prune", Doc: "Forget one engram, or every engram older than N minutes.", Mutates: true, Run: memoryPrune,
				Kwargs: []Kwarg{key(false, "the engram to forget"),
					{Name: "older_than_minutes", Type: TypeInteger, Ranged: true, Min: 0, Max: 525600, Doc: "forget engrams older than this"}}},
			{Name: "checkpoint", Doc: "Record which engrams exist now (the last 4 checkpoints are kept).", Mutates: true, Run: memoryCheckpoint,
				Kwargs: []Kwarg{{Name: "label", Type: TypeString, MaxLen: 64, Doc: "a name for the checkpoint"}}},
			{Name: "consolidate", Doc: "Merge engrams with identical content into the one with the smallest key.", Mutates: true, Run: memoryConsolidate},
		},
	}
}

func memoryManifest(_ context.Context, c *Call) (Outcome, error) {
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	size := 0
	for _, e := range m.entries {
		size += len(e.content)
	}
	cps := make([]*structpb.Value, len(m.checkpoints))
	for i, cp := range m.checkpoints {
		cps[i] = obj{"label": str(cp.label), "engrams": integer(len(cp.keys)), "at": ts(cp.at)}.V()
	}
	return Outcome{Value: obj{
		"entries": integer(len(m.entries)), "capacity": integer(memoryMaxEntries), "bytes": integer(size),
		"keys": strs(m.keys()), "checkpoints": array(cps...),
	}.V()}, nil
}

func engramValue(k string, e engram) *structpb.Value {
	return obj{"key": str(k), "content": str(e.content), "archetype": str(e.archetype), "at": ts(e.at)}.V()
}

func memoryRecall(_ context.Context, c *Call) (Outcome, error) {
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Args.Has("key") {
		k := c.Args.Str("key")
		e, ok := m.entries[k]
		if !ok {
			return Outcome{Value: obj{"key": str(k), "found": boolean(false)}.V()}, nil
		}
		v := engramValue(k, e)
		v.GetStructValue().Fields["found"] = boolean(true)
		return Outcome{Value: v}, nil
	}
	prefix := c.Args.Str("prefix")
	var vs []*structpb.Value
	for _, k := range m.keys() {
		if strings.HasPrefix(k, prefix) {
			vs = append(vs, engramValue(k, m.entries[k]))
		}
	}
	return Outcome{Value: obj{"engrams": array(vs...), "count": integer(len(vs))}.V()}, nil
}

func memoryEngram(_ context.Context, c *Call) (Outcome, error) {
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	k := c.Args.Str("key")
	_, exists := m.entries[k]
	if !exists && len(m.entries) >= memoryMaxEntries {
		return Outcome{}, newError(KindPrecondition, fmt.Sprintf(
			"Memory is full (%d engrams); prune or consolidate first.", memoryMaxEntries))
	}
	m.entries[k] = engram{content: c.Args.Str("content"), archetype: c.Archetype, at: c.Now()}
	return Outcome{Value: obj{
		"key": str(k), "stored": boolean(true), "overwrote": boolean(exists),
		"entries": integer(len(m.entries)), "capacity": integer(memoryMaxEntries),
	}.V()}, nil
}

func memoryPrune(_ context.Context, c *Call) (Outcome, error) {
	if !c.Args.Has("key") && !c.Args.Has("older_than_minutes") {
		return Outcome{}, newError(KindArgument, "self.memory.prune needs key or older_than_minutes.")
	}
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	var removed []string
	if c.Args.Has("key") {
		if _, ok := m.entries[c.Args.Str("key")]; ok {
			removed = append(removed, c.Args.Str("key"))
		}
	}
	if c.Args.Has("older_than_minutes") {
		cut := c.Now().Add(-time.Duration(c.Args.Int("older_than_minutes", 0)) * time.Minute)
		for _, k := range m.keys() {
			if m.entries[k].at.Before(cut) && !slices.Contains(removed, k) {
				removed = append(removed, k)
			}
		}
	}
	for _, k := range removed {
		delete(m.entries, k)
	}
	return Outcome{Value: obj{"removed": strs(removed), "entries": integer(len(m.entries))}.V()}, nil
}

func memoryCheckpoint(_ context.Context, c *Call) (Outcome, error) {
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	label := c.Args.Str("label")
	if label == "" {
		label = fmt.Sprintf("checkpoint at %s", c.Now().UTC().Format(time.RFC3339))
	}
	cp := checkpoint{label: label, keys: m.keys(), at: c.Now()}
	m.checkpoints = pushBounded(m.checkpoints, cp, memoryCheckpoints)
	return Outcome{Value: obj{"label": str(label), "keys": strs(cp.keys), "at": ts(cp.at)}.V()}, nil
}

func memoryConsolidate(_ context.Context, c *Call) (Outcome, error) {
	m := memoryOf(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := map[string]string{} // content -> surviving key
	var merged []*structpb.Value
	for _, k := range m.keys() {
		content := m.entries[k].content
		if into, dup := keep[content]; dup {
			delete(m.entries, k)
			merged = append(merged, obj{"key": str(k), "into": str(into)}.V())
			continue
		}
		keep[content] = k
	}
	return Outcome{Value: obj{"merged": array(merged...), "entries": integer(len(m.entries))}.V()}, nil
}
