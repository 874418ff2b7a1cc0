package agentese

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// builtins are the constructors of the built-in nodes. Each node file
// appends its constructor from an init function (registerBuiltin), so adding
// a node is one file. It is written only during package initialisation,
// which completes before any other code runs, and only read afterwards; all
// run-time state lives in Registry instances.
var builtins []func(Deps) *Node

// registerBuiltin adds a built-in node constructor. Call it only from init.
func registerBuiltin(mk func(Deps) *Node) { builtins = append(builtins, mk) }

// BuiltinNodes builds every built-in node, sorted by path.
func BuiltinNodes(d Deps) []*Node {
	nodes := make([]*Node, 0, len(builtins))
	for _, mk := range builtins {
		nodes = append(nodes, mk(d))
	}
	slices.SortFunc(nodes, func(a, b *Node) int { return strings.Compare(a.Path, b.Path) })
	return nodes
}

// Registry resolves and invokes paths over a fixed set of nodes and owns the
// per-tenant state the nodes keep. It is safe for concurrent use.
type Registry struct {
	nodes       map[string]*node
	holons      map[string][]string // context -> sorted holon paths within it (without the context)
	nodePaths   []string            // sorted
	aspectPaths []string            // sorted, every declared aspect of every node
	// byContext are aspectPaths per context: when the context is right,
	// suggestions only need to search within it.
	byContext map[string][]string
	soul      SoulBackend

	now     func() time.Time
	started time.Time
	tenants *tenantStore
	cache   *resultCache
}

// Option configures a Registry.
type Option func(*options)

type options struct {
	now        func() time.Time
	maxTenants int
	cacheSize  int
	cacheTTL   time.Duration
	soul       SoulBackend
}

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithMaxTenants bounds how many tenants' state is kept (DefaultMaxTenants).
func WithMaxTenants(n int) Option { return func(o *options) { o.maxTenants = n } }

// WithCache sizes the result cache of cacheable aspects; size 0 or ttl 0
// disables it (results are then never reported as cached).
func WithCache(size int, ttl time.Duration) Option {
	return func(o *options) { o.cacheSize, o.cacheTTL = size, ttl }
}

// withSoul records the soul backend for nodes that introspect it.
func withSoul(s SoulBackend) Option { return func(o *options) { o.soul = s } }

// DefaultRegistry is a registry of every built-in node, with self.soul (and
// self.judgment) backed by soul, normally the Soul service
// (*soulsvc.Service). It panics only if a built-in declaration is invalid,
// which the package tests rule out.
func DefaultRegistry(soul SoulBackend, opts ...Option) *Registry {
	r, err := NewRegistry(BuiltinNodes(Deps{Soul: soul}), append([]Option{withSoul(soul)}, opts...)...)
	if err != nil {
		panic("agentese: invalid built-in node: " + err.Error())
	}
	return r
}

// NewRegistry validates the nodes and returns a registry of them.
func NewRegistry(nodes []*Node, opts ...Option) (*Registry, error) {
	o := options{now: time.Now, cacheSize: DefaultCacheSize, cacheTTL: DefaultCacheTTL}
	for _, opt := range opts {
		opt(&o)
	}
	r := &Registry{
		nodes:     make(map[string]*node, len(nodes)),
		holons:    map[string][]string{},
		byContext: map[string][]string{},
		soul:      o.soul,
		now:       o.now,
		tenants:   newTenantStore(o.maxTenants),
		cache:     newResultCache(o.cacheSize, o.cacheTTL),
	}
	r.started = r.now()
	for _, decl := range nodes {
		n, err := compile(decl)
		if err != nil {
			return nil, err
		}
		if _, dup := r.nodes[decl.Path]; dup {
			return nil, fmt.Errorf("node %s registered twice", decl.Path)
		}
		r.nodes[decl.Path] = n
		r.nodePaths = append(r.nodePaths, decl.Path)
		ctx := n.path.Context()
		r.holons[ctx] = append(r.holons[ctx], strings.TrimPrefix(decl.Path, ctx+"."))
		for name := range n.aspects {
			r.aspectPaths = append(r.aspectPaths, decl.Path+"."+name)
			r.byContext[ctx] = append(r.byContext[ctx], decl.Path+"."+name)
		}
	}
	slices.Sort(r.nodePaths)
	slices.Sort(r.aspectPaths)
	for _, h := range r.holons {
		slices.Sort(h)
	}
	for _, a := range r.byContext {
		slices.Sort(a)
	}
	return r, nil
}

// NodePaths lists the registered node paths, sorted.
func (r *Registry) NodePaths() []string { return slices.Clone(r.nodePaths) }

// lookup finds the node of a parsed node path. input is what the caller
// typed and candidates the paths to suggest from.
func (r *Registry) lookup(p Path, input string, candidates []string) (*node, error) {
	if n, ok := r.nodes[p.String()]; ok {
		return n, nil
	}
	ctx := p.Context()
	e := newError(KindNotFound, fmt.Sprintf("Path not found: context %s has no holon %s.", ctx, quote(strings.TrimPrefix(p.String(), ctx+"."))))
	e.Options, e.OptionsLabel = slices.Clone(r.holons[ctx]), "holons of "+ctx
	if len(e.Options) == 0 {
		e.Msg += " It has no holons yet."
	}
	e.Suggestion = suggest(input, candidates)
	return nil, e
}

