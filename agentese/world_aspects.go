package agentese

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// The world aspects, grouped by the lens that uses them: common (define,
// relate, transform), developer, architect, poet, economist, inhabitant,
// scientist and admin. Each locks the tenant's worldState for as long as it
// reads or changes it.

func (w world) manifest(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	o := obj{"type": str(c.Archetype), "entity": str(w.p.entity)}
	switch c.Archetype {
	case "developer":
		o["language"] = str(w.p.language)
		o["dependencies"] = strs(w.p.dependencies)
		o["structure"] = notesObject(w.p.structure).V()
		o["build_status"] = str(w.buildStatus(st))
		o["test_coverage"] = num(w.coverage(st))
		o["issues"] = strs(w.issues(st))
		o["revision"] = integer(st.revision)
	case "architect":
		o["style"] = str(w.p.style)
		o["floors"] = integer(w.p.floors)
		o["materials"] = strs(w.p.materials)
		o["parts"] = partsValue(w.p.parts, w.p.unit)
		o["total_size"] = num(w.totalSize())
		o["unit"] = str(w.p.unit)
		o["demolished"] = boolean(st.demolished)
		o["renovations"] = strs(st.renovations)
	case "poet":
		o["images"] = strs(w.p.images)
		o["line"] = str(fmt.Sprintf("The %s: %s.", w.p.entity, pick(w.p.images, w.p.entity)))
	case "economist":
		o["value"] = num(w.value(st))
		o["currency"] = str(w.p.currency)
		o["upkeep_per_year"] = num(round(w.value(st)*w.p.upkeep, 2))
		o["growth_rate"] = num(w.p.growth)
		o["invested"] = num(round(st.invested, 2))
	case "inhabitant":
		o["occupants"] = integer(st.occupants)
		o["capacity"] = integer(w.p.capacity)
		o["comforts"] = strs(w.p.comforts)
		o["furnishings"] = strs(st.furnishings)
	case "scientist":
		o["phenomena"] = strs(w.p.phenomena)
		o["revision"] = integer(st.revision)
		o["open_hypotheses"] = integer(len(w.p.hypotheses))
	case "admin":
		o["owner"] = str(w.p.owner)
		o["policies"] = strs(w.p.policies)
		o["config"] = stringMap(st.config).V()
		o["revision"] = integer(st.revision)
		o["changes"] = integer(len(st.events))
	default:
		o["summary"] = str(w.p.summary)
		o["definition"] = str(w.p.definition)
		o["lens"] = str(archetypeLens(c.Archetype))
	}
	return Outcome{Value: o.V()}, nil
}

func (w world) buildStatus(st *worldState) string {
	switch {
	case st.demolished:
		return "demolished"
	case st.builtRev < 0:
		return "unknown"
	case st.builtRev == st.revision:
		return "passing"
	}
	return "stale"
}

// coverage improves with refactoring, with diminishing returns.
func (w world) coverage(st *worldState) float64 {
	return round(math.Min(0.97, w.p.coverage+0.03*float64(st.refactors)), 2)
}

func (w world) issues(st *worldState) []string {
	out := slices.Clone(w.p.knownIssues)
	switch w.buildStatus(st) {
	case "unknown":
		out = append(out, "never built: invoke "+w.path()+".build")
	case "stale":
		out = append(out, fmt.Sprintf("build is stale: built at revision %d, now at %d", st.builtRev, st.revision))
	case "demolished":
		out = append(out, "demolished: nothing stands to run")
	}
	for _, env := range []string{"staging", "production"} {
		if rev, ok := st.deployed[env]; ok && rev != st.revision {
			out = append(out, fmt.Sprintf("%s runs revision %d, behind revision %d", env, rev, st.revision))
		}
	}
	if out == nil {
		out = []string{}
	}
	return out
}

func (w world) totalSize() float64 {
	t := 0.0
	for _, p := range w.p.parts {
		t += p.size
	}
	return t
}

func (w world) value(st *worldState) float64 {
	v := w.p.value + st.invested
	if st.demolished {
		v *= 0.1 // the land, or the salvage
	}
	return round(v, 2)
}

func (w world) define(context.Context, *Call) (Outcome, error) {
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "context": str(ContextWorld),
		"summary": str(w.p.summary), "definition": str(w.p.definition),
	}.V()}, nil
}

