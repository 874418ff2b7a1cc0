package agentese

import (
	"context"
	"fmt"
)

// void.serendipity: a deterministic nudge sideways. The same topic always
// gets the same suggestion (so it is cacheable and testable), different
// topics scatter across the registry.
func init() { registerBuiltin(newVoidSerendipity) }

// obliqueStrategies are the prompts serendipity draws from. Immutable.
var obliqueStrategies = []string{
	"Honour thy error as a hidden intention.",
	"What would you do if you had twice the time? Half?",
	"Remove the most important part and see what remains.",
	"Work at a different speed.",
	"Ask the person who would disagree most.",
	"Turn it upside down: make the output the input.",
	"Only one element of each kind.",
	"What is the simplest thing that could possibly work?",
	"Look closely at the most embarrassing details and amplify them.",
	"Change the context, not the content.",
}

func newVoidSerendipity(Deps) *Node {
	return &Node{
		Path:    "void.serendipity",
		Handle:  "void.serendipity",
		Summary: "Deterministic happy accidents: a prompt and a path to wander to, chosen by your topic.",
		Common:  []string{"suggest"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "How serendipity works.", Cacheable: true, Run: serendipityManifest},
			{Name: "suggest", Doc: "A sideways prompt and a path to wander to, the same every time for the same topic.",
				Cacheable: true, Run: serendipitySuggest,
				Kwargs: []Kwarg{{Name: "topic", Type: TypeString, Required: true, MaxLen: 256, Doc: "what you are working on"}}},
		},
	}
}

func serendipityManifest(context.Context, *Call) (Outcome, error) {
	return Outcome{Value: obj{
		"summary":    str("Serendipity is structured luck: a prompt and a detour chosen by hashing your topic."),
		"strategies": integer(len(obliqueStrategies)),
		"try":        str("void.serendipity.suggest with {\"topic\": \"...\"}"),
	}.V()}, nil
}

func serendipitySuggest(_ context.Context, c *Call) (Outcome, error) {
	topic := c.Args.Str("topic")
	paths := c.reg.aspectPaths
	wander := pick(paths, topic+"|wander")
	return Outcome{Value: obj{
		"topic":     str(topic),
		"prompt":    str(pick(obliqueStrategies, topic)),
		"wander_to": str(wander),
		"why":       str(fmt.Sprintf("Nothing connects %s to %s, which is the point: look for the connection.", quote(topic), wander)),
	}.V()}, nil
}
