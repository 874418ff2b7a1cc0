package agentese

// concept.justice: giving each their due.
func init() { registerBuiltin(func(Deps) *Node { return conceptNode(&justiceProfile) }) }

var justiceProfile = conceptProfile{
	name:       "justice",
	summary:    "Justice: giving each their due, and deciding what is due.",
	definition: "Justice is the arrangement in which each receives what they are owed, decided by rules that those bound by them could accept.",
	thesis:     "Justice is fairness: rules everyone could accept without knowing their own place.",
	antithesis: "Justice is desert: people should get what their actions have earned, whatever the rules say.",
	synthesis:  "Fair rules set the floor; desert operates above it, and neither may erase the other.",
	critique:   "Any procedure can be fair on paper and unjust in effect when those applying it start unequal.",
	hypothesis: "People accept an unfavourable outcome more readily when they judge the procedure that produced it fair.",
	model:      "A game among n agents with allocation rule f; f is just if no agent would veto it from behind a veil that hides their index.",
	application: "Design a rate limiter that shares capacity fairly: weighted fair queuing gives each tenant its due share, " +
		"and unused share flows to those who need it.",
	constraint: "A just system must give reasons: every refusal names the rule that refused.",
	image:      "A pair of scales held by someone who cannot see which side is theirs.",
	palette:    []string{"slate grey", "courtroom oak", "balanced white"},
	explanations: [3]string{
		"Justice means treating people fairly and giving each what they deserve.",
		"Justice balances fair procedures (everyone follows the same rules) with fair outcomes (people get what they are owed).",
		"Theories divide on whether justice is procedural (Rawls, the original position), entitlement-based (Nozick) or about capabilities (Sen, Nussbaum).",
	},
	question: "Can a fair procedure produce an unjust outcome?",
	answer:   "Yes: when participants start from unequal positions, identical rules can preserve or deepen the inequality.",
	relations: []relation{
		{"requires", "concept.composition", "rules compose into institutions"},
		{"opposes", "arbitrariness", "a decision without a reason"},
		{"measured_by", "self.judgment", "verdicts that give their reasons"},
	},
}