func (w world) relate(_ context.Context, c *Call) (Outcome, error) {
	to := strings.ToLower(strings.TrimSpace(c.Args.Str("to")))
	var vs []*structpb.Value
	for _, r := range w.p.relations {
		if to == "" || strings.Contains(r.target, to) {
			vs = append(vs, obj{"kind": str(r.kind), "target": str(r.target), "note": str(r.note)}.V())
		}
	}
	return Outcome{Value: obj{"entity": str(w.p.entity), "relations": array(vs...)}.V()}, nil
}

func (w world) transform(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	into := c.Args.Str("into")
	st.revision++
	st.transforms = pushBounded(st.transforms, into, worldMaxHistory)
	return w.ack(c, st, fmt.Sprintf("The %s was transformed into %s (revision %d).", w.p.entity, quote(into), st.revision)), nil
}

func (w world) build(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	note := fmt.Sprintf("Built %s@%d from %d dependencies (%s).", w.p.entity, st.revision, len(w.p.dependencies), strings.Join(w.p.dependencies, ", "))
	if st.demolished {
		st.demolished = false
		st.revision++
		note = fmt.Sprintf("Rebuilt the demolished %s from its blueprint as revision %d.", w.p.entity, st.revision)
	}
	st.builtRev = st.revision
	out := w.ack(c, st, note)
	out.Value.GetStructValue().Fields["build_status"] = str(w.buildStatus(st))
	out.Value.GetStructValue().Fields["artifact"] = str(fmt.Sprintf("%s@%d", w.p.entity, st.revision))
	return out, nil
}

func (w world) deploy(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	env := c.Args.Str("environment")
	if env == "" {
		env = "staging"
	}
	if status := w.buildStatus(st); status != "passing" {
		return Outcome{}, newError(KindPrecondition, fmt.Sprintf(
			"Cannot deploy %s: its build is %s. Invoke %s.build first.", w.path(), status, w.path()))
	}
	st.deployed[env] = st.revision
	out := w.ack(c, st, fmt.Sprintf("Deployed %s@%d to %s.", w.p.entity, st.revision, env))
	out.Value.GetStructValue().Fields["environment"] = str(env)
	return out, nil
}

func (w world) debug(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	issues := w.issues(st)
	st.mu.Unlock()
	o := obj{"entity": str(w.p.entity), "issues": strs(issues), "healthy": boolean(len(issues) == 0)}
	if s := c.Args.Str("symptom"); s != "" {
		suspect := w.p.structure[hashIndex(s, len(w.p.structure))]
		o["symptom"] = str(s)
		o["suspect"] = str(suspect.name)
		o["hypothesis"] = str(fmt.Sprintf("Start in %s (%s): the symptom touches it first.", suspect.name, suspect.note))
	}
	return Outcome{Value: o.V()}, nil
}

func (w world) test(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	suite := c.Args.Str("suite")
	if suite == "" {
		suite = "all"
	}
	unit, integ := w.p.tests*2/3, w.p.tests-w.p.tests*2/3
	run := map[string]int{"unit": unit, "integration": integ, "all": w.p.tests}[suite]
	failed := 0
	var failures []string
	if status := w.buildStatus(st); status != "passing" && suite != "unit" {
		failed = min(integ, 1+st.revision-max(st.builtRev, 0))
		failures = append(failures, fmt.Sprintf("integration suite needs a current build (build is %s)", status))
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "suite": str(suite), "revision": integer(st.revision),
		"tests": integer(run), "passed": integer(run - failed), "failed": integer(failed),
		"coverage": num(w.coverage(st)), "failures": strs(failures),
	}.V()}, nil
}

func (w world) refactor(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	target := c.Args.Str("target")
	if target == "" {
		target = "the whole " + w.p.entity
	}
	st.refactors++
	st.revision++
	return w.ack(c, st, fmt.Sprintf("Refactored %s (revision %d); coverage is now %.2f and the build is stale.",
		quote(target), st.revision, w.coverage(st))), nil
}

func (w world) renovate(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := w.refuseIfDemolished(c, st); err != nil {
		return Outcome{}, err
	}
	target := c.Args.Str("part")
	if target == "" {
		target = w.p.parts[0].name
	}
	style := c.Args.Str("style")
	if style == "" {
		style = w.p.style
	}
	st.revision++
	entry := fmt.Sprintf("%s in %s style", target, style)
	st.renovations = pushBounded(st.renovations, entry, worldMaxHistory)
	return w.ack(c, st, fmt.Sprintf("Renovated %s (revision %d).", quote(entry), st.revision)), nil
}

func (w world) measure(context.Context, *Call) (Outcome, error) {
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "unit": str(w.p.unit), "parts": partsValue(w.p.parts, w.p.unit),
		"total_size": num(w.totalSize()), "floors": integer(w.p.floors),
	}.V()}, nil
}

