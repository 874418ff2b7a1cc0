package agentese

// world.purgatory: the waiting place. To a developer it is a dead-letter
// queue with a retry ladder; to an architect, Dante's mountain of terraces.
func init() { registerBuiltin(func(Deps) *Node { return worldNode(&purgatoryProfile) }) }

var purgatoryProfile = worldProfile{
	entity:     "purgatory",
	summary:    "Purgatory: where what failed waits, is purged, and climbs back.",
	definition: "A place of waiting between failure and acceptance, where each thing is retried under growing patience until it can pass.",
	relations: []relation{
		{"receives", "failures", "whatever could not be delivered the first time"},
		{"precedes", "paradise", "what passes the last terrace is accepted"},
		{"governed_by", "self.judgment", "judgment decides what may leave"},
		{"measured_by", "time.trace", "every attempt leaves a trace"},
	},
	language:     "yaml",
	dependencies: []string{"scheduler", "dead-letter queue", "retry policy", "backoff"},
	structure: []namedNote{
		{"antechamber/", "messages waiting for their first retry"},
		{"terraces/", "seven retry stages with growing backoff"},
		{"paradise/", "successfully reprocessed messages"},
	},
	tests:       21,
	coverage:    0.64,
	knownIssues: []string{"terraces/7: backoff exceeds the message's time to live"},
	style:       "terraced mountain",
	floors:      3,
	unit:        "souls",
	parts: []part{
		{"antechamber", 40, 0}, {"terrace of pride", 12, 1}, {"terrace of envy", 9, 1}, {"terrace of wrath", 11, 1},
		{"terrace of sloth", 15, 1}, {"terrace of avarice", 8, 1}, {"terrace of gluttony", 6, 1},
		{"terrace of lust", 5, 1}, {"earthly paradise", 3, 2},
	},
	materials: []string{"stone", "patience", "fire", "song"},
	images: []string{
		"a stair cut into a mountain of second chances",
		"a queue that sings while it waits",
		"a furnace that refines instead of consuming",
		"a shore where failures learn to try again",
	},
	value:    0,
	upkeep:   0,
	growth:   0,
	currency: "credits",
	capacity: 144,
	comforts: []string{"every attempt is counted", "backoff grows gently", "nothing waits forever", "the way up is always open"},
	phenomena: []string{
		"messages entering per hour", "retries per terrace", "time to paradise", "messages expiring on the last terrace",
	},
	hypotheses: []string{
		"Capping backoff at the time to live stops expiries on the last terrace.",
		"Most failures pass on the first terrace; the rest need a fix, not a retry.",
		"Jitter in the backoff flattens retry storms after an outage.",
	},
	owner:    "the operators",
	policies: []string{"nothing is dropped silently", "every retry is traced", "release only what judgment approves"},
}
