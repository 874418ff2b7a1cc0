package agentese

// concept.entropy: the measure of disorder and of surprise.
func init() { registerBuiltin(func(Deps) *Node { return conceptNode(&entropyProfile) }) }

var entropyProfile = conceptProfile{
	name:       "entropy",
	summary:    "Entropy: the count of ways things could be, and the surprise of learning which.",
	definition: "Entropy measures how many microscopic arrangements are compatible with what we know, or equivalently how surprised we expect to be by the next observation.",
	thesis:     "Entropy is the arrow of time: isolated systems drift toward their most probable states.",
	antithesis: "Entropy is a fact about our knowledge, not the world: a complete observer would see no disorder.",
	synthesis:  "Entropy is relational: it measures the world relative to a description, and the second law holds for every coarse description we can make.",
	critique:   "Calling entropy 'disorder' misleads: an ordered crystal can have more entropy than a disordered gas of fewer particles.",
	hypothesis: "Compressing a log with a general-purpose compressor estimates its entropy within a small constant per symbol.",
	model:      "H(X) = -Σ p(x) log₂ p(x) bits; for a uniform choice among N outcomes, H = log₂ N.",
	application: "Generate API keys from a cryptographic source with at least 128 bits of entropy, " +
		"and store only their hashes.",
	constraint: "No design can reverse entropy for free: every reset of state costs energy or information elsewhere.",
	image:      "Ink spreading through water, never gathering itself back into the drop.",
	palette:    []string{"ink blue", "ash", "heat-haze amber"},
	explanations: [3]string{
		"Entropy is a measure of how mixed up or unpredictable something is.",
		"Entropy counts the microstates consistent with a macrostate; in information theory it is the expected surprise of a message, in bits.",
		"Boltzmann's S = k log W and Shannon's H coincide up to units for a maximum-entropy ensemble; the second law follows from coarse-graining and typicality.",
	},
	question: "How many bits of entropy does a fair eight-sided die have?",
	answer:   "Three bits: log₂ 8 = 3.",
	relations: []relation{
		{"drawn_from", "void.entropy", "the pool K-gent spends on randomness"},
		{"opposes", "concept.composition", "composition builds structure entropy erodes"},
		{"measures", "surprise", "expected information of an observation"},
	},
}
