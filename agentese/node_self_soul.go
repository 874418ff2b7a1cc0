package agentese

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/apijson"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/soul"
)

// self.soul: K-gent itself. The dialogue aspects talk to the Soul service
// (the same policy, engine and metering as /v1/soul): the tier's budget
// check happens there and its PermissionDenied passes through unchanged;
// tokens_used is what the engine really reported.
func init() { registerBuiltin(newSelfSoul) }

const (
	soulSlot        = "self.soul"
	maxSoulMessage  = 32 << 10
	maxSoulAction   = 32 << 10
	maxSoulReason   = 4096
	soulDefaultMode = "reflect"
)

// soulModes are the dialogue modes, each with what it does. Immutable.
var soulModes = [...]struct {
	name string
	mode soulv1.Mode
	doc  string
}{
	{"reflect", soulv1.Mode_MODE_REFLECT, "mirror back what was said and ask what it connects to"},
	{"advise", soulv1.Mode_MODE_ADVISE, "suggest a course aligned with your known preferences"},
	{"challenge", soulv1.Mode_MODE_CHALLENGE, "push back on the premise"},
	{"explore", soulv1.Mode_MODE_EXPLORE, "open up the possibility space"},
}

var soulBudgets = []string{"dormant", "whisper", "dialogue", "deep"}

func parseBudget(s string) soulv1.Budget {
	switch s {
	case "dormant":
		return soulv1.Budget_BUDGET_DORMANT
	case "whisper":
		return soulv1.Budget_BUDGET_WHISPER
	case "dialogue":
		return soulv1.Budget_BUDGET_DIALOGUE
	case "deep":
		return soulv1.Budget_BUDGET_DEEP
	}
	return soulv1.Budget_BUDGET_UNSPECIFIED // the tier's default
}

func parseMode(s string) soulv1.Mode {
	for _, m := range soulModes {
		if m.name == s {
			return m.mode
		}
	}
	return soulv1.Mode_MODE_UNSPECIFIED
}

// soulMemo is what self.soul remembers of a tenant: the last mode used
// (self.soul.mode) and running totals.
type soulMemo struct {
	mu        sync.Mutex
	mode      string
	dialogues int
	tokens    int
	last      time.Time
}

func soulMemoOf(c *Call) *soulMemo {
	return slotOf(c.tenant(), soulSlot, func() *soulMemo { return &soulMemo{mode: soulDefaultMode} })
}

func (m *soulMemo) remember(mode string, tokens int, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mode != "" && mode != "unspecified" {
		m.mode = mode
	}
	m.dialogues++
	m.tokens += tokens
	m.last = at
}

// Kwarg declarations shared by the soul aspects.
var (
	kwMessage = Kwarg{Name: "message", Type: TypeString, Required: true, MaxLen: maxSoulMessage, Doc: "what to say to K-gent"}
	kwBudget  = Kwarg{Name: "budget", Type: TypeString, Enum: soulBudgets, Doc: "effort; the tier's default when omitted"}
	kwMode    = Kwarg{Name: "mode", Type: TypeString, Enum: []string{"reflect", "advise", "challenge", "explore"},
		Doc: "dialogue mode (default reflect)"}
	kwGovernance = []Kwarg{
		{Name: "action", Type: TypeString, Required: true, MaxLen: maxSoulAction, Doc: "the action to judge"},
		{Name: "context", Type: TypeObject, Doc: "why, and what is at stake", Fields: []Kwarg{
			{Name: "reason", Type: TypeString, MaxLen: maxSoulReason, Doc: "why the action is proposed"},
			{Name: "severity", Type: TypeNumber, Ranged: true, Min: 0, Max: 1, Doc: "how much is at stake (default 0.5)"},
		}},
		kwBudget,
	}
)

// soulNode implements self.soul over a backend.
type soulNode struct{ backend SoulBackend }

func newSelfSoul(d Deps) *Node {
	s := soulNode{backend: d.Soul}
	dialogue := func(name string, mode soulv1.Mode, doc string, kw ...Kwarg) *Aspect {
		return &Aspect{Name: name, Doc: doc, Kwargs: append([]Kwarg{kwMessage, kwBudget}, kw...),
			Run: s.dialogue(mode), Stream: s.stream(mode)}
	}
	return &Node{
		Path:    "self.soul",
		Handle:  "self.soul",
		Summary: "K-gent's soul: dialogue in four modes, governance verdicts, eigenvectors.",
		Common:  []string{"dialogue", "challenge", "reflect", "advise", "explore", "governance", "mode", "eigenvectors"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "K-gent: modes, the budgets your tier allows, eigenvectors.", Run: s.manifest},
			dialogue("dialogue", soulv1.Mode_MODE_UNSPECIFIED, "Talk to K-gent (streams); mode from the mode kwarg, reflect by default.", kwMode),
			dialogue("challenge", soulv1.Mode_MODE_CHALLENGE, "K-gent pushes back on your premise (streams)."),
			dialogue("reflect", soulv1.Mode_MODE_REFLECT, "K-gent mirrors back what you said (streams)."),
			dialogue("advise", soulv1.Mode_MODE_ADVISE, "K-gent suggests a course aligned with your preferences (streams)."),
			dialogue("explore", soulv1.Mode_MODE_EXPLORE, "K-gent opens up the possibility space (streams)."),
			{Name: "governance", Doc: "A verdict on an action before an agent performs it; dangerous actions are always escalated.",
				Kwargs: kwGovernance, Run: governance(d.Soul)},
			{Name: "mode", Doc: "The mode you last talked to K-gent in through AGENTESE, and all modes.", Run: s.mode},
			{Name: "eigenvectors", Doc: "K-gent's personality coordinates, each in [0, 1].", Cacheable: true, Run: s.eigenvectors},
		},
	}
}

