package agentese

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// The concept context: abstract ideas. A concept node is built by
// conceptNode from a conceptProfile; every aspect is a pure function of the
// profile and the kwargs, so all of them are cacheable.

type conceptProfile struct {
	name       string
	summary    string
	definition string
	// philosopher lens.
	thesis, antithesis, synthesis string
	critique                      string
	// scientist lens.
	hypothesis string
	model      string
	// engineer lens.
	application string
	constraint  string
	// artist lens.
	image   string
	palette []string
	// teacher lens: explanations for beginner, intermediate and expert.
	explanations [3]string
	question     string
	answer       string

	relations []relation
}

// Concept aspects per archetype. Archetypes without a list get relate.
// Immutable.
var (
	conceptCommon      = []string{"define"}
	conceptDefault     = []string{"relate"}
	conceptByArchetype = map[string][]string{
		"philosopher": {"dialectic", "critique"},
		"scientist":   {"hypothesize", "model"},
		"engineer":    {"apply", "constrain"},
		"artist":      {"depict", "blend"},
		"teacher":     {"explain", "quiz"},
	}
)

var explainLevels = []string{"beginner", "intermediate", "expert"}

type concept struct{ p *conceptProfile }

func conceptNode(p *conceptProfile) *Node {
	c := concept{p}
	pure := func(name, doc string, run RunFunc, kw ...Kwarg) *Aspect {
		return &Aspect{Name: name, Doc: doc, Run: run, Kwargs: kw, Cacheable: true}
	}
	return &Node{
		Path:        "concept." + p.name,
		Handle:      "concept." + p.name,
		Summary:     p.summary,
		Common:      conceptCommon,
		ByArchetype: conceptByArchetype,
		Default:     conceptDefault,
		Aspects: []*Aspect{
			pure("manifest", "The concept through the observer's lens.", c.manifest),
			pure("define", "The definition.", c.define),
			pure("relate", "Related concepts and how.", c.relate),
			pure("dialectic", "Thesis, antithesis, synthesis.", c.dialectic),
			pure("critique", "The strongest objection.", c.critique),
			pure("hypothesize", "A testable hypothesis.", c.hypothesize),
			pure("model", "A formal model.", c.model),
			pure("apply", "A concrete application.", c.apply),
			pure("constrain", "The constraint it imposes on designs.", c.constrain),
			pure("depict", "An image of it.", c.depict),
			pure("blend", "A blend with another concept.", c.blend,
				Kwarg{Name: "with", Type: TypeString, Required: true, MaxLen: 64, Doc: "another concept, e.g. entropy"}),
			pure("explain", "An explanation at a level.", c.explain,
				Kwarg{Name: "level", Type: TypeString, Enum: explainLevels, Doc: "default beginner"}),
			pure("quiz", "A question to check understanding, with its answer.", c.quiz),
		},
	}
}

func (c concept) out(kv obj) (Outcome, error) {
	kv["concept"] = str(c.p.name)
	return Outcome{Value: kv.V()}, nil
}

func (c concept) manifest(_ context.Context, call *Call) (Outcome, error) {
	view := c.p.definition
	switch call.Archetype {
	case "philosopher":
		view = c.p.thesis
	case "scientist":
		view = c.p.hypothesis
	case "engineer":
		view = c.p.application
	case "artist":
		view = c.p.image
	case "teacher":
		view = c.p.explanations[0]
	}
	return c.out(obj{
		"type": str(call.Archetype), "summary": str(c.p.summary), "lens": str(archetypeLens(call.Archetype)),
		"view": str(view),
	})
}

func (c concept) define(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"summary": str(c.p.summary), "definition": str(c.p.definition)})
}

func (c concept) relate(context.Context, *Call) (Outcome, error) {
	vs := make([]*structpb.Value, len(c.p.relations))
	for i, r := range c.p.relations {
		vs[i] = obj{"kind": str(r.kind), "target": str(r.target), "note": str(r.note)}.V()
	}
	return c.out(obj{"relations": array(vs...)})
}

func (c concept) dialectic(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"thesis": str(c.p.thesis), "antithesis": str(c.p.antithesis), "synthesis": str(c.p.synthesis)})
}

func (c concept) critique(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"critique": str(c.p.critique)})
}

func (c concept) hypothesize(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"hypothesis": str(c.p.hypothesis), "falsifiable": boolean(true)})
}

func (c concept) model(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"model": str(c.p.model)})
}

func (c concept) apply(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"application": str(c.p.application)})
}

func (c concept) constrain(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"constraint": str(c.p.constraint)})
}

func (c concept) depict(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"image": str(c.p.image), "palette": strs(c.p.palette)})
}

// blend combines this concept with another registered one, reading the
// other's definition through its own define aspect.
func (c concept) blend(ctx context.Context, call *Call) (Outcome, error) {
	with := strings.ToLower(strings.TrimSpace(call.Args.Str("with")))
	other, ok := call.reg.nodes["concept."+with]
	if !ok || with == c.p.name {
		e := newError(KindArgument, fmt.Sprintf("kwarg \"with\" of %s must name another concept, not %s.", call.Path.String(), quote(with)))
		for _, h := range call.reg.holons[ContextConcept] {
			if h != c.p.name {
				e.Options = append(e.Options, h)
			}
		}
		e.OptionsLabel = "concepts"
		return Outcome{}, e
	}
	od, err := other.aspects["define"].Run(ctx, call)
	if err != nil {
		return Outcome{}, err
	}
	otherDef := od.Value.GetStructValue().GetFields()["definition"].GetStringValue()
	color := pick(c.p.palette, with)
	return c.out(obj{
		"with":  str(with),
		"blend": str(fmt.Sprintf("%s meets %s: %s Where they overlap, %s", c.p.name, with, c.p.definition, lowerFirst(otherDef))),
		"image": str(fmt.Sprintf("%s, painted in %s", c.p.image, color)),
	})
}

func (c concept) explain(_ context.Context, call *Call) (Outcome, error) {
	level := call.Args.Str("level")
	if level == "" {
		level = "beginner"
	}
	i := 0
	for j, l := range explainLevels {
		if l == level {
			i = j
		}
	}
	return c.out(obj{"level": str(level), "explanation": str(c.p.explanations[i])})
}

func (c concept) quiz(context.Context, *Call) (Outcome, error) {
	return c.out(obj{"question": str(c.p.question), "answer": str(c.p.answer)})
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}