// withSuggestion adds the closest valid path to a parse error.
func withSuggestion(err error, input string, candidates []string) error {
	var e *Error
	if errors.As(err, &e) && e.Suggestion == "" {
		e.Suggestion = suggest(input, candidates)
	}
	return err
}

// parseNode parses a node path and finds its node.
func (r *Registry) parseNode(input string) (*node, error) {
	p, err := ParseNode(input)
	if err != nil {
		return nil, withSuggestion(err, input, r.nodePaths)
	}
	return r.lookup(p, input, r.nodePaths)
}

// Resolution describes a node for the observer Resolve chose.
type Resolution struct {
	Path    string
	Handle  string
	Context string
	// Archetype the affordances are for: developer when the key has it,
	// else the key's first archetype.
	Archetype   string
	Affordances []string
}

// Resolve describes a node without invoking anything.
func (r *Registry) Resolve(ctx context.Context, path string) (Resolution, error) {
	id, err := identity(ctx)
	if err != nil {
		return Resolution{}, err
	}
	n, err := r.parseNode(path)
	if err != nil {
		return Resolution{}, err
	}
	a := defaultArchetype(id)
	if !IsArchetype(a) {
		a = DefaultArchetype // a key file may name archetypes AGENTESE does not know
	}
	handle := n.decl.Handle
	if handle == "" {
		handle = n.decl.Path
	}
	return Resolution{
		Path: n.decl.Path, Handle: handle, Context: n.path.Context(), Archetype: a,
		Affordances: slices.Clone(n.afford[a]),
	}, nil
}

// AffordanceList is what a node affords one archetype.
type AffordanceList struct {
	Path      string
	Archetype string
	Aspects   []string
}

// Affordances lists what a node affords an archetype (the caller's default
// when empty). Any known archetype may be asked about, not only the key's:
// the list describes the node; invoking still needs the key's archetype.
func (r *Registry) Affordances(ctx context.Context, path, archetype string) (AffordanceList, error) {
	id, err := identity(ctx)
	if err != nil {
		return AffordanceList{}, err
	}
	n, err := r.parseNode(path)
	if err != nil {
		return AffordanceList{}, err
	}
	a, err := knownArchetype(id, archetype)
	if err != nil {
		return AffordanceList{}, err
	}
	return AffordanceList{Path: n.decl.Path, Archetype: a, Aspects: slices.Clone(n.afford[a])}, nil
}

// Mutates reports whether the aspect path names an aspect that changes
// state (so invoking it needs the write scope). Anything unparseable or
// unknown reads: the invocation itself then fails with 400 or 404.
func (r *Registry) Mutates(path string) bool {
	p, err := ParseAspect(path)
	if err != nil {
		return false
	}
	n, ok := r.nodes[p.Node().String()]
	if !ok {
		return false
	}
	a := n.aspects[p.Aspect()]
	return a != nil && a.Mutates
}

// AspectInfo describes one aspect of a node.
type AspectInfo struct {
	Name      string
	Doc       string
	Mutates   bool
	Streams   bool
	Cacheable bool
	Kwargs    []Kwarg
}

// NodeInfo describes a node: everything the docs list.
type NodeInfo struct {
	Path, Handle, Summary string
	Aspects               []AspectInfo // base aspects first, then by name
	// Affordances of every known archetype.
	Affordances map[string][]string
}

// Describe returns the declaration of every node, sorted by path.
func (r *Registry) Describe() []NodeInfo {
	out := make([]NodeInfo, 0, len(r.nodePaths))
	for _, p := range r.nodePaths {
		out = append(out, r.describe(r.nodes[p]))
	}
	return out
}

func (r *Registry) describe(n *node) NodeInfo {
	info := NodeInfo{Path: n.decl.Path, Handle: n.decl.Handle, Summary: n.decl.Summary, Affordances: map[string][]string{}}
	if info.Handle == "" {
		info.Handle = n.decl.Path
	}
	for a, l := range n.afford {
		info.Affordances[a] = slices.Clone(l)
	}
	names := make([]string, 0, len(n.aspects)+len(baseAspects))
	for name := range n.aspects {
		if !isBase(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	names = append(baseAspects[:len(baseAspects):len(baseAspects)], names...)
	for _, name := range names {
		info.Aspects = append(info.Aspects, aspectInfo(n.aspects[name]))
	}
	return info
}

func aspectInfo(a *Aspect) AspectInfo {
	return AspectInfo{
		Name: a.Name, Doc: a.Doc, Mutates: a.Mutates, Streams: a.Streams(), Cacheable: a.Cacheable,
		Kwargs: slices.Clone(a.Kwargs),
	}
}
