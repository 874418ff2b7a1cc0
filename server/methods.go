package server

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	apiv1 "github.com/kgents/kgents-go/gen/kgents/api/v1"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
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
	// idempotent RPCs honour the Idempotency-Key header (SPEC §4.1). It is
	// not written in the table: it is the RPC's (kgents.api.v1.idempotent)
	// option in its .proto file, which the OpenAPI document's
	// Idempotency-Key parameter is generated from too (idempotentRPC).
	idempotent bool
	// sessionScoped RPCs have their session events fanned out (SPEC §4.9).
	sessionScoped bool
	// alwaysAnswered RPCs are never refused for the caller's quotas (they
	// are still authenticated and metered): reading one's usage is how a
	// tenant over its limits learns why.
	alwaysAnswered bool
	// meteredLate RPCs need no API key yet are a tenant's call: sign-up is
	// metered as the tenant it makes (metering.Meter.MeterLate).
	meteredLate bool
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
	admin := func(action string) auth.Rule { return auth.Rule{Scope: tenancy.ScopeAdmin, Action: action} }
	operator := func(action string) auth.Rule { return auth.Rule{Scope: tenancy.ScopeOperator, Action: action} }
	// A suspended or canceled tenant may still see its state (SPEC §4.13).
	whileInactive := func(r auth.Rule) auth.Rule { r.AllowInactiveTenant = true; return r }
	invoke := read("invoke AGENTESE paths")
	invoke.ScopeFor = invokeScope
	p := map[string]rpcPolicy{
		sessionsv1.SessionsService_CreateSession_FullMethodName: {auth: write("create sessions")},
		sessionsv1.SessionsService_SendMessage_FullMethodName:   {auth: write("send messages"), sessionScoped: true},
		sessionsv1.SessionsService_StreamMessage_FullMethodName: {auth: write("send messages"), sessionScoped: true},
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

		usagev1.UsageService_GetUsage_FullMethodName:        {auth: auth.Rule{Scope: tenancy.ScopeRead, Action: "read usage", AllowInactiveTenant: true}, alwaysAnswered: true},
		usagev1.UsageService_GetUsageHistory_FullMethodName: {auth: auth.Rule{Scope: tenancy.ScopeRead, Action: "read usage history", AllowInactiveTenant: true}, alwaysAnswered: true},

		// Tenant self-service. Creating, rotating and signing up answer a
		// secret, so they are not idempotent: a stored answer to replay
		// would keep the secret (SPEC §4.13: stored only as its hash).
		tenantsv1.TenantsService_GetTenant_FullMethodName: {auth: whileInactive(read("read the tenant"))},
		tenantsv1.TenantsService_ListKeys_FullMethodName:  {auth: whileInactive(admin("list API keys"))},
		tenantsv1.TenantsService_CreateKey_FullMethodName: {auth: admin("create API keys")},
		tenantsv1.TenantsService_RevokeKey_FullMethodName: {auth: admin("revoke API keys")},
		tenantsv1.TenantsService_RotateKey_FullMethodName: {auth: admin("rotate API keys")},
		// Sign-up needs no key; the Manager limits it per client address.
		tenantsv1.SignupService_Signup_FullMethodName: {auth: auth.Rule{Public: true}, meteredLate: true},

		// The operator API.
		adminv1.AdminService_CreateTenant_FullMethodName:          {auth: operator("create tenants")},
		adminv1.AdminService_ListTenants_FullMethodName:           {auth: operator("list tenants")},
		adminv1.AdminService_GetTenant_FullMethodName:             {auth: operator("read tenants")},
		adminv1.AdminService_UpdateTenant_FullMethodName:          {auth: operator("change tenants")},
		adminv1.AdminService_ListTenantKeys_FullMethodName:        {auth: operator("list a tenant's API keys")},
		adminv1.AdminService_CreateTenantKey_FullMethodName:       {auth: operator("create a tenant's API keys")},
		adminv1.AdminService_GetTenantUsage_FullMethodName:        {auth: operator("read a tenant's usage")},
		adminv1.AdminService_GetTenantUsageHistory_FullMethodName: {auth: operator("read a tenant's usage history")},
		adminv1.AdminService_TopUsage_FullMethodName:              {auth: operator("rank tenants by usage")},
		adminv1.AdminService_CreateInvite_FullMethodName:          {auth: operator("create invitations")},
		adminv1.AdminService_ListAudit_FullMethodName:             {auth: operator("read the audit log")},

		// Billing (SPEC §4.11), answered also while suspended and over the
		// quotas: that is how a tenant pays or upgrades. A repeated checkout
		// with the same Idempotency-Key answers the same Checkout Session
		// (not a second one); a portal session is short-lived and harmless
		// to repeat, so it is not kept.
		billingv1.BillingService_CreateCheckoutSession_FullMethodName: {auth: whileInactive(admin("start a checkout")), alwaysAnswered: true},
		billingv1.BillingService_CreatePortalSession_FullMethodName:   {auth: whileInactive(admin("open the billing portal")), alwaysAnswered: true},
		billingv1.BillingService_GetBilling_FullMethodName:            {auth: whileInactive(read("read billing")), alwaysAnswered: true},
	}
	for m, pol := range p {
		pol.idempotent = idempotentRPC(m)
		p[m] = pol
	}
	return p
}

// idempotentRPC reports whether the RPC (a gRPC full method name) is marked
// (kgents.api.v1.idempotent) = true in its .proto file.
func idempotentRPC(fullMethod string) bool {
	name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(fullMethod, "/"), "/", "."))
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return false
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return false
	}
	marked, _ := proto.GetExtension(md.Options(), apiv1.E_Idempotent).(bool)
	return marked
}

// policyTable is the table, computed once, with the method lists the
// interceptors are configured with.
type policyTable struct {
	byMethod                                               map[string]rpcPolicy
	idempotent, sessionScoped, alwaysAnswered, meteredLate []string
}

// newPolicyTable computes the table (invokeScope as for policies).
func newPolicyTable(invokeScope func(req any) (tenancy.Scope, string)) policyTable {
	t := policyTable{byMethod: policies(invokeScope)}
	for m, p := range t.byMethod {
		if p.idempotent {
			t.idempotent = append(t.idempotent, m)
		}
		if p.sessionScoped {
			t.sessionScoped = append(t.sessionScoped, m)
		}
		if p.alwaysAnswered {
			t.alwaysAnswered = append(t.alwaysAnswered, m)
		}
		if p.meteredLate {
			t.meteredLate = append(t.meteredLate, m)
		}
	}
	return t
}

// isPublicService reports whether service is one of publicServices.
func isPublicService(service string) bool {
	for _, p := range publicServices {
		if p == service {
			return true
		}
	}
	return false
}

// authRules extracts the auth table.
func authRules(p map[string]rpcPolicy) auth.Rules {
	r := auth.Rules{Methods: make(map[string]auth.Rule, len(p)), PublicServices: publicServices}
	for m, pol := range p {
		r.Methods[m] = pol.auth
	}
	return r
}
