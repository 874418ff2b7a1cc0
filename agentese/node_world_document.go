package agentese

// world.document: a written work, seen as sources to build and check by
// developers, a structure of sections by architects, a text to inhabit by
// its readers.
func init() { registerBuiltin(func(Deps) *Node { return worldNode(&documentProfile) }) }

var documentProfile = worldProfile{
	entity:     "document",
	summary:    "A document: a written work with a structure, sources and readers.",
	definition: "Writing fixed so that it outlives its moment: an argument arranged in sections, with the evidence it rests on.",
	relations: []relation{
		{"cites", "sources", "the evidence it rests on"},
		{"describes", "world.house", "plans, deeds and manuals"},
		{"read_by", "readers", "a document exists for its readers"},
		{"versioned_as", "time.past", "every revision is history"},
	},
	language:     "markdown",
	dependencies: []string{"outline", "sources", "style guide", "figures"},
	structure: []namedNote{
		{"abstract.md", "the claim in one paragraph"},
		{"sections/", "introduction, method, results, discussion"},
		{"figures/", "charts and diagrams"},
		{"references.bib", "every citation"},
	},
	tests:       12,
	coverage:    0.58,
	knownIssues: []string{"references.bib: two citations have no DOI"},
	style:       "inverted pyramid",
	floors:      2,
	unit:        "words",
	parts: []part{
		{"abstract", 150, 0}, {"introduction", 600, 0}, {"method", 1200, 1},
		{"results", 900, 1}, {"discussion", 800, 1}, {"references", 300, 1},
	},
	materials: []string{"prose", "figures", "tables", "citations"},
	images: []string{
		"a voice that keeps talking after the speaker has left",
		"a map folded along its arguments",
		"a letter to a reader not yet born",
		"a bridge of sentences over a gap in knowing",
	},
	value:    1200,
	upkeep:   0.05,
	growth:   -0.02,
	currency: "credits",
	capacity: 1000,
	comforts: []string{"short paragraphs", "a clear abstract", "figures that stand alone", "honest limitations"},
	phenomena: []string{
		"reading time per section", "drop-off after the method section", "citations received",
	},
	hypotheses: []string{
		"A one-sentence summary under each heading halves drop-off.",
		"Moving the method to an appendix doubles readers who reach the results.",
		"Figures with captions that state the finding are cited more.",
	},
	owner:    "the tenant's authors",
	policies: []string{"every claim cites a source", "no deletion of published revisions", "deploy (publish) only a current build"},
}
