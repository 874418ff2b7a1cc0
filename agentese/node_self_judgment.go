package agentese

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/apijson"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// self.judgment: the tenant's record of governance verdicts (from
// self.judgment.evaluate and self.soul.governance alike), so an agent can
// look back at what it was allowed and refused.
func init() { registerBuiltin(newSelfJudgment) }

const (
	judgmentSlot   = "self.judgment"
	judgmentRecent = 16
	// judgmentActionEcho bounds how much of an action the log keeps.
	judgmentActionEcho = 120
)

type verdict struct {
	action         string
	recommendation string
	approved       bool
	confidence     float64
	archetype      string
	at             time.Time
}

type judgmentLog struct {
	mu     sync.Mutex
	counts map[string]int // by recommendation: at most the three of the enum
	recent []verdict
}

func judgmentOf(c *Call) *judgmentLog {
	return slotOf(c.tenant(), judgmentSlot, func() *judgmentLog { return &judgmentLog{counts: map[string]int{}} })
}

func verdictOf(action string, r *soulv1.GovernanceResponse, c *Call) verdict {
	if len(action) > judgmentActionEcho {
		action = quote(action[:judgmentActionEcho])
	}
	return verdict{
		action: action, recommendation: apijson.EnumString(r.GetRecommendation()), approved: r.GetApproved(),
		confidence: r.GetConfidence(), archetype: c.Archetype, at: c.Now(),
	}
}

func (j *judgmentLog) add(v verdict) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.counts[v.recommendation]++
	j.recent = pushBounded(j.recent, v, judgmentRecent)
}

func newSelfJudgment(d Deps) *Node {
	return &Node{
		Path:    "self.judgment",
		Handle:  "self.judgment",
		Summary: "Governance verdicts: ask for one, and review the ones given.",
		Common:  []string{"evaluate"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Recent verdicts (newest first) and counts by recommendation.", Run: judgmentManifest},
			{Name: "evaluate", Doc: "A verdict on an action (the same as self.soul.governance), logged here.",
				Kwargs: kwGovernance, Run: governance(d.Soul)},
		},
	}
}

func judgmentManifest(_ context.Context, c *Call) (Outcome, error) {
	j := judgmentOf(c)
	j.mu.Lock()
	defer j.mu.Unlock()
	vs := make([]*structpb.Value, 0, len(j.recent))
	for i := len(j.recent) - 1; i >= 0; i-- {
		v := j.recent[i]
		vs = append(vs, obj{
			"action": str(v.action), "recommendation": str(v.recommendation), "approved": boolean(v.approved),
			"confidence": num(v.confidence), "archetype": str(v.archetype), "at": ts(v.at),
		}.V())
	}
	return Outcome{Value: obj{"verdicts": array(vs...), "counts": countsValue(j.counts).V()}.V()}, nil
}
