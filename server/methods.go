package server

import (
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/tenancy"
)

// rpcPolicy is what the interceptors need to know about one RPC. This table
// is the one place it is declared (SPEC §4.2's scope table among it); an RPC
// missing here is refused by auth, and a test checks every registered method
// has an entry.
type rpcPolicy struct {
	auth auth.Rule
	// idempotent RPCs honour the Idempotency-Key header (SPEC §4.1).
	idempotent bool
	// sessionScoped RPCs have their session events fanned out (SPEC §4.9).
	sessionScoped bool
}

// publicServices are not a tenant's: no key, no quota, no metering.
var publicServices = []string{
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection",
	"grpc.reflection.v1alpha.ServerReflection",
}

// policies returns the table. invokeScope decides the scope of an AGENTESE
// invocation from its path (read for reading aspects, write for mutating).
func policies(invokeScope func(req any) (tenancy.Scope, string)) map[string]rpcPolicy {
	read := func(action string) auth.Rule { return auth.Rule{Scope: tenancy.ScopeRead, Action: action} }
	write := func(action string) auth.Rule { return auth.Rule{Scope: tenancy.ScopeWrite, Action: action} }
	invoke := read("invoke AGENTESE paths")
	invoke.ScopeFor = invokeScope
	return map[string]rpcPolicy{
		sessionsv1.SessionsService_CreateSession_FullMethodName: {auth: write("create sessions"), idempotent: true},
		sessionsv1.SessionsService_SendMessage_FullMethodName:   {auth: write("send messages"), idempotent: true, sessionScoped: true},
		sessionsv1.SessionsService_StreamMessage_FullMethodName: {auth: write("send messages"), idempotent: true, sessionScoped: true},
		sessionsv1.SessionsService_CloseSession_FullMethodName:  {auth: write("close sessions"), sessionScoped: true},
		sessionsv1.SessionsService_ListSessions_FullMethodName:  {auth: read("list sessions")},
		sessionsv1.SessionsService_GetSession_FullMethodName:    {auth: read("read sessions")},
		sessionsv1.SessionsService_ListMessages_FullMethodName:  {auth: read("read messages")},
		sessionsv1.SessionsService_WatchSession_FullMethodName:  {auth: read("watch sessions")},

		soulv1.SoulService_Dialogue_FullMethodName:       {auth: read("talk to K-gent")},
		soulv1.SoulService_StreamDialogue_FullMethodName: {auth: read("talk to K-gent")},
		soulv1.SoulService_Governance_FullMethodName:     {auth: read("ask for governance verdicts")},

		agentesev1.AgenteseService_Resolve_FullMethodName:      {auth: read("resolve AGENTESE paths")},
		agentesev1.AgenteseService_Affordances_FullMethodName:  {auth: read("list AGENTESE affordances")},
		agentesev1.AgenteseService_Invoke_FullMethodName:       {auth: invoke},
		agentesev1.AgenteseService_InvokeStream_FullMethodName: {auth: invoke},

		usagev1.UsageService_GetUsage_FullMethodName: {auth: read("read usage")},
	}
}

// authRules extracts the auth table.
func authRules(p map[string]rpcPolicy) auth.Rules {
	r := auth.Rules{Methods: make(map[string]auth.Rule, len(p)), PublicServices: publicServices}
	for m, pol := range p {
		r.Methods[m] = pol.auth
	}
	return r
}