func (w world) blueprint(context.Context, *Call) (Outcome, error) {
	floors := make([]*structpb.Value, w.p.floors)
	for f := range w.p.floors {
		var names []string
		for _, p := range w.p.parts {
			if p.floor == f {
				names = append(names, p.name)
			}
		}
		floors[f] = obj{"floor": integer(f), "parts": strs(names)}.V()
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "style": str(w.p.style), "floors": array(floors...),
		"materials": strs(w.p.materials), "unit": str(w.p.unit), "total_size": num(w.totalSize()),
	}.V()}, nil
}

func (w world) demolish(_ context.Context, c *Call) (Outcome, error) {
	if !c.Args.Bool("confirm", false) {
		return Outcome{}, newError(KindArgument, fmt.Sprintf("%s.demolish needs confirm: true.", w.path()))
	}
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := w.refuseIfDemolished(c, st); err != nil {
		return Outcome{}, err
	}
	st.demolished = true
	st.revision++
	st.occupants = 0
	return w.ack(c, st, fmt.Sprintf("Demolished the %s (revision %d); occupants moved out.", w.p.entity, st.revision)), nil
}

func (w world) design(_ context.Context, c *Call) (Outcome, error) {
	brief := c.Args.Str("brief")
	if brief == "" {
		brief = "make it better to use"
	}
	focus := w.p.parts[hashIndex(brief, len(w.p.parts))]
	material := pick(w.p.materials, brief+"|material")
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "brief": str(brief), "focus": str(focus.name),
		"proposal": str(fmt.Sprintf("Rework the %s (%g %s) in %s, keeping the %s style.", focus.name, focus.size, w.p.unit, material, w.p.style)),
		"material": str(material),
	}.V()}, nil
}

func (w world) describe(context.Context, *Call) (Outcome, error) {
	lines := make([]string, 0, 3)
	for i := range min(3, len(w.p.images)) {
		lines = append(lines, w.p.images[(hashIndex(w.p.entity, len(w.p.images))+i)%len(w.p.images)])
	}
	return Outcome{Value: obj{"entity": str(w.p.entity), "verse": strs(lines)}.V()}, nil
}

func (w world) metaphor(_ context.Context, c *Call) (Outcome, error) {
	forWhat := c.Args.Str("for")
	img := pick(w.p.images, w.p.entity+"|"+forWhat)
	m := fmt.Sprintf("The %s is %s.", w.p.entity, img)
	if forWhat != "" {
		m = fmt.Sprintf("For %s, the %s is %s.", forWhat, w.p.entity, img)
	}
	return Outcome{Value: obj{"entity": str(w.p.entity), "metaphor": str(m)}.V()}, nil
}

func (w world) compose(_ context.Context, c *Call) (Outcome, error) {
	form := c.Args.Str("form")
	if form == "" {
		form = "haiku"
	}
	a, b := pick(w.p.images, w.p.entity+"|a"), pick(w.p.images, w.p.entity+"|b")
	var lines []string
	switch form {
	case "haiku":
		lines = []string{"the " + w.p.entity + " at dusk", a, "and then " + pick(w.p.comforts, w.p.entity)}
	case "couplet":
		lines = []string{"I built a " + w.p.entity + ": " + a + ",", "and it built me: " + b + "."}
	default:
		lines = []string{"What is a " + w.p.entity + "?", a + ".", b + ".", w.p.definition}
	}
	return Outcome{Value: obj{"entity": str(w.p.entity), "form": str(form), "lines": strs(lines)}.V()}, nil
}

func (w world) appraise(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	v := w.value(st)
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "value": num(v), "currency": str(w.p.currency),
		"upkeep_per_year": num(round(v*w.p.upkeep, 2)), "net_growth_rate": num(round(w.p.growth-w.p.upkeep, 4)),
		"invested": num(round(st.invested, 2)), "demolished": boolean(st.demolished),
	}.V()}, nil
}

func (w world) forecast(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	v := w.value(st)
	st.mu.Unlock()
	years := c.Args.Int("years", 5)
	vs := make([]*structpb.Value, years)
	for y := 1; y <= years; y++ {
		v = v * (1 + w.p.growth - w.p.upkeep)
		vs[y-1] = obj{"year": integer(y), "value": num(round(v, 2))}.V()
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "currency": str(w.p.currency), "net_growth_rate": num(round(w.p.growth-w.p.upkeep, 4)),
		"projection": array(vs...),
	}.V()}, nil
}

