package agentese

// world.house: a home, seen as a codebase by developers, a structure by
// architects, a place to live by inhabitants.
func init() { registerBuiltin(func(Deps) *Node { return worldNode(&houseProfile) }) }

var houseProfile = worldProfile{
	entity:     "house",
	summary:    "A house: a structure people live in, and a project people build.",
	definition: "A building for people to live in: shelter first, then rooms arranged around how a household moves through a day.",
	relations: []relation{
		{"contains", "rooms", "kitchen, living room, bedrooms, bathroom, study"},
		{"stands_on", "land", "the plot and its foundation"},
		{"part_of", "street", "a house is read against its neighbours"},
		{"documented_by", "world.document", "plans, deeds and manuals"},
		{"becomes", "home", "once it is inhabited"},
	},
	language:     "go",
	dependencies: []string{"foundation", "framing", "plumbing", "wiring", "roofing"},
	structure: []namedNote{
		{"foundation/", "load-bearing base and damp course"},
		{"frame/", "walls, floors and stairs"},
		{"systems/", "plumbing, wiring, heating"},
		{"rooms/", "the living spaces"},
	},
	tests:       42,
	coverage:    0.71,
	knownIssues: []string{"systems/heating: no test covers the upstairs radiators"},
	style:       "modern vernacular",
	floors:      2,
	unit:        "m²",
	parts: []part{
		{"kitchen", 18, 0}, {"living room", 32, 0}, {"study", 9, 0},
		{"bedroom", 14, 1}, {"second bedroom", 12, 1}, {"bathroom", 7, 1},
	},
	materials: []string{"timber", "brick", "glass", "slate"},
	images: []string{
		"a lantern left on for whoever comes home late",
		"a shell the household grew around itself",
		"four walls arguing gently with the weather",
		"a clock that keeps the family's hours",
		"a harbour with a kettle",
	},
	value:    350000,
	upkeep:   0.015,
	growth:   0.03,
	currency: "credits",
	capacity: 5,
	comforts: []string{"south light in the kitchen", "a quiet study", "warm floors", "a door that closes softly", "a window seat"},
	phenomena: []string{
		"heat loss through the roof", "humidity in the bathroom", "footfall between kitchen and living room",
		"daylight hours in the study",
	},
	hypotheses: []string{
		"Insulating the roof halves winter heat loss.",
		"Moving the table to the window doubles the time spent in the kitchen.",
		"A second bathroom removes the morning queue, not the evening one.",
		"Occupants use the rooms nearest the kitchen most.",
	},
	owner:    "the tenant's household",
	policies: []string{"structural changes need an architect's blueprint", "no demolition without confirm: true", "deploy only a current build"},
}
