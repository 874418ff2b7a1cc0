package agentese

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Request is one invocation.
type Request struct {
	// Path is an aspect path, e.g. "world.house.manifest".
	Path string
	// Archetype is the observer's archetype; the caller's default when empty.
	Archetype string
	// Kwargs are the aspect's keyword arguments (may be nil).
	Kwargs *structpb.Struct
}

// Result is an invocation's outcome.
type Result struct {
	// Path is the aspect path invoked; Aspect its last segment.
	Path, Aspect string
	Value        *structpb.Value
	TokensUsed   int
	Cached       bool
	// Streamed is true when the aspect streamed its output.
	Streamed bool
}

// Invoke performs an aspect for the caller in ctx (tenancy.IdentityFrom).
// Every check runs before the aspect: the kwargs envelope, the path grammar,
// the observer archetype (known, and one the key was given), the node, the
// affordance and the kwargs. Failures are *Error values, or status errors
// passed through from a backend (the Soul service's budget policy).
func (r *Registry) Invoke(ctx context.Context, req Request) (Result, error) {
	c, asp, err := r.prepare(ctx, req)
	if err != nil {
		return Result{}, err
	}
	res, err := r.run(ctx, c, asp, req.Kwargs)
	r.record(c, asp, res, err)
	return res, err
}

// InvokeStream performs an aspect as a stream. A streaming aspect opens the
// sink once its own checks pass (for self.soul that is after the Soul
// service's budget check), then sends chunks; any other aspect runs to
// completion first, and the sink is opened only when it succeeded. An error
// returned before the sink was opened is an ordinary failure; one returned
// after it must end the open stream (the caller's sink knows which).
func (r *Registry) InvokeStream(ctx context.Context, req Request, sink Sink) (Result, error) {
	c, asp, err := r.prepare(ctx, req)
	if err != nil {
		return Result{}, err
	}
	var res Result
	if asp.Stream == nil {
		res, err = r.run(ctx, c, asp, req.Kwargs)
		if err == nil {
			err = sink.Open()
		}
	} else {
		res, err = r.stream(ctx, c, asp, sink)
	}
	r.record(c, asp, res, err)
	return res, err
}

// prepare runs every check and returns the call to perform.
func (r *Registry) prepare(ctx context.Context, req Request) (*Call, *Aspect, error) {
	if err := checkEnvelope(req.Kwargs); err != nil {
		return nil, nil, err
	}
	id, err := identity(ctx)
	if err != nil {
		return nil, nil, err
	}
	p, err := ParseAspect(req.Path)
	if err != nil {
		return nil, nil, withSuggestion(err, req.Path, r.aspectPaths)
	}
	c := &Call{Path: p, Identity: id, reg: r}
	fail := func(err error) (*Call, *Aspect, error) {
		r.record(c, nil, Result{}, err)
		return nil, nil, err
	}
	if c.Archetype, err = bindObserver(id, req.Archetype); err != nil {
		return fail(err)
	}
	if c.node, err = r.lookup(p.Node(), req.Path, r.byContext[p.Context()]); err != nil {
		return fail(err)
	}
	asp := c.node.aspects[p.Aspect()]
	if asp == nil || !c.node.affords(c.Archetype, asp.Name) {
		return fail(r.notAfforded(c, p.Aspect()))
	}
	if c.Args, err = validateKwargs(asp.Kwargs, req.Kwargs, p.String()); err != nil {
		return fail(err)
	}
	return c, asp, nil
}

