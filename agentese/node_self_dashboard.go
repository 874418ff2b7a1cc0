package agentese

import "context"

// self.dashboard: identity, vitals, state and the latest invocations in one
// read, for a UI's landing page.
func init() { registerBuiltin(newSelfDashboard) }

func newSelfDashboard(Deps) *Node {
	return &Node{
		Path:    "self.dashboard",
		Handle:  "self.dashboard",
		Summary: "Identity, vitals, state and recent activity in one view.",
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The whole dashboard.", Run: dashboardManifest},
		},
	}
}

func dashboardManifest(_ context.Context, c *Call) (Outcome, error) {
	return Outcome{Value: obj{
		"identity": identityValue(c).V(),
		"vitals":   vitalsValue(c).V(),
		"state":    stateValue(c).V(),
		"recent":   entriesValue(traceOf(c).recent(5, nil)),
	}.V()}, nil
}
