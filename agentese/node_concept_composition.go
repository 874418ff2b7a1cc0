package agentese

// concept.composition: making wholes from parts.
func init() { registerBuiltin(func(Deps) *Node { return conceptNode(&compositionProfile) }) }

var compositionProfile = conceptProfile{
	name:       "composition",
	summary:    "Composition: building wholes from parts so that the parts' meanings determine the whole's.",
	definition: "Composition combines parts into a whole whose behaviour follows from the parts and the way they are joined.",
	thesis:     "The meaning of a whole is a function of the meanings of its parts and their arrangement.",
	antithesis: "Wholes have emergent properties no description of the parts predicts.",
	synthesis:  "Composition is exact where interfaces are explicit; emergence lives in the interactions the interfaces leave unstated.",
	critique:   "Perfect compositionality is bought with rigid interfaces, which make the whole brittle when the world changes.",
	hypothesis: "Systems whose modules communicate only through typed interfaces have fewer defects per change than those sharing state.",
	model:      "Morphisms f: A → B and g: B → C compose to g ∘ f: A → C, associatively, with identities: a category.",
	application: "Chain gRPC interceptors so each concern (auth, quota, metering) is one composable function; " +
		"the order is declared once.",
	constraint: "Parts compose only when one's output type is the next one's input type; every mismatch is a design decision.",
	image:      "Bricks that remember the shape of the arch they will become.",
	palette:    []string{"terracotta", "mortar white", "blueprint blue"},
	explanations: [3]string{
		"Composition is building something big out of smaller pieces that fit together.",
		"Composition means the whole's behaviour follows from its parts and how they connect, like functions chained so each output feeds the next input.",
		"Compositionality is functoriality: a semantics that maps syntax trees to meanings homomorphically; category theory makes the laws (associativity, identity) explicit.",
	},
	question: "What must be true for f and g to compose as g ∘ f?",
	answer:   "f's output type must be g's input type.",
	relations: []relation{
		{"enables", "concept.recursion", "a structure composed of itself"},
		{"grounds", "concept.justice", "institutions are composed rules"},
		{"resists", "concept.entropy", "structure is entropy held at bay"},
	},
}
