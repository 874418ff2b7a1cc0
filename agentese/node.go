package agentese

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/tenancy"
)

// The base aspects every node affords every archetype, first in every
// affordance list.
const (
	AspectManifest    = "manifest"
	AspectWitness     = "witness"
	AspectAffordances = "affordances"
)

var baseAspects = [...]string{AspectManifest, AspectWitness, AspectAffordances}

func isBase(name string) bool { return slices.Contains(baseAspects[:], name) }

// Node declares an interaction point: its path, handle and aspects, and
// which archetype is afforded which aspect. A node's affordances for an
// archetype are the base aspects, then Common, then ByArchetype[archetype]
// (or Default when the archetype has no entry).
type Node struct {
	// Path is the node path, e.g. "world.house".
	Path string
	// Handle is the node's handle as Resolve reports it (the path when empty).
	Handle string
	// Summary is one line for docs and manifests.
	Summary string
	// Aspects are every aspect the node implements. manifest is required;
	// witness and affordances get the registry's generic implementations
	// unless declared.
	Aspects []*Aspect
	// Common aspects are afforded to every archetype.
	Common []string
	// ByArchetype lists the extra aspects of particular archetypes.
	ByArchetype map[string][]string
	// Default are the extra aspects of archetypes not in ByArchetype.
	Default []string
}

// Outcome is what an aspect produced.
type Outcome struct {
	Value *structpb.Value
	// Tokens really spent (self.soul aspects; 0 for everything local).
	Tokens int
}

// RunFunc performs an aspect and returns its result.
type RunFunc func(ctx context.Context, c *Call) (Outcome, error)

// StreamFunc performs an aspect as a stream. It must call s.Open once every
// check has passed and before the first chunk; an error returned before
// Open is an ordinary failure, one returned after it ends the open stream.
type StreamFunc func(ctx context.Context, c *Call, s Sink) (Outcome, error)

// Sink receives a streamed aspect's output.
type Sink interface {
	// Open is called once, when the stream is committed to: every check
	// passed. Transports send their response headers here.
	Open() error
	// Chunk delivers a piece of output; index counts from 0.
	Chunk(text string, index int) error
}

// Aspect declares one verb of a node.
type Aspect struct {
	Name string
	// Doc says what the aspect does and returns.
	Doc string
	// Mutates is true when the aspect changes state: invoking it needs the
	// write scope. Everything else only reads.
	Mutates bool
	// Cacheable aspects are pure reads whose result depends only on the
	// node, aspect, archetype and kwargs; their results may be served from
	// the registry's cache (Result.Cached).
	Cacheable bool
	// Kwargs are the keyword arguments the aspect accepts; anything else is
	// refused.
	Kwargs []Kwarg
	// Run performs the aspect (also for streaming aspects invoked unary).
	Run RunFunc
	// Stream, when set, makes the aspect a streaming one.
	Stream StreamFunc
}

// Streams reports whether the aspect streams its output.
func (a *Aspect) Streams() bool { return a.Stream != nil }

// Call is one invocation as an aspect sees it: the path, the observer
// (bound to the caller's key), the caller and the validated kwargs.
type Call struct {
	Path      Path
	Archetype string
	Identity  *tenancy.Identity
	Args      Args

	reg  *Registry
	node *node
}

// Now is the registry's clock.
func (c *Call) Now() time.Time { return c.reg.now() }

// tenant is the caller's tenant state.
func (c *Call) tenant() *tenantState { return c.reg.tenants.get(c.Identity.TenantID) }

// SoulBackend is the Soul service as the self.soul node uses it;
// *soulsvc.Service satisfies it. Budget policy and defaults live there.
type SoulBackend interface {
	Dialogue(ctx context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error)
	Stream(ctx context.Context, req *soulv1.StreamDialogueRequest, emit func(*soulv1.StreamDialogueResponse) error, open func() error) error
	Governance(ctx context.Context, req *soulv1.GovernanceRequest) (*soulv1.GovernanceResponse, error)
}

