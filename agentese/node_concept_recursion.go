package agentese

// concept.recursion: defining a thing in terms of itself.
func init() { registerBuiltin(func(Deps) *Node { return conceptNode(&recursionProfile) }) }

var recursionProfile = conceptProfile{
	name:       "recursion",
	summary:    "Recursion: a definition that refers to itself, and terminates.",
	definition: "Recursion defines something in terms of a smaller instance of itself, with a base case where the reference stops.",
	thesis:     "Recursion shows that self-reference is productive: the whole can be defined by its parts' shape.",
	antithesis: "Unchecked self-reference breeds paradox: the liar, Russell's set, the infinite regress.",
	synthesis:  "Self-reference is safe when it is well-founded: every descent reaches a base case.",
	critique:   "Recursive explanations can be circular in disguise when the 'smaller instance' is not actually smaller.",
	hypothesis: "Programmers find a recursive solution faster than an iterative one when the data itself is recursive (trees, grammars).",
	model:      "f(n) = base if n = 0, else g(n, f(n-1)); it terminates when a measure decreases strictly at every call.",
	application: "Parse nested structures (JSON, AGENTESE kwargs) with an explicit depth limit so that " +
		"recursion on input can never exhaust the stack.",
	constraint: "Every recursion on untrusted input needs a bound: a depth limit or an explicit stack.",
	image:      "A hand drawing the hand that draws it, stopping at the wrist.",
	palette:    []string{"mirror silver", "spiral gold", "fractal green"},
	explanations: [3]string{
		"Recursion is when something is defined using a smaller version of itself, like Russian dolls.",
		"A recursive function calls itself on a smaller input and stops at a base case; the call stack remembers where to resume.",
		"Well-founded recursion terminates because the arguments decrease in a well-founded order; structural recursion follows the shape of an inductive type.",
	},
	question: "What does every terminating recursion need?",
	answer:   "A base case, and a measure that strictly decreases on every recursive call.",
	relations: []relation{
		{"generalises", "concept.composition", "a recursive structure is composition with itself"},
		{"bounded_by", "concept.entropy", "every descent must lose something to stop"},
		{"appears_in", "agentese grammar", "paths nest: context.holon.more"},
	},
}
