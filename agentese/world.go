package agentese

import (
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// The world context: external entities. Every world node is built by
// worldNode from a worldProfile (what the entity is, seen through each
// archetype's lens) and keeps per-tenant state (worldState), so mutating
// aspects really change what later reads report: world.house.build makes
// the developer manifest's build_status "passing", a refactor makes it
// "stale", deploy refuses a stale build, demolish is visible to everyone.

// worldProfile describes a world entity. Profiles are immutable tables.
type worldProfile struct {
	entity     string // the holon: "house"
	summary    string
	definition string
	relations  []relation
	// developer lens: the entity as a codebase.
	language     string
	dependencies []string
	structure    []namedNote // directory -> purpose
	tests        int
	coverage     float64 // at revision 0, before refactors
	knownIssues  []string
	// architect lens: the entity as a structure.
	style     string
	floors    int
	unit      string // what part sizes are measured in
	parts     []part
	materials []string
	// poet lens.
	images []string
	// economist lens.
	value    float64 // in credits
	upkeep   float64 // fraction of value per year
	growth   float64 // fraction per year
	currency string
	// inhabitant lens.
	capacity int
	comforts []string
	// scientist lens.
	phenomena  []string
	hypotheses []string
	// admin lens.
	owner    string
	policies []string
}

type relation struct{ kind, target, note string }

type namedNote struct{ name, note string }

type part struct {
	name  string
	size  float64
	floor int
}

// World aspects per archetype (the Python service's lists, completed for
// every world archetype). Immutable.
var (
	worldCommon      = []string{"define", "relate", "transform"}
	worldByArchetype = map[string][]string{
		"architect":  {"renovate", "measure", "blueprint", "demolish", "design"},
		"developer":  {"build", "deploy", "debug", "test", "refactor"},
		"poet":       {"describe", "metaphor", "compose"},
		"economist":  {"appraise", "forecast", "invest"},
		"inhabitant": {"inhabit", "furnish", "tour"},
		"scientist":  {"observe", "hypothesize", "experiment"},
		"admin":      {"audit", "configure"},
	}
)

// Per-tenant bounds of world state.
const (
	worldMaxEvents      = 16
	worldMaxFurnishings = 16
	worldMaxConfig      = 16
	worldMaxHistory     = 8
)

// worldState is one tenant's view of one entity.
type worldState struct {
	mu          sync.Mutex
	revision    int // bumped by every change to the entity itself
	builtRev    int // revision of the last build; -1: never built
	deployed    map[string]int
	demolished  bool
	refactors   int
	invested    float64
	occupants   int
	renovations []string
	transforms  []string
	furnishings []string
	config      map[string]string
	events      []worldEvent
}

type worldEvent struct {
	at                time.Time
	aspect, archetype string
	note              string
}

func newWorldState() *worldState {
	return &worldState{builtRev: -1, deployed: map[string]int{}, config: map[string]string{}}
}

// pushBounded appends v, dropping the oldest element beyond max.
func pushBounded[T any](s []T, v T, max int) []T {
	if len(s) < max {
		return append(s, v)
	}
	copy(s, s[1:])
	s[len(s)-1] = v
	return s
}

// world is a world node's implementation over its profile.
type world struct{ p *worldProfile }

func (w world) path() string { return "world." + w.p.entity }

func (w world) state(c *Call) *worldState {
	return slotOf(c.tenant(), w.path(), newWorldState)
}

// worldNode declares a world node.
func worldNode(p *worldProfile) *Node {
	w := world{p}
	opt := func(name string, t KwargType, maxLen int, doc string) Kwarg {
		return Kwarg{Name: name, Type: t, MaxLen: maxLen, Doc: doc}
	}
	req := func(name string, t KwargType, maxLen int, doc string) Kwarg {
		return Kwarg{Name: name, Type: t, Required: true, MaxLen: maxLen, Doc: doc}
	}
	read := func(name, doc string, run RunFunc, kw ...Kwarg) *Aspect {
		return &Aspect{Name: name, Doc: doc, Run: run, Kwargs: kw}
	}
	pure := func(name, doc string, run RunFunc, kw ...Kwarg) *Aspect {
		return &Aspect{Name: name, Doc: doc, Run: run, Kwargs: kw, Cacheable: true}
	}
	mut := func(name, doc string, run RunFunc, kw ...Kwarg) *Aspect {
		return &Aspect{Name: name, Doc: doc, Run: run, Kwargs: kw, Mutates: true}
	}
	return &Node{
		Path:    w.path(),
		Handle:  w.path(),
		Summary: p.summary,
		Common:  worldCommon,
		// Archetypes without a list (philosopher, engineer, artist, teacher)
		// get the base and common aspects only.
		ByArchetype: worldByArchetype,
		Aspects: []*Aspect{
			read("manifest", "The entity through the observer's lens; differs per archetype.", w.manifest),
			pure("define", "What the entity is.", w.define),
			pure("relate", "How the entity relates to others.", w.relate,
				opt("to", TypeString, 64, "only relations to this target")),
			mut("transform", "Turn the entity into something else (recorded; bumps the revision).", w.transform,
				req("into", TypeString, 64, "what it becomes")),

			mut("build", "Build the entity at its current revision.", w.build),
			mut("deploy", "Deploy the last build; refused when the build is stale.", w.deploy,
				Kwarg{Name: "environment", Type: TypeString, Enum: []string{"staging", "production"}, Doc: "where to (default staging)"}),
			read("debug", "Diagnose what is wrong now.", w.debug,
				opt("symptom", TypeString, 512, "what you observed")),
			read("test", "Run the test suites against the current revision.", w.test,
				Kwarg{Name: "suite", Type: TypeString, Enum: []string{"unit", "integration", "all"}, Doc: "which suite (default all)"}),
			mut("refactor", "Restructure without changing behaviour (bumps the revision; the build goes stale).", w.refactor,
				opt("target", TypeString, 64, "the part to refactor (default: the whole)")),

			mut("renovate", "Renovate a part (bumps the revision).", w.renovate,
				opt("part", TypeString, 64, "which part (default: the first)"), opt("style", TypeString, 64, "the new style")),
			pure("measure", "Sizes of every part and the total.", w.measure),
			pure("blueprint", "The plan: floors, parts, materials.", w.blueprint),
			mut("demolish", "Demolish the entity (needs confirm: true).", w.demolish,
				req("confirm", TypeBool, 0, "must be true")),
			pure("design", "A design proposal for a brief.", w.design,
				opt("brief", TypeString, 512, "what the design should achieve")),

			pure("describe", "A short verse about the entity.", w.describe),
			pure("metaphor", "The entity as a metaphor.", w.metaphor,
				opt("for", TypeString, 64, "what the metaphor should speak to")),
			pure("compose", "A poem in a given form.", w.compose,
				Kwarg{Name: "form", Type: TypeString, Enum: []string{"haiku", "couplet", "free"}, Doc: "default haiku"}),

			read("appraise", "Current value, upkeep and investment.", w.appraise),
			read("forecast", "Projected value year by year.", w.forecast,
				Kwarg{Name: "years", Type: TypeInteger, Ranged: true, Min: 1, Max: 30, Doc: "default 5"}),
			mut("invest", "Invest in the entity.", w.invest,
				Kwarg{Name: "amount", Type: TypeNumber, Required: true, Ranged: true, Min: 0.01, Max: 1e9, Doc: "credits"}),

			mut("inhabit", "Move occupants in.", w.inhabit,
				Kwarg{Name: "occupants", Type: TypeInteger, Ranged: true, Min: 0, Max: float64(p.capacity), Doc: "how many (default 1)"}),
			mut("furnish", "Add a furnishing.", w.furnish, req("item", TypeString, 64, "what to add")),
			read("tour", "A walk through every part, as it is now.", w.tour),

			read("observe", "Observations of the entity's phenomena, as it is now.", w.observe),
			pure("hypothesize", "A testable hypothesis for a question.", w.hypothesize,
				opt("question", TypeString, 512, "what you want to know")),
			pure("experiment", "A controlled experiment varying one variable, with its (simulated, deterministic) result.", w.experiment,
				req("variable", TypeString, 64, "what to vary")),

			read("audit", "The change log and policies.", w.audit),
			mut("configure", "Set a configuration key.", w.configure,
				req("key", TypeString, 64, "the setting"), req("value", TypeString, 256, "its value")),
		},
	}
}

// ack is the result of a mutating aspect: what was done, at which revision.
func (w world) ack(c *Call, st *worldState, note string) Outcome {
	st.events = pushBounded(st.events, worldEvent{at: c.Now(), aspect: c.Path.Aspect(), archetype: c.Archetype, note: note}, worldMaxEvents)
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "aspect": str(c.Path.Aspect()), "status": str("done"),
		"note": str(note), "revision": integer(st.revision), "archetype": str(c.Archetype), "at": ts(c.Now()),
	}.V()}
}