// Deps are what the built-in nodes are built from.
type Deps struct {
	// Soul backs self.soul and self.judgment; nil makes their soul aspects
	// Unavailable.
	Soul SoulBackend
}

// node is a validated node as the registry holds it.
type node struct {
	decl    *Node
	path    Path
	aspects map[string]*Aspect
	// afford is the ordered affordance list of every known archetype.
	afford map[string][]string
}

// affords reports whether the archetype is afforded the aspect.
func (n *node) affords(archetype, aspect string) bool {
	return slices.Contains(n.afford[archetype], aspect)
}

// compile validates a declaration and builds its tables. Declarations are
// code, so errors here are programming errors caught by the tests.
func compile(decl *Node) (*node, error) {
	p, err := ParseNode(decl.Path)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", decl.Path, err)
	}
	n := &node{decl: decl, path: p, aspects: make(map[string]*Aspect, len(decl.Aspects)+2), afford: map[string][]string{}}
	for _, a := range decl.Aspects {
		if err := checkAspect(a); err != nil {
			return nil, fmt.Errorf("node %s: %w", decl.Path, err)
		}
		if _, dup := n.aspects[a.Name]; dup {
			return nil, fmt.Errorf("node %s: aspect %s declared twice", decl.Path, a.Name)
		}
		n.aspects[a.Name] = a
	}
	if n.aspects[AspectManifest] == nil {
		return nil, fmt.Errorf("node %s: no manifest aspect", decl.Path)
	}
	for _, b := range []string{AspectWitness, AspectAffordances} {
		if n.aspects[b] == nil {
			n.aspects[b] = genericBase(b)
		}
	}
	for a := range decl.ByArchetype {
		if !IsArchetype(a) {
			return nil, fmt.Errorf("node %s: unknown archetype %s", decl.Path, a)
		}
	}
	afforded := map[string]bool{}
	for _, a := range Archetypes() {
		extra, ok := decl.ByArchetype[a]
		if !ok {
			extra = decl.Default
		}
		names := append(append(baseAspects[:len(baseAspects):len(baseAspects)], decl.Common...), extra...)
		for i, name := range names {
			if _, ok := n.aspects[name]; !ok && !isBase(name) {
				return nil, fmt.Errorf("node %s: archetype %s is afforded undeclared aspect %s", decl.Path, a, name)
			}
			if slices.Contains(names[:i], name) {
				return nil, fmt.Errorf("node %s: archetype %s is afforded %s twice", decl.Path, a, name)
			}
			afforded[name] = true
		}
		n.afford[a] = names
	}
	for name := range n.aspects {
		if !afforded[name] {
			return nil, fmt.Errorf("node %s: aspect %s is afforded to no archetype", decl.Path, name)
		}
	}
	return n, nil
}

func checkAspect(a *Aspect) error {
	if a == nil || a.Run == nil {
		return fmt.Errorf("aspect %v has no Run", a)
	}
	if p, err := Parse("world." + a.Name); err != nil || p.Len() != 2 {
		return fmt.Errorf("aspect name %q is not a valid segment", a.Name)
	}
	if a.Mutates && a.Cacheable {
		return fmt.Errorf("aspect %s mutates and cannot be cacheable", a.Name)
	}
	return checkKwargSpecs(a.Name, a.Kwargs)
}

func checkKwargSpecs(where string, specs []Kwarg) error {
	seen := map[string]bool{}
	for _, k := range specs {
		if k.Name == "" || seen[k.Name] {
			return fmt.Errorf("aspect %s: kwarg %q is empty or repeated", where, k.Name)
		}
		seen[k.Name] = true
		if k.Type < TypeString || k.Type > TypeList {
			return fmt.Errorf("aspect %s: kwarg %s has no type", where, k.Name)
		}
		if len(k.Fields) > 0 {
			if k.Type != TypeObject {
				return fmt.Errorf("aspect %s: kwarg %s has fields but is not an object", where, k.Name)
			}
			if err := checkKwargSpecs(where, k.Fields); err != nil {
				return err
			}
		}
	}
	return nil
}