func (w world) invest(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	amount := c.Args.Num("amount", 0)
	st.invested = math.Min(st.invested+amount, 1e12)
	return w.ack(c, st, fmt.Sprintf("Invested %.2f %s; the %s is now valued at %.2f.", amount, w.p.currency, w.p.entity, w.value(st))), nil
}

func (w world) inhabit(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := w.refuseIfDemolished(c, st); err != nil {
		return Outcome{}, err
	}
	st.occupants = c.Args.Int("occupants", 1)
	return w.ack(c, st, fmt.Sprintf("%d of %d places in the %s are now occupied.", st.occupants, w.p.capacity, w.p.entity)), nil
}

func (w world) furnish(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := w.refuseIfDemolished(c, st); err != nil {
		return Outcome{}, err
	}
	item := c.Args.Str("item")
	st.furnishings = pushBounded(st.furnishings, item, worldMaxFurnishings)
	return w.ack(c, st, fmt.Sprintf("Added %s to the %s (%d furnishings; the oldest go beyond %d).",
		quote(item), w.p.entity, len(st.furnishings), worldMaxFurnishings)), nil
}

func (w world) tour(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	stops := make([]*structpb.Value, 0, len(w.p.parts))
	for i, p := range w.p.parts {
		note := w.p.comforts[i%len(w.p.comforts)]
		if st.demolished {
			note = "rubble"
		}
		stops = append(stops, obj{"part": str(p.name), "size": num(p.size), "note": str(note)}.V())
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "unit": str(w.p.unit), "stops": array(stops...),
		"occupants": integer(st.occupants), "furnishings": strs(st.furnishings),
	}.V()}, nil
}

func (w world) observe(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	obs := make([]*structpb.Value, len(w.p.phenomena))
	for i, ph := range w.p.phenomena {
		// Intensity drifts with the entity's history: more changes, more to see.
		intensity := round(0.2+0.6*unitHash(fmt.Sprintf("%s|%s|%d", w.p.entity, ph, st.revision)), 2)
		obs[i] = obj{"phenomenon": str(ph), "intensity": num(intensity)}.V()
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "revision": integer(st.revision), "occupants": integer(st.occupants),
		"observations": array(obs...),
	}.V()}, nil
}

func (w world) hypothesize(_ context.Context, c *Call) (Outcome, error) {
	q := c.Args.Str("question")
	if q == "" {
		q = "what changes the " + w.p.entity + " most?"
	}
	h := w.p.hypotheses[hashIndex(q, len(w.p.hypotheses))]
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "question": str(q), "hypothesis": str(h),
		"test": str("Vary one factor, hold the rest, and observe " + pick(w.p.phenomena, q) + "."),
	}.V()}, nil
}

func (w world) experiment(_ context.Context, c *Call) (Outcome, error) {
	v := c.Args.Str("variable")
	effect := round(unitHash(w.p.entity+"|"+v)*2-1, 2) // -1..1
	measured := pick(w.p.phenomena, v)
	verdict := "no meaningful effect"
	switch {
	case effect > 0.3:
		verdict = "increases"
	case effect < -0.3:
		verdict = "decreases"
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "variable": str(v), "measured": str(measured),
		"effect_size": num(effect), "verdict": str(verdict), "simulated": boolean(true),
	}.V()}, nil
}

func (w world) audit(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	evs := make([]*structpb.Value, 0, len(st.events))
	for i := len(st.events) - 1; i >= 0; i-- {
		e := st.events[i]
		evs = append(evs, obj{"at": ts(e.at), "aspect": str(e.aspect), "archetype": str(e.archetype), "note": str(e.note)}.V())
	}
	return Outcome{Value: obj{
		"entity": str(w.p.entity), "owner": str(w.p.owner), "policies": strs(w.p.policies),
		"revision": integer(st.revision), "changes": array(evs...), "config": stringMap(st.config).V(),
	}.V()}, nil
}

func (w world) configure(_ context.Context, c *Call) (Outcome, error) {
	st := w.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	key, val := c.Args.Str("key"), c.Args.Str("value")
	if _, exists := st.config[key]; !exists && len(st.config) >= worldMaxConfig {
		return Outcome{}, newError(KindPrecondition, fmt.Sprintf(
			"%s already has %d configuration keys, the most it keeps; reuse one.", w.path(), worldMaxConfig))
	}
	st.config[key] = val
	return w.ack(c, st, fmt.Sprintf("Set %s = %s.", quote(key), quote(val))), nil
}