// refuseIfDemolished is the precondition of aspects that need the entity standing.
func (w world) refuseIfDemolished(c *Call, st *worldState) error {
	if !st.demolished {
		return nil
	}
	return newError(KindPrecondition, fmt.Sprintf(
		"%s was demolished; %s needs it standing. Invoke %s.build to rebuild it.", w.path(), c.Path.Aspect(), w.path()))
}

// Helpers shared by nodes.

func notesObject(ns []namedNote) obj {
	o := make(obj, len(ns))
	for _, n := range ns {
		o[n.name] = str(n.note)
	}
	return o
}

func stringMap(m map[string]string) obj {
	o := make(obj, len(m))
	for k, v := range m {
		o[k] = str(v)
	}
	return o
}

func partsValue(ps []part, unit string) *structpb.Value {
	vs := make([]*structpb.Value, len(ps))
	for i, p := range ps {
		vs[i] = obj{"name": str(p.name), "size": num(p.size), "unit": str(unit), "floor": integer(p.floor)}.V()
	}
	return array(vs...)
}

// hashIndex picks an index in [0, n) deterministically from s.
func hashIndex(s string, n int) int {
	if n <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return int(h.Sum64() % uint64(n))
}

// unitHash maps s deterministically to [0, 1).
func unitHash(s string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return float64(h.Sum64()>>11) / (1 << 53)
}

// pick chooses an element deterministically from s.
func pick(options []string, s string) string {
	if len(options) == 0 {
		return ""
	}
	return options[hashIndex(s, len(options))]
}