// notAfforded explains a 403: which archetypes do have the aspect (if any
// does), what this one is afforded, and the closest afforded aspect.
func (r *Registry) notAfforded(c *Call, aspect string) error {
	n := c.node
	afforded := n.afford[c.Archetype]
	var e *Error
	if n.aspects[aspect] == nil {
		e = newError(KindNotAfforded, fmt.Sprintf("Affordance not available: %s has no aspect %s.", n.decl.Path, quote(aspect)))
	} else {
		var others []string
		for _, a := range Archetypes() {
			if n.affords(a, aspect) {
				others = append(others, a)
			}
		}
		e = newError(KindNotAfforded, fmt.Sprintf("Affordance not available: %s.%s is not afforded to the %s archetype (it is afforded to %s).",
			n.decl.Path, aspect, c.Archetype, joinOr(others)))
	}
	e.Options, e.OptionsLabel = slices.Clone(afforded), "affordances for "+c.Archetype
	paths := make([]string, len(afforded))
	for i, a := range afforded {
		paths[i] = n.decl.Path + "." + a
	}
	slices.Sort(paths)
	e.Suggestion = suggest(c.Path.String(), paths)
	return e
}

func joinOr(ss []string) string {
	switch len(ss) {
	case 0:
		return "no archetype"
	case 1:
		return ss[0]
	}
	out := ""
	for i, s := range ss {
		switch {
		case i == 0:
		case i == len(ss)-1:
			out += " and "
		default:
			out += ", "
		}
		out += s
	}
	return out
}

// run performs a non-streamed invocation, through the cache for cacheable
// aspects.
func (r *Registry) run(ctx context.Context, c *Call, asp *Aspect, kw *structpb.Struct) (Result, error) {
	res := Result{Path: c.Path.String(), Aspect: asp.Name}
	key, cacheable := "", asp.Cacheable && r.cache != nil
	if cacheable {
		key, cacheable = cacheKey(c.Identity.TenantID, c.Archetype, res.Path, kw)
	}
	if cacheable {
		if v, ok := r.cache.get(key, r.now()); ok {
			res.Value, res.Cached = v, true
			return res, nil
		}
	}
	out, err := asp.Run(ctx, c)
	if err != nil {
		return res, err
	}
	res.Value, res.TokensUsed = valueOrNull(out.Value), out.Tokens
	if cacheable {
		r.cache.put(key, res.Value, r.now())
	}
	return res, nil
}

// stream performs a streaming aspect, making sure the sink is opened exactly
// once and before any chunk.
func (r *Registry) stream(ctx context.Context, c *Call, asp *Aspect, sink Sink) (Result, error) {
	res := Result{Path: c.Path.String(), Aspect: asp.Name, Streamed: true}
	g := &guardedSink{sink: sink}
	out, err := asp.Stream(ctx, c, g)
	if err == nil && !g.opened {
		err = g.Open()
	}
	if err != nil {
		return res, err
	}
	res.Value, res.TokensUsed = valueOrNull(out.Value), out.Tokens
	return res, nil
}

type guardedSink struct {
	sink   Sink
	opened bool
}

func (g *guardedSink) Open() error {
	if g.opened {
		return nil
	}
	g.opened = true
	return g.sink.Open()
}

func (g *guardedSink) Chunk(text string, index int) error {
	if err := g.Open(); err != nil {
		return err
	}
	return g.sink.Chunk(text, index)
}

func valueOrNull(v *structpb.Value) *structpb.Value {
	if v == nil {
		return null()
	}
	return v
}

// record adds the invocation to the tenant's trace (asp nil: it failed
// before an aspect was chosen).
func (r *Registry) record(c *Call, asp *Aspect, res Result, err error) {
	e := traceEntry{
		At: r.now(), Path: c.Path.String(), Archetype: c.Archetype, Outcome: outcomeOf(err),
		Tokens: res.TokensUsed, Cached: res.Cached, Streamed: res.Streamed,
	}
	node := ""
	if c.node != nil && asp != nil {
		node = c.node.decl.Path
		e.Mutated = asp.Mutates && err == nil
	}
	slotOf(r.tenants.get(c.Identity.TenantID), traceSlot, newTraceLog).add(e, node)
}

// outcomeOf names an invocation's outcome for the trace.
func outcomeOf(err error) string {
	if err == nil {
		return "ok"
	}
	if k := KindOf(err); k != 0 {
		return k.String()
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return "error"
}