func soulUnavailable() error {
	return newError(KindUnavailable, "K-gent is not configured on this server.")
}

// dialogueMode is the mode of a call: the aspect's own, or the mode kwarg.
func dialogueMode(fixed soulv1.Mode, c *Call) soulv1.Mode {
	if fixed != soulv1.Mode_MODE_UNSPECIFIED {
		return fixed
	}
	return parseMode(c.Args.Str("mode"))
}

func (s soulNode) dialogue(fixed soulv1.Mode) RunFunc {
	return func(ctx context.Context, c *Call) (Outcome, error) {
		if s.backend == nil {
			return Outcome{}, soulUnavailable()
		}
		resp, err := s.backend.Dialogue(ctx, &soulv1.DialogueRequest{
			Prompt: c.Args.Str("message"), Mode: dialogueMode(fixed, c), Budget: parseBudget(c.Args.Str("budget")),
		})
		if err != nil {
			return Outcome{}, err
		}
		soulMemoOf(c).remember(apijson.EnumString(resp.GetMode()), int(resp.GetTokensUsed()), c.Now())
		return Outcome{Value: dialogueValue(resp, 0), Tokens: int(resp.GetTokensUsed())}, nil
	}
}

// stream runs a dialogue aspect through the Soul service's stream. The
// service calls open (our sink's Open, which sends the response headers)
// only after its budget check, so a refused budget is an ordinary 403.
func (s soulNode) stream(fixed soulv1.Mode) StreamFunc {
	return func(ctx context.Context, c *Call, sink Sink) (Outcome, error) {
		if s.backend == nil {
			return Outcome{}, soulUnavailable()
		}
		var done *soulv1.DialogueComplete
		var failed *soulv1.DialogueError
		err := s.backend.Stream(ctx, &soulv1.StreamDialogueRequest{
			Prompt: c.Args.Str("message"), Mode: dialogueMode(fixed, c), Budget: parseBudget(c.Args.Str("budget")),
		}, func(ev *soulv1.StreamDialogueResponse) error {
			switch e := ev.GetEvent().(type) {
			case *soulv1.StreamDialogueResponse_Chunk:
				return sink.Chunk(e.Chunk.GetText(), int(e.Chunk.GetIndex()))
			case *soulv1.StreamDialogueResponse_Complete:
				done = e.Complete
			case *soulv1.StreamDialogueResponse_Error:
				failed = e.Error
			}
			return nil
		}, sink.Open)
		switch {
		case err != nil:
			return Outcome{}, err
		case failed != nil:
			return Outcome{}, &Error{Kind: KindStream, Msg: failed.GetError(), Type: failed.GetType()}
		case done == nil:
			// The Soul service ends silently when the caller went away.
			if ctx.Err() != nil {
				return Outcome{}, ctx.Err()
			}
			return Outcome{}, &Error{Kind: KindStream, Msg: "K-gent's reply ended without completing.", Type: "internal"}
		}
		soulMemoOf(c).remember(apijson.EnumString(done.GetMode()), int(done.GetTokensUsed()), c.Now())
		resp := &soulv1.DialogueResponse{
			Response: done.GetText(), Mode: done.GetMode(), Eigenvectors: soul.Eigenvectors(),
			TokensUsed: done.GetTokensUsed(), Budget: done.GetBudget(),
		}
		return Outcome{Value: dialogueValue(resp, int(done.GetChunks())), Tokens: int(done.GetTokensUsed())}, nil
	}
}

// dialogueValue renders a reply like /v1/soul/dialogue does. Streamed
// replies add chunks and have no referenced preferences or patterns (the
// stream does not report them).
func dialogueValue(r *soulv1.DialogueResponse, chunks int) *structpb.Value {
	o := obj{
		"response":     str(r.GetResponse()),
		"mode":         str(apijson.EnumString(r.GetMode())),
		"budget":       str(apijson.EnumString(r.GetBudget())),
		"eigenvectors": eigenvectorsValue(r.GetEigenvectors()),
		"tokens_used":  integer(int(r.GetTokensUsed())),
	}
	if chunks > 0 {
		o["chunks"] = integer(chunks)
	} else {
		o["referenced_preferences"] = strs(r.GetReferencedPreferences())
		o["referenced_patterns"] = strs(r.GetReferencedPatterns())
	}
	return o.V()
}

func eigenvectorsValue(e *soulv1.Eigenvectors) *structpb.Value {
	return obj{
		"aesthetic": num(e.GetAesthetic()), "categorical": num(e.GetCategorical()), "gratitude": num(e.GetGratitude()),
		"heterarchy": num(e.GetHeterarchy()), "generativity": num(e.GetGenerativity()), "joy": num(e.GetJoy()),
	}.V()
}

func (s soulNode) manifest(_ context.Context, c *Call) (Outcome, error) {
	memo := soulMemoOf(c)
	memo.mu.Lock()
	mode, dialogues, tokens := memo.mode, memo.dialogues, memo.tokens
	memo.mu.Unlock()
	lim := c.Identity.Limits
	allowed := make([]string, len(lim.Budgets))
	for i, b := range lim.Budgets {
		allowed[i] = apijson.EnumString(b)
	}
	return Outcome{Value: obj{
		"entity":         str("soul"),
		"name":           str("K-gent"),
		"summary":        str("K-gent, the soul agent: talk to it in four modes, or ask it to judge an action."),
		"available":      boolean(s.backend != nil),
		"mode":           str(mode),
		"modes":          strs(modeNames()),
		"budgets":        strs(allowed),
		"default_budget": str(apijson.EnumString(lim.DefaultBudget)),
		"eigenvectors":   eigenvectorsValue(soul.Eigenvectors()),
		"dialogues":      integer(dialogues),
		"tokens_used":    integer(tokens),
	}.V()}, nil
}

func modeNames() []string {
	out := make([]string, len(soulModes))
	for i, m := range soulModes {
		out[i] = m.name
	}
	return out
}

func (s soulNode) mode(_ context.Context, c *Call) (Outcome, error) {
	memo := soulMemoOf(c)
	memo.mu.Lock()
	mode, last := memo.mode, memo.last
	memo.mu.Unlock()
	modes := obj{}
	for _, m := range soulModes {
		modes[m.name] = str(m.doc)
	}
	return Outcome{Value: obj{"mode": str(mode), "since": ts(last), "modes": modes.V()}.V()}, nil
}

func (s soulNode) eigenvectors(context.Context, *Call) (Outcome, error) {
	return Outcome{Value: obj{
		"eigenvectors": eigenvectorsValue(soul.Eigenvectors()),
		"meaning": obj{
			"aesthetic":    str("minimalism (low) versus ornament (high)"),
			"categorical":  str("preference for categorical, structural thinking"),
			"gratitude":    str("orientation toward gratitude"),
			"heterarchy":   str("preference for peer relations over hierarchy"),
			"generativity": str("drive to generate rather than curate"),
			"joy":          str("playfulness"),
		}.V(),
	}.V()}, nil
}

// governance asks the Soul service for a verdict and logs it in the
// tenant's judgment log (self.judgment).
func governance(backend SoulBackend) RunFunc {
	return func(ctx context.Context, c *Call) (Outcome, error) {
		if backend == nil {
			return Outcome{}, soulUnavailable()
		}
		action := c.Args.Str("action")
		if strings.TrimSpace(action) == "" {
			return Outcome{}, newError(KindArgument, fmt.Sprintf("kwarg \"action\" of %s must not be empty.", c.Path.String()))
		}
		req := &soulv1.GovernanceRequest{Action: action, Budget: parseBudget(c.Args.Str("budget"))}
		if ctxArgs := c.Args.Obj("context"); c.Args.Has("context") {
			req.Context = &soulv1.GovernanceContext{Reason: ctxArgs.Str("reason")}
			if ctxArgs.Has("severity") {
				sev := ctxArgs.Num("severity", 0.5)
				req.Context.Severity = &sev
			}
		}
		resp, err := backend.Governance(ctx, req)
		if err != nil {
			return Outcome{}, err
		}
		judgmentOf(c).add(verdictOf(action, resp, c))
		return Outcome{Value: obj{
			"approved":       boolean(resp.GetApproved()),
			"recommendation": str(apijson.EnumString(resp.GetRecommendation())),
			"reasoning":      str(resp.GetReasoning()),
			"alternatives":   strs(resp.GetAlternatives()),
			"confidence":     num(resp.GetConfidence()),
			"principles":     strs(resp.GetPrinciples()),
			"tokens_used":    integer(int(resp.GetTokensUsed())),
		}.V(), Tokens: int(resp.GetTokensUsed())}, nil
	}
}
